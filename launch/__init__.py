"""Command-line entry points (absl): ``python -m launch.tune``, ``launch.study``, ...

Each script's ``main`` raises ``absl.app.UsageError`` for bad input; :func:`run`
turns it into one line on stderr (absl would print the whole module help above
it, burying the line that names the problem).
"""

from __future__ import annotations

import logging
import re
import sys

from absl import app

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


class _Weights:
  """``metaopt.devices.state_bytes`` of the weights themselves: an 'estimator' whose state is theta."""
  init = staticmethod(lambda key, theta: theta)


WEIGHTS = _Weights()


def check_bytes(nbytes: int, what: str, flags_named: str, *, working_factor: int = 4) -> None:
  """Refuses (``app.UsageError`` naming ``flags_named``) what would not fit in memory."""
  import metaopt  # pylint: disable=g-import-not-at-top  (keeps `launch` import light)
  have = metaopt.devices.available_bytes()
  if have is not None and working_factor * nbytes > have:
    raise app.UsageError(f"{flags_named}: {what} need about "
                         f"{working_factor * nbytes / 2**30:.3g} GiB with working memory; "
                         f"{have / 2**30:.3g} GiB is available: lower it")


def safe_name(spec: str) -> str:
  """A folder name for an estimator spec such as ``tbptt[num_steps=5]``."""
  return re.sub(r"[^A-Za-z0-9_.=-]", "_", spec)
