"""Optuna storages from one URL: SQLite by default, a journal file, or PostgreSQL for many machines."""

from __future__ import annotations

import os
import time

import optuna

JOURNAL_PREFIX = "journal://"


def default_storage_url(output_dir: str) -> str:
  """The embedded default: a SQLite file inside the study's output folder."""
  return f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'study.db'))}"


def make_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int | None = None,
                 max_retry: int = 2):
  """An Optuna storage for ``url``.

  - ``sqlite:///path/study.db`` and ``postgresql+psycopg://user@host:port/db``:
    ``RDBStorage`` with heartbeats; a worker that dies mid-trial has its trial
    failed by the next worker and retried (``RetryHeartbeatStaleTrialCallback``,
    up to ``max_retry`` times).
  - ``journal:///path/study.log``: ``JournalStorage`` on a file (no heartbeats
    in Optuna 5: a dead worker's trial stays RUNNING).

  Raises:
    ValueError: for a URL of another kind, naming the accepted forms.
  """
  if url.startswith(JOURNAL_PREFIX):
    from optuna.storages.journal import JournalFileBackend  # pylint: disable=g-import-not-at-top
    path = url[len(JOURNAL_PREFIX):]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(path))
  if url.startswith("sqlite:") or url.startswith("postgresql"):
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {
        "pool_pre_ping": True}
    with _quiet_experimental():
      callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
      return optuna.storages.RDBStorage(
          url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
          grace_period=grace_period or 3 * heartbeat_interval,
          heartbeat_stale_trial_callback=callback)
  raise ValueError(f"--storage {url!r} is not one of: sqlite:///PATH, journal:///PATH, "
                   "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE")


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
  for attempt in range(attempts):
    try:
      return optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                 sampler=sampler, pruner=pruner, load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:
      time.sleep(0.2 * (attempt + 1))
  return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
