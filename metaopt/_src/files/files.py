"""Result files written so that a crash never leaves a half-written one, never through a link."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile


def write_atomic(path: str | os.PathLike, data: str | bytes, *,
                 temp_prefix: str | None = None) -> None:
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
    temp_prefix: the temporary file's name prefix (default ``.<name>.``), for
      folders whose readers pick files by name (TensorBoard loads any file
      named ``*tfevents*``, so a temporary copy must not carry that name).

  Raises:
    OSError: if ``path`` is a symbolic link, or the folder is not writable.

  Examples:
    >>> import os, tempfile, metaopt
    >>> path = os.path.join(tempfile.mkdtemp(), "summary.json")
    >>> metaopt.files.write_atomic(path, '{"loss": 0.5}')
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
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix or f".{os.path.basename(path)}.",
                              suffix=".tmp")
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


class FolderLockedError(OSError):
  """Another process holds the folder's lock (see :func:`lock_folder`)."""


class FolderLock:
  """An exclusive lock on a folder, held until :meth:`release` or the process ends."""

  def __init__(self, folder: str, fd: int):
    self.folder, self._fd = folder, fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock
      self._fd = None

  def __enter__(self) -> FolderLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()


LOCK_NAME = ".lock"


def lock_folder(folder: str | os.PathLike) -> FolderLock:
  """Takes an exclusive lock on ``folder`` so that two processes never write one run at once.

  The lock is ``fcntl.flock`` on ``folder/.lock``, opened with ``O_NOFOLLOW``
  (a symbolic link planted there is refused, never followed). The kernel
  drops it when the process ends, however it ends, so a killed run never
  leaves a stale lock; the file itself stays and holds the last owner's pid.

  Args:
    folder: an existing folder.

  Returns:
    A :class:`FolderLock`, also a context manager; keep a reference for as
    long as the lock must be held.

  Raises:
    FolderLockedError: naming the folder (and the holder's pid) if another
      process holds the lock.
    OSError: if the lock file cannot be made (a link there, a read-only folder).

  Examples:
    >>> import tempfile, metaopt
    >>> folder = tempfile.mkdtemp()
    >>> with metaopt.files.lock_folder(folder):
    ...   pass  # a second process calling lock_folder(folder) here gets FolderLockedError
  """
  import fcntl  # pylint: disable=g-import-not-at-top  # POSIX only: imported where needed
  folder = os.fspath(folder)
  path = os.path.join(folder, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise OSError(errno.ELOOP, f"refusing to lock {folder!r}: {LOCK_NAME} there is a symbolic "
                    "link; remove it", path) from None
    raise
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 32).decode("ascii", "replace").strip()
    os.close(fd)
    raise FolderLockedError(errno.EWOULDBLOCK, f"{folder!r} is in use by another process"
                            f"{f' (pid {holder})' if holder else ''}; wait for it to finish or "
                            "choose another folder", folder) from None
  except BaseException:
    os.close(fd)
    raise
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  return FolderLock(folder, fd)


# Temporary files this package makes in a run folder: write_atomic's (mkstemp's ".<name>.<8 random
# characters>.tmp"), and older versions' checkpoint temporaries and write probes.
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp|\.tmp-.*\.npz|\.write-test")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
  """Removes the temporary files that killed writers left in ``folder``; returns their names.

  Only regular files whose names match this package's own temporary names are
  removed (``.<name>.<random>.tmp`` from :func:`write_atomic`, ``.tmp-*.npz``,
  ``.write-test``); symbolic links, folders and every other file are left
  alone. Call it only while holding :func:`lock_folder`: another writer's
  temporary file is not stale.

  Examples:
    >>> import os, tempfile, metaopt
    >>> folder = tempfile.mkdtemp()
    >>> open(os.path.join(folder, ".summary.json.k2j4x_9a.tmp"), "w").close()
    >>> open(os.path.join(folder, "notes.tmp"), "w").close()
    >>> metaopt.files.remove_stale_temporaries(folder)
    ['.summary.json.k2j4x_9a.tmp']
    >>> os.listdir(folder)
    ['notes.tmp']
  """
  removed = []
  with os.scandir(folder) as entries:
    for entry in entries:
      if _TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
        with contextlib.suppress(FileNotFoundError):
          os.remove(entry.path)
          removed.append(entry.name)
  return sorted(removed)


def make_folder(path: str | os.PathLike) -> str:
  """Creates the folder ``path`` (and its parents) if needed and checks that files can be made in it.

  The check makes an anonymous temporary file (:func:`tempfile.TemporaryFile`),
  so no fixed name (which a planted link could redirect) is ever written.
  A ``path`` that is a link to a folder is followed, like any linked folder.

  Returns:
    ``path`` as a string.

  Raises:
    OSError: if ``path`` cannot be made or written (a file is there, no permission).

  Examples:
    >>> import os, tempfile, metaopt
    >>> folder = metaopt.files.make_folder(os.path.join(tempfile.mkdtemp(), "runs", "a"))
    >>> os.listdir(folder)
    []
  """
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  with tempfile.TemporaryFile(dir=path):
    pass
  return path


def refuse_links(folder: str | os.PathLike, names) -> None:
  """Raises ``OSError`` (``ELOOP``) if any of ``names`` in ``folder`` is a symbolic link.

  A program checks the names it will write before spending compute, so that a
  planted link is refused at once rather than at the end of a run
  (:func:`write_atomic` would refuse it then).

  Examples:
    >>> import os, tempfile, metaopt
    >>> folder = tempfile.mkdtemp()
    >>> os.symlink("/etc/passwd", os.path.join(folder, "summary.json"))
    >>> metaopt.files.refuse_links(folder, ["config.json", "summary.json"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    OSError: [Errno 40] .../summary.json is a symbolic link (to '/etc/passwd'); remove it...
  """
  for name in names:
    path = os.path.join(os.fspath(folder), name)
    if os.path.islink(path):
      raise OSError(errno.ELOOP, f"{path} is a symbolic link (to {os.readlink(path)!r}); remove "
                    "it or choose another folder")
