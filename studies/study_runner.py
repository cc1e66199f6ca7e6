"""Opening, running and reporting the Optuna study of ``launch.study``, and its worker processes.

Every function that needs flag values takes the parsed flags as ``f``:
``absl.flags.FLAGS`` or any object with ``launch.study``'s flag names as
attributes (this module defines no flags). Workers are spawned as
``python -m launch.study ... --worker``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app

from studies import study_flags


class Plan(NamedTuple):
  """A checked study: its context, name, output folder, storage URL and kind, target."""
  ctx: object
  name: str
  output_dir: str
  url: str
  storage_kind: str
  n_trials: int


def validate(f):
  """Every check of the flags, storage included, before anything is written or computed."""
  ctx, name, output_dir = study_flags.build_context(f)
  url = study_flags.storage_url(f, output_dir)
  kind = study_flags.check_storage(url)
  n_trials = f.n_trials
  if f.study == "tuning":  # the grid of (method, seed) runs is the whole study
    n_trials = min(n_trials, len(ctx.methods) * len(ctx.seeds))
  elif f.grid and n_trials > len(grid_cells(ctx)):
    # Past the grid the sampler would only draw cells again (a categorical space): no repeats.
    print(f"launch.study: --grid has {len(grid_cells(ctx))} cells; running {len(grid_cells(ctx))} "
          f"trials, not --n_trials={n_trials}", flush=True)
    n_trials = len(grid_cells(ctx))
  return Plan(ctx, name, output_dir, url, kind, n_trials)


def open_study(f, name, output_dir, url=None, n_trials=None):
  """Opens (or creates) the study on its storage; returns (study, url)."""
  import optuna  # pylint: disable=g-import-not-at-top
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  url = url or study_flags.storage_url(f, output_dir)
  try:
    storage = storage_lib.make_storage(url, heartbeat_interval=f.heartbeat_interval,
                                       grace_period=f.grace_period, max_retry=f.max_retry,
                                       n_trials=n_trials)
  except ValueError as e:
    raise app.UsageError(storage_lib.scrub(str(e), url)) from None
  except ImportError as e:
    raise app.UsageError(f"--storage {storage_lib.redact(url)!r} needs a database driver ({e}); "
                         "install the 'distributed' extra: pip install -e '.[distributed]'") from None
  if f.study == "bias_variance":
    from studies import bias_variance  # pylint: disable=g-import-not-at-top
    study = storage_lib.open_study(storage, name, bias_variance.DIRECTIONS,
                                   sampler=optuna.samplers.TPESampler(seed=None))
  else:
    space = {"method": list(f.methods), "seed": list(range(f.num_seeds))}
    study = storage_lib.open_study(storage, name, ["minimize"],
                                   sampler=optuna.samplers.GridSampler(space, seed=f.seed))
  return study, url


def finished(study):
  """The study's complete trials."""
  import optuna  # pylint: disable=g-import-not-at-top
  return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def run_trials(f, study, ctx, n_trials, max_trials=None):
  """Runs trials here until the study has ``n_trials`` complete (at most ``max_trials`` here)."""
  import optuna  # pylint: disable=g-import-not-at-top
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  if f.study == "bias_variance":
    from studies import bias_variance as kind  # pylint: disable=g-import-not-at-top
  else:
    from studies import tuning as kind  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return storage_lib.run_trials(study, kind.objective(ctx), n_trials=n_trials,
                                max_trials=max_trials, catch=(FloatingPointError,),
                                max_retry=f.max_retry,
                                callbacks=[progress_line(n_trials, study_kind=f.study)])


def grid_cells(ctx):
  """Every (estimator, num_steps, num_particles, num_chains) combination of the choices, once."""
  import itertools  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  import unrolled  # pylint: disable=g-import-not-at-top
  horizon = unrolled.get(ctx.problem_name, **ctx.problem_options).system.horizon
  sigma = math.sqrt(ctx.sigma[0] * ctx.sigma[1])
  steps = [n for n in ctx.num_steps if horizon % n == 0]
  cells = []
  for est in ctx.estimators:
    info = metaopt.estimator_info(est)
    for k, c in itertools.product([horizon] if info.whole_horizon else steps, ctx.num_chains):
      params = {"estimator": est, "num_chains": c}
      if not info.whole_horizon:
        params["num_steps"] = k
      if "sigma" in info.takes:
        params["sigma"] = sigma
      for n in ctx.num_particles if "num_particles" in info.takes else [None]:
        cells.append({**params, **({} if n is None else {"num_particles": n})})
  return cells


def enqueue_grid(study, ctx):
  """Enqueues every cell of :func:`grid_cells` once."""
  for params in grid_cells(ctx):
    study.enqueue_trial(params, skip_if_exists=True)


def progress_line(n_trials, *, study_kind):
  """An Optuna callback printing one line per trial finished here: its settings, its values,
  and the study's progress with an ETA from this worker's pace."""
  import optuna  # pylint: disable=g-import-not-at-top
  from studies import report  # pylint: disable=g-import-not-at-top
  began, ran = time.time(), []

  def callback(study, trial):
    ran.append(trial.number)
    done = finished(study)
    per_trial = (time.time() - began) / len(ran)
    if trial.state != optuna.trial.TrialState.COMPLETE:
      what = trial.state.name.lower()
    elif study_kind == "bias_variance":
      a = trial.user_attrs
      what = (f"bias² {a['bias2']:.3g} (± {a['bias2_se']:.2g}), variance {a['variance']:.3g}, "
              f"{a['cost_plain_steps']:.1f} plain steps per estimate")
    else:
      what = f"final validation loss {trial.value:.4g}"
    print(f"trial {trial.number} ({done}/{n_trials} complete): {report.label(trial)} | {what} | "
          f"{per_trial:.1f} s per trial, ETA {per_trial * max(0, n_trials - done):.0f} s",
          flush=True)

  return callback


def worker_command(argv):
  """A worker's command line: the parent's flags less those the parent decides.

  The storage URL is never on it (it may hold a password, and command lines
  are public in ``ps``): workers read it from $METAOPT_STORAGE.

  >>> worker_command(["--storage", "sqlite:///x.db", "--n_trials=3"])[1:]
  ['-m', 'launch.study', '--n_trials=3', '--worker']
  """
  own = {"storage", "n_workers", "study_name", "output_dir", "worker_trials", "worker"}
  args, skip = [], False
  for a in argv:
    if skip:  # the value of "--flag value"
      skip = False
      continue
    name = a.lstrip("-").split("=", 1)[0] if a.startswith("-") else None
    if name in own or (name and name.startswith("no") and name[2:] in own):
      skip = "=" not in a and name in own and name != "worker"
      continue
    args.append(a)
  return [sys.executable, "-m", "launch.study", *args, "--worker"]


def _describe(code):
  return f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else (
      f"exited with status {code}")


def run(f, plan, study, *, argv):
  """The parent: runs the trials here or in worker processes; returns the exit status.

  ``argv`` is the parent's command line less the program (``sys.argv[1:]``),
  from which the workers' command line is made.
  """
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  if f.n_workers == 1:
    run_trials(f, study, plan.ctx, plan.n_trials)
    return 0
  env = {**os.environ, storage_lib.ENV_VAR: plan.url}
  cmd = worker_command(argv) + [f"--study_name={plan.name}", f"--output_dir={plan.output_dir}"]
  procs = [subprocess.Popen(cmd, env=env) for _ in range(f.n_workers)]
  status = 0
  pending = dict(enumerate(procs))
  while pending:
    for i, p in list(pending.items()):
      code = p.poll()
      if code is None:
        continue
      del pending[i]
      if code:
        status = 1
        print(f"launch.study: error: worker {i + 1} of {len(procs)} (pid {p.pid}) "
              f"{_describe(code)}", file=sys.stderr, flush=True)
    time.sleep(0.2)
  reclaimed = storage_lib.reclaim_dead_trials(study, max_retry=f.max_retry)
  done = finished(study)
  if status:
    print(f"launch.study: error: the study has {done} of {plan.n_trials} complete trials"
          + (f"; trials {reclaimed} of dead workers were failed and queued for a retry"
             if reclaimed else "")
          + ": rerun the same command to finish it", file=sys.stderr, flush=True)
  return status


def run_study(f, argv):
  """Checks the flags, opens the study, runs it (here or in workers) and reports it.

  ``argv`` is as absl passes it to ``main`` (the program first). Returns the exit status.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  plan = validate(f)
  os.makedirs(plan.output_dir, exist_ok=True)
  study, url = open_study(f, plan.name, plan.output_dir, plan.url, plan.n_trials)
  if f.worker or f.worker_trials is not None:
    run_trials(f, study, plan.ctx, plan.n_trials, max_trials=f.worker_trials)
    return 0
  if f.n_workers > 1 and plan.storage_kind == "sqlite":
    print(f"launch.study: warning: {f.n_workers} workers on SQLite: this program's workers "
          "take queued trials under a lock, but other programs on the same file can hand one "
          "trial to two workers; a journal:/// file or PostgreSQL is safer", file=sys.stderr)
  if f.grid and f.study == "bias_variance":
    enqueue_grid(study, plan.ctx)
  done = finished(study)
  print(f"study {plan.name!r} on {storage_lib.redact(url)}: {done} finished trials, running "
        f"{max(0, plan.n_trials - done)} more with {f.n_workers} worker(s)", flush=True)
  status = run(f, plan, study, argv=sys.argv[1:]) if done < plan.n_trials else 0
  if f.report:
    from studies import report  # pylint: disable=g-import-not-at-top
    text, figures = report.write_report(study, f.study, plan.output_dir)
    print(text)
    board = os.path.join(plan.output_dir, "tensorboard")
    print("outputs: " + ", ".join([os.path.join(plan.output_dir, name) for name in (
        "summary.md", "trials.csv")] + figures + [board + os.sep]))
    print(f"study storage: {storage_lib.redact(plan.url)}")
    print(f"TensorBoard (one hparams session per trial): tensorboard --logdir {board}")
  return status


def main(f, argv):
  """Runs the study; every error the user can fix is one line on stderr (status 2 for flags).

  Always exits (``sys.exit``) with the study's status.
  """
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  url = os.environ.get(storage_lib.ENV_VAR) if f.worker else None
  url = url or f.storage or os.environ.get(storage_lib.ENV_VAR)
  try:
    status = run_study(f, argv)
  except app.UsageError as e:
    print(f"launch.study: error: {storage_lib.scrub(str(e), url)} (--helpshort lists the flags)",
          file=sys.stderr)
    sys.exit(2)
  except storage_lib.StorageError as e:
    print(f"launch.study: error: {storage_lib.scrub(str(e), url)}", file=sys.stderr)
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    message = storage_failure(e, storage=f.storage)
    if message is None:
      raise
    print(f"launch.study: error: {storage_lib.scrub(message, url)}", file=sys.stderr)
    sys.exit(1)
  sys.exit(status)


def storage_failure(error, *, storage):
  """One line for a storage that failed mid-run (locked or damaged SQLite, lost server), or None.

  ``storage`` is the --storage URL (None: the message says "the study's storage").
  """
  import optuna  # pylint: disable=g-import-not-at-top
  try:
    import sqlalchemy.exc  # pylint: disable=g-import-not-at-top
    db_errors = (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError)
  except ImportError:
    db_errors = (optuna.exceptions.StorageInternalError,)
  if not isinstance(error, db_errors):
    return None
  text = str(getattr(error, "orig", None) or error).splitlines()[0]
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  where = storage_lib.redact(storage) if storage else "the study's storage"
  if "locked" in text:
    return (f"study storage {where} stayed locked by another process ({text}): let it finish or "
            "stop it, then rerun (a journal:/// storage suits several processes better)")
  return f"study storage {where} failed ({text}): check it (a damaged file: restore or move it)"
