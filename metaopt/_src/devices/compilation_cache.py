"""JAX's persistent compilation cache, on by default for the launch scripts: a second run of the
same program loads its executables from disk instead of compiling them again."""

from __future__ import annotations

import errno
import os

import jax

# Where a user moves the cache (a folder) or turns it off ("off"); a launch flag wins over it.
ENV = "METAOPT_COMPILATION_CACHE"
# Programs that compile faster than this are not worth a file (JAX's default is 1 s, which would
# leave out most of a run's small helpers).
MIN_COMPILE_SECONDS = 0.1


def compilation_cache_folder(value: str | None = None) -> str | None:
  """The cache folder to use, or None for none.

  ``value`` (a launch flag's) wins, then the environment variable
  ``METAOPT_COMPILATION_CACHE``, then JAX's own ``JAX_COMPILATION_CACHE_DIR``, then
  ``metaopt/xla`` in the user's cache directory (``$XDG_CACHE_HOME``, else
  ``~/.cache``). ``"off"`` (any case) or an empty string turns it off.

  Examples:
    >>> import metaopt
    >>> metaopt.devices.compilation_cache_folder("off") is None
    True
    >>> metaopt.devices.compilation_cache_folder("/tmp/my-cache")
    '/tmp/my-cache'
  """
  for candidate in (value, os.environ.get(ENV), os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    if candidate is not None:
      return None if candidate.strip().lower() in ("", "off") else os.path.expanduser(candidate)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "metaopt", "xla")


def use_compilation_cache(folder: str | None) -> str | None:
  """Turns JAX's persistent compilation cache on in ``folder``, or off (None).

  Call it before the first compilation. Nothing is written here: JAX makes the
  folder when it stores its first executable (and only warns if it cannot).
  Returns ``folder``.

  Raises:
    OSError: if ``folder`` exists and is not a folder.

  Examples:
    >>> import jax, metaopt
    >>> folder = jax.config.jax_compilation_cache_dir  # as it is set now (None: no cache)
    >>> metaopt.devices.use_compilation_cache(folder) == folder
    True
  """
  if folder is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise OSError(errno.ENOTDIR, f"{folder} is not a folder")
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return folder
