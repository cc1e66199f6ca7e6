"""Writing result files so that a crash never leaves a half-written one."""

import os


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to a temporary file beside ``path``, syncs it, then renames it over ``path``."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
