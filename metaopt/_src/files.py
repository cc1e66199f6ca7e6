"""Result files written so that a crash never leaves a half-written one, never through a link."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` atomically: readers see the old file or the new one, never a part.

  The data goes to a new temporary file in ``path``'s folder (an unpredictable
  name created with ``O_EXCL`` by :func:`tempfile.mkstemp`), is flushed and
  fsync'ed, and the temporary file is then renamed over ``path``
  (:func:`os.replace`); on any failure, ``KeyboardInterrupt`` included, the
  temporary file is removed and an existing ``path`` is left as it was.
  ``path`` itself is never opened for writing. Text is written as UTF-8; a new
  file gets the mode a plain ``open(path, "w")`` would give it (0666 less the
  umask), a replaced one keeps its mode.

  Symbolic links: nothing is ever written through a link. A ``path`` that is
  itself a symbolic link is refused (``OSError`` with ``errno.ELOOP``, like
  ``O_NOFOLLOW``), whatever it points to: replacing it would silently
  break a link the user made, writing through it would modify a file
  elsewhere. Links among the folders of ``path`` are followed like in any
  path (a ``runs/`` folder linked to another disk works): they choose where
  the new file is made, and no existing file is written through them.

  Args:
    path: the destination file.
    data: its whole new content.

  Raises:
    OSError: if ``path`` is a symbolic link, or the folder is not writable.

  Examples:
    >>> import os, tempfile, metaopt
    >>> path = os.path.join(tempfile.mkdtemp(), "summary.json")
    >>> metaopt.write_atomic(path, '{"loss": 0.5}')
    >>> open(path).read()
    '{"loss": 0.5}'
    >>> os.listdir(os.path.dirname(path))  # no temporary file left behind
    ['summary.json']
  """
  path = os.fspath(path)
  if os.path.islink(path):
    raise OSError(errno.ELOOP, f"refusing to write {path!r}: it is a symbolic link (to "
                  f"{os.readlink(path)!r}); remove it or choose another path", path)
  payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  folder = os.path.dirname(os.path.abspath(path))
  mode = _existing_mode(path)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), _default_mode() if mode is None else mode)  # mkstemp makes it 0600
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  _fsync_folder(folder)


def _existing_mode(path):
  try:
    return os.stat(path).st_mode & 0o7777
  except FileNotFoundError:
    return None


def _default_mode():
  """0666 less the umask, read without changing it (os.umask would race with other threads)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return 0o666 & ~int(line.split()[1], 8)
  except OSError:
    pass
  return 0o644


def _fsync_folder(folder):
  """Makes the rename itself durable; some platforms cannot fsync a folder, which is harmless."""
  with contextlib.suppress(OSError):
    fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
