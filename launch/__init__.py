"""Command-line entry points (absl): ``python -m launch.tune``, ``launch.study``, ...

Each script's ``main`` raises ``absl.app.UsageError`` for bad input; :func:`run`
turns it into one line on stderr (absl would print the whole module help above
it, burying the line that names the problem).
"""

from __future__ import annotations

import logging
import sys

from absl import app

# Shared with studies/ (the launchers' logic lives there); re-exported for the launch scripts.
from studies.paths import check_bytes  # noqa: F401
from studies.paths import safe_name  # noqa: F401
from studies.paths import WEIGHTS  # noqa: F401

# absl asks for help with these and then exits with status 1; asking for help is no error.
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull",
              "-helpfull", "--helpxml", "-helpxml")


def run(main) -> None:
  """``absl.app.run(main)``: a usage error printed as one line and exit status 1, ``--help``
  with exit status 0, and JAX's notes on backends it did not find (``Unable to initialize
  backend 'tpu'``, at INFO level, which absl's handler would show) left out."""
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

  def checked(argv):
    try:
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
