"""Command-line entry points (absl): ``python -m launch.tune``, ``launch.study``, ...

Each script's ``main`` raises ``absl.app.UsageError`` for bad input; :func:`run`
turns it into one line on stderr (absl would print the whole module help above
it, burying the line that names the problem).
"""

from __future__ import annotations

import logging
import sys

from absl import app
from absl import flags

import metaopt

# Shared with studies/ (the launchers' logic lives there); re-exported for the launch scripts.
from studies.paths import check_bytes  # noqa: F401
from studies.paths import safe_name  # noqa: F401
from studies.paths import WEIGHTS  # noqa: F401

# absl asks for help with these and then exits with status 1; asking for help is no error.
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull",
              "-helpfull", "--helpxml", "-helpxml")


_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Folder of JAX's persistent compilation cache: a second run of the same program loads its "
    "executables instead of compiling them ('off' turns it off; default: "
    "$METAOPT_COMPILATION_CACHE, else $JAX_COMPILATION_CACHE_DIR, else "
    "$XDG_CACHE_HOME/metaopt/xla, else ~/.cache/metaopt/xla).")


def run(main, *, compilation_cache: bool = True) -> None:
  """``absl.app.run(main)``: a usage error printed as one line and exit status 1, ``--help``
  with exit status 0, and JAX's notes on backends it did not find (``Unable to initialize
  backend 'tpu'``, at INFO level, which absl's handler would show) left out. JAX's persistent
  compilation cache is on (``--compilation_cache``); with ``compilation_cache=False`` (a script
  that measures compile times) only where the flag names a folder."""
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

  def checked(argv):
    try:
      value = _COMPILATION_CACHE.value
      if value is None and not compilation_cache:
        value = "off"
      folder = metaopt.devices.compilation_cache_folder(value)
      try:
        metaopt.devices.use_compilation_cache(folder)
      except OSError as e:
        raise app.UsageError(f"--compilation_cache: cannot use {folder!r}: {e.strerror or e}"
                             ) from None
      return main(argv)
    except app.UsageError as e:
      prog = sys.modules["__main__"].__spec__
      name = prog.name if prog else sys.argv[0]
      sys.exit(f"{name}: error: {e} (--helpshort lists the flags)")
  try:
    app.run(checked)
  except SystemExit as e:
    if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in sys.argv[1:]):
      sys.exit(0)
    raise
