"""Optuna storages from one URL, safe for many worker processes: a journal file, SQLite, PostgreSQL.

Several processes on one study (``--n_workers``, or several invocations) need
three things Optuna's storages do not all give on their own:

- **Each queued trial runs once.** Queued trials (``--grid``, retries) are
  handed out by a compare-and-set that SQLite does not make atomic between
  processes. The journal file replays its log in one order, so a pop is won by
  one worker; on SQLite (and the journal) the pop also runs under a lock on
  the storage's folder (``flock``), so no two of our workers can win it.
- **The study stops at ``n_trials``.** Before a worker starts a trial (a new
  one or a queued one) it counts, under that lock, the trials that are complete
  or under way, and starts none when they reach ``n_trials``
  (:class:`BudgetReached` ends its :meth:`optuna.Study.optimize`);
  :class:`optuna.study.MaxTrialsCallback` stops it after a trial as well. A
  failed trial frees its place. On PostgreSQL (several machines, no shared
  lock) the count is not atomic: concurrent workers may run a few trials over.
- **A dead worker's trial is retried.** RDB storages (SQLite, PostgreSQL) have
  Optuna's heartbeats: a trial whose worker stopped beating is failed and
  retried (``RetryHeartbeatStaleTrialCallback``) by the next worker. The
  journal storage has no heartbeats in Optuna 5, so every trial records its
  worker (host, pid, process start time), and a worker starting on the same
  host fails the trials of workers that no longer exist and retries them the
  same way (:func:`reclaim_dead_trials`). A journal study on a shared file
  system with workers on several hosts cannot see other hosts' processes: their
  dead workers' trials stay RUNNING (use PostgreSQL for several machines).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
import time
import urllib.parse

import optuna
from optuna.trial import TrialState

JOURNAL_PREFIX = "journal://"
ENV_VAR = "METAOPT_STORAGE"
OWNER_ATTR = "metaopt:worker"
# Trials that hold a place in the study's budget: finished ones and those under way.
_SPENT = (TrialState.COMPLETE, TrialState.RUNNING)


class StorageError(ValueError):
  """A storage that cannot be used as it is (damaged, locked, unknown kind); one line for the user."""


class BudgetReached(optuna.exceptions.OptunaError):
  """Raised instead of starting a trial once the study has its ``n_trials`` trials."""


def default_storage_url(output_dir: str) -> str:
  """The default storage of a study in ``output_dir``.

  An existing ``study.db`` (studies made by earlier versions) is kept;
  otherwise a journal file, ``study.journal``, which is safe for several
  processes on one machine.
  """
  sqlite_path = os.path.abspath(os.path.join(output_dir, "study.db"))
  if os.path.exists(sqlite_path):
    return f"sqlite:///{sqlite_path}"
  return JOURNAL_PREFIX + os.path.abspath(os.path.join(output_dir, "study.journal"))


def redact(url: str) -> str:
  """``url`` with its password replaced by ``***`` (for every message, log and report)."""
  if url.startswith(JOURNAL_PREFIX) or "@" not in url:
    return url
  try:
    from sqlalchemy.engine import make_url  # pylint: disable=g-import-not-at-top
    return make_url(url).render_as_string(hide_password=True)
  except Exception:  # pylint: disable=broad-except  # never echo an unparsable URL
    return url.split("://", 1)[0] + "://***"


def scrub(text: str, url: str | None) -> str:
  """``text`` (e.g. an error message) with ``url``'s password, raw or quoted, replaced by ``***``."""
  password = _password(url) if url else None
  if not password:
    return text
  for form in {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)}:
    text = text.replace(form, "***")
  return text


def _password(url):
  try:
    from sqlalchemy.engine import make_url  # pylint: disable=g-import-not-at-top
    return make_url(url).password
  except Exception:  # pylint: disable=broad-except
    return None


def kind(url: str) -> str:
  """``"journal"``, ``"sqlite"`` or ``"postgresql"``.

  Raises:
    StorageError: for a URL of another kind, naming the accepted forms.
  """
  if url.startswith(JOURNAL_PREFIX):
    return "journal"
  if url.startswith("sqlite:"):
    return "sqlite"
  if url.startswith("postgresql"):
    return "postgresql"
  raise StorageError(f"--storage {redact(url)!r} is not one of: sqlite:///PATH, journal:///PATH, "
                     "postgresql+psycopg://USER@HOST:PORT/DATABASE")


def local_path(url: str) -> str | None:
  """The file of a journal or SQLite URL (None for a server or an in-memory SQLite)."""
  k = kind(url)
  if k == "journal":  # journal:///abs/path (or journal://rel/path)
    return os.path.abspath("/" + url[len(JOURNAL_PREFIX):].lstrip("/")
                           if url.startswith(JOURNAL_PREFIX + "/") else url[len(JOURNAL_PREFIX):])
  if k == "sqlite":
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return os.path.abspath(path.split("?", 1)[0]) if path and path != ":memory:" else None
  return None


def check_sqlite(path: str, *, timeout: float = 10.0) -> None:
  """Reads an existing SQLite study file without changing it; raises if it is damaged or locked.

  Args:
    path: the database file (nothing is checked if it does not exist yet).
    timeout: seconds to wait for another process's lock before giving up.

  Raises:
    StorageError: one line naming the file and what to do.
  """
  if not os.path.exists(path):
    return
  if not os.path.isfile(path):
    raise StorageError(f"study database {path} is not a file: choose another --storage")
  try:
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as con:
      result = con.execute("PRAGMA quick_check(1)").fetchone()[0]
  except sqlite3.OperationalError as e:
    if "locked" in str(e):
      raise StorageError(
          f"study database {path} is locked by another process (still after {timeout:g} s): "
          f"find it with `fuser {path}`, let it finish or stop it, then rerun") from None
    raise StorageError(f"study database {path} cannot be read ({e}): check the file and its "
                       "permissions") from None
  except sqlite3.DatabaseError as e:
    result = str(e)
  if result != "ok":
    raise StorageError(
        f"study database {path} is damaged ({result}); it was left unchanged: restore it from a "
        "backup, or move it away (or choose another --output_dir/--storage) to start a new study")


class _FolderLock:
  """An exclusive ``flock`` on a folder, shared by every process of one machine; no file made."""

  def __init__(self, folder):
    self._folder = folder
    self._fd = None

  def __enter__(self):
    self._fd = os.open(self._folder, os.O_RDONLY)
    fcntl.flock(self._fd, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    os.close(self._fd)  # closing releases the lock
    self._fd = None


def _start_time(pid):
  """The process's start time in clock ticks since boot (tells a reused pid apart), or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _this_worker():
  return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _is_dead(owner) -> bool:
  """Whether a worker record names a process of this host that no longer exists."""
  if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
    return False  # another host's process: cannot tell
  try:
    os.kill(int(owner["pid"]), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, KeyError, TypeError, ValueError):
    return False
  start = _start_time(owner["pid"])
  return owner.get("start") is not None and start is not None and start != owner["start"]


class _Guarded:
  """Mixin over an Optuna storage: pops and new trials under a folder lock, within a budget."""

  lock_folder: str | None = None
  n_trials: int | None = None
  study_name: str | None = None  # the study the budget is for (set by open_study)

  def locked(self):
    """The lock of every process that uses this storage on this machine (a no-op on servers)."""
    return _FolderLock(self.lock_folder) if self.lock_folder else contextlib.nullcontext()

  def _check_budget(self, study_id):
    if self.n_trials is not None:
      spent = len(self.get_all_trials(study_id, deepcopy=False, states=_SPENT))
      if spent >= self.n_trials:
        raise BudgetReached(f"the study has {spent} complete or running trials of {self.n_trials}")

  def _new_trial(self, create, study_id, template_trial):
    if template_trial is not None:  # enqueued or added trials are not started
      return create(study_id, template_trial)
    with self.locked():
      self._check_budget(study_id)
      result = create(study_id, None)
      trial_id = getattr(result, "_trial_id", result)
      self.set_trial_system_attr(trial_id, OWNER_ATTR, _this_worker())
      return result

  def set_trial_state_values(self, trial_id, state, values=None):
    if state != TrialState.RUNNING:
      return super().set_trial_state_values(trial_id, state, values)
    with self.locked():  # popping a queued trial: one winner, within the budget
      try:
        if self.study_name is not None:
          self._check_budget(self.get_study_id_from_name(self.study_name))
      except BudgetReached:
        return False
      if not super().set_trial_state_values(trial_id, state, values):
        return False
      self.set_trial_system_attr(trial_id, OWNER_ATTR, _this_worker())
      return True


class _GuardedJournalStorage(_Guarded, optuna.storages.JournalStorage):

  def create_new_trial(self, study_id, template_trial=None):
    return self._new_trial(super().create_new_trial, study_id, template_trial)


class _GuardedRDBStorage(_Guarded, optuna.storages.RDBStorage):

  # Optuna's cache in front of an RDBStorage calls _create_new_trial directly.
  def _create_new_trial(self, study_id, template_trial=None):
    return self._new_trial(super()._create_new_trial, study_id, template_trial)


def make_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int | None = None,
                 max_retry: int = 2, n_trials: int | None = None, lock_timeout: float = 10.0):
  """An Optuna storage for ``url``, safe for several worker processes (see the module docstring).

  - ``journal:///path/study.journal``: ``JournalStorage`` on a file, with
    Optuna's file lock; dead workers' trials are retried by
    :func:`reclaim_dead_trials` (no heartbeats in Optuna 5).
  - ``sqlite:///path/study.db`` and ``postgresql+psycopg://user@host:port/db``:
    ``RDBStorage`` with heartbeats; a worker that dies mid-trial has its trial
    failed by the next worker and retried (``RetryHeartbeatStaleTrialCallback``,
    up to ``max_retry`` times). An existing SQLite file is checked first
    (:func:`check_sqlite`), and its tables are created under the folder lock
    (two processes creating them at once collide in Optuna).

  Args:
    url: the storage URL.
    heartbeat_interval: seconds between heartbeats (RDB storages).
    grace_period: seconds without heartbeat before a trial is failed.
    max_retry: retries of a trial whose worker died.
    n_trials: the study's budget of complete-or-running trials (None: no limit).
    lock_timeout: seconds to wait for a locked SQLite file before giving up.

  Raises:
    StorageError: for a URL of another kind, or a damaged or locked SQLite file.
  """
  k = kind(url)
  path = local_path(url)
  if k == "journal":
    from optuna.storages.journal import JournalFileBackend  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(path), exist_ok=True)
    storage = _GuardedJournalStorage(JournalFileBackend(path))
  else:
    if path is not None:
      check_sqlite(path, timeout=lock_timeout)
    engine_kwargs = {"connect_args": {"timeout": 60}} if k == "sqlite" else {"pool_pre_ping": True}
    with _quiet_experimental(), (_FolderLock(os.path.dirname(path)) if path
                                 else contextlib.nullcontext()):
      callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
      storage = _GuardedRDBStorage(
          url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
          grace_period=grace_period or 3 * heartbeat_interval,
          heartbeat_stale_trial_callback=callback)
  storage.lock_folder = os.path.dirname(path) if path else None
  storage.n_trials = n_trials
  storage.max_retry = max_retry
  return storage


class _quiet_experimental:
  def __enter__(self):
    import warnings  # pylint: disable=g-import-not-at-top
    self._ctx = warnings.catch_warnings()
    self._ctx.__enter__()
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

  def __exit__(self, *exc):
    return self._ctx.__exit__(*exc)


def open_study(storage, study_name: str, directions: list[str], sampler=None, pruner=None,
               attempts: int = 5) -> optuna.Study:
  """Creates the study or joins it; concurrent workers racing to create it all end up joined."""
  lock = storage.locked() if isinstance(storage, _Guarded) else contextlib.nullcontext()
  if isinstance(storage, _Guarded):
    storage.study_name = study_name
  for attempt in range(attempts):
    try:
      with lock:
        return optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                   sampler=sampler, pruner=pruner, load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:
      time.sleep(0.2 * (attempt + 1))
  return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)


def _guarded(study):
  storage = study._storage  # pylint: disable=protected-access
  if not isinstance(storage, _Guarded):  # Optuna's cache in front of an RDBStorage
    storage = getattr(storage, "_backend", None)
  return storage if isinstance(storage, _Guarded) else None


def reclaim_dead_trials(study: optuna.Study, *, max_retry: int = 2) -> list[int]:
  """Fails the RUNNING trials of this host's dead workers and queues their retries.

  The journal storage's stand-in for heartbeats: a trial records its worker
  (host, pid, start time) when it starts; a trial of a process of this host
  that no longer exists is failed and retried like Optuna's heartbeat does
  (``RetryHeartbeatStaleTrialCallback``: same parameters, up to ``max_retry``
  retries of one original trial). Runs under the storage's folder lock, so
  two workers never retry the same trial; does nothing on PostgreSQL (which
  has heartbeats and no shared lock).

  Returns:
    The numbers of the trials failed.
  """
  storage = _guarded(study)
  if storage is None or storage.lock_folder is None:
    return []
  failed = []
  with storage.locked():
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
      if not _is_dead(t.system_attrs.get(OWNER_ATTR)):
        continue
      try:
        study.tell(t.number, state=TrialState.FAIL)
      except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        continue  # finished meanwhile
      failed.append(t.number)
      with _quiet_experimental():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(
            study, study._storage.get_trial(t._trial_id))  # pylint: disable=protected-access
  return failed


def counts(study: optuna.Study) -> dict[str, int]:
  """Trials of the study by state name."""
  out = {}
  for t in study.get_trials(deepcopy=False):
    out[t.state.name] = out.get(t.state.name, 0) + 1
  return out


def run_trials(study: optuna.Study, objective, *, n_trials: int, max_trials: int | None = None,
               catch=(), max_retry: int = 2, callbacks=()) -> int:
  """Runs trials in this process until the study has ``n_trials`` complete ones.

  Trials under way in other workers count as spent (they will most likely
  complete); a failed one frees its place for the workers still running. The
  storage (made with ``make_storage(..., n_trials=n_trials)``) refuses to start
  a trial past the budget; :class:`optuna.study.MaxTrialsCallback` stops this
  worker once ``n_trials`` are complete.

  Args:
    study: the shared study.
    objective: Optuna objective.
    n_trials: complete trials the study should reach.
    max_trials: at most this many trials in this process (None: no limit).
    catch: exceptions of the objective that fail the trial and go on.
    max_retry: retries of a trial whose worker died (see :func:`reclaim_dead_trials`).
    callbacks: more Optuna callbacks ``(study, trial)``, called after each trial here.

  Returns:
    The number of trials this process ran.
  """
  storage = _guarded(study)
  if storage is not None:
    storage.study_name = study.study_name
    if storage.n_trials is None:
      storage.n_trials = n_trials
  reclaim_dead_trials(study, max_retry=max_retry)
  mine = []
  record = lambda s, t: mine.append(t.number)
  callbacks = [optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,)), record,
               *callbacks]
  if counts(study).get("COMPLETE", 0) >= n_trials:
    return 0
  try:
    study.optimize(objective, n_trials=max_trials, callbacks=callbacks, catch=catch)
  except BudgetReached:
    pass  # the other workers' trials under way fill the study
  return len(mine)
