"""Command-line entry points (absl): ``python -m launch.tune``, ``launch.study``, ...

Each script's ``main`` raises ``absl.app.UsageError`` for bad input; :func:`run`
turns it into one line on stderr (absl would print the whole module help above
it, burying the line that names the problem).
"""

from __future__ import annotations

import sys

from absl import app


def run(main) -> None:
  """``absl.app.run(main)``, a usage error printed as one line and exit status 1."""
  def checked(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      prog = sys.modules["__main__"].__spec__
      name = prog.name if prog else sys.argv[0]
      sys.exit(f"{name}: error: {e}")
  app.run(checked)
