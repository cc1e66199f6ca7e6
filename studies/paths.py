"""Checks of user-given names, folders and sizes before anything is written (shared by the
launchers)."""

from __future__ import annotations

import os
import re

from absl import app

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


def check_name(value: str, *, flag: str) -> str:
  """Returns ``value`` if it is safe as one folder name, else raises ``ValueError`` naming ``flag``.

  Safe: 1-128 letters, digits and ``. _ + = -``, not starting with a dot or a
  dash; so no path separator, no ``..``, no hidden or option-like name.

  Examples:
    >>> check_name("bias_variance-toy_regression", flag="--study_name")
    'bias_variance-toy_regression'
    >>> check_name("../../x", flag="--study_name")
    Traceback (most recent call last):
    ...
    ValueError: --study_name='../../x' must be one folder name: 1-128 letters, digits and . _ + = - (not starting with . or -)
  """
  if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
    raise ValueError(f"{flag}={value!r} must be one folder name: 1-128 letters, digits and "
                     ". _ + = - (not starting with . or -)")
  return value


def check_inside(path: str, root: str, *, flag: str) -> str:
  """Returns ``path`` if it resolves (links followed) inside ``root``, else raises ``ValueError``."""
  real, real_root = os.path.realpath(path), os.path.realpath(root)
  if os.path.commonpath([real, real_root]) != real_root:
    raise ValueError(f"{flag}: {path!r} leaves {root!r} (it resolves to {real!r})")
  return path


def check_writable_dir(path: str, *, flag: str) -> str:
  """Checks, without writing, that ``path`` is or can be made a writable folder.

  The deepest existing folder on the way must be a folder we may write in, on a
  file system that is not read-only, and nothing on the way may be a file.

  Raises:
    ValueError: naming ``flag`` and the reason.
  """
  if not path:
    raise ValueError(f"{flag} is empty")
  probe = os.path.abspath(path)
  while not os.path.lexists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ValueError(f"{flag}={path!r} cannot be a folder: {probe!r} is a file")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ValueError(f"{flag}={path!r} is not writable ({probe!r} does not let us write)")
  try:
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
      raise ValueError(f"{flag}={path!r} is on a read-only file system")
  except OSError:
    pass
  return path


class _Weights:
  """``metaopt.devices.state_bytes`` of the weights themselves: an 'estimator' whose state is theta."""
  init = staticmethod(lambda key, theta: theta)


WEIGHTS = _Weights()


def check_bytes(nbytes: int, what: str, flags_named: str, *, working_factor: int = 4) -> None:
  """Refuses (``app.UsageError`` naming ``flags_named``) what would not fit in memory."""
  import metaopt  # pylint: disable=g-import-not-at-top  (keeps this module's import light)
  have = metaopt.devices.available_bytes()
  if have is not None and working_factor * nbytes > have:
    raise app.UsageError(f"{flags_named}: {what} need about "
                         f"{working_factor * nbytes / 2**30:.3g} GiB with working memory; "
                         f"{have / 2**30:.3g} GiB is available: lower it")


def safe_name(spec: str) -> str:
  """A folder name for an estimator spec such as ``tbptt[num_steps=5]``."""
  return re.sub(r"[^A-Za-z0-9_.=-]", "_", spec)
