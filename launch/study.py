r"""Run an Optuna study of hypergradient estimators; many workers may share one study.

Examples:
  python -m launch.study --flagfile=launch/configs/study_toy_regression.flags
  python -m launch.study --study=bias_variance --problem=influence_balancing \
      --storage=postgresql+psycopg://user:pw@db-host:5432/metaopt --study_name=ib --n_trials=50

Several invocations with the same --storage and --study_name (or --n_workers > 1,
which spawns worker processes) share the study; rerunning continues it: workers
run trials until the study has --n_trials complete ones (trials under way in
other workers count; see studies/storage.py). A worker that dies makes the
command report it and exit non-zero; rerunning retries its trial.

Storage: by default a journal file in --output_dir (safe for several processes
on one machine; an existing study.db there is kept), else --storage. To keep a
database password off the command line (and out of `ps`), leave it out of the
URL and give it the libpq way, which psycopg reads: the PGPASSWORD environment
variable or a ~/.pgpass file; or put the whole URL in the METAOPT_STORAGE
environment variable, which is read when --storage is absent:

  export PGPASSWORD=...    # or a line host:port:db:user:password in ~/.pgpass
  python -m launch.study --storage=postgresql+psycopg://user@db-host:5432/metaopt ...

Every message shows the URL with its password as ***, and worker processes get
the URL through their environment, never their command line.

Every flag is checked before anything is written or computed (estimators are
built with every window length and particle count a trial may give them, and
their memory estimated); an error is one line naming the flag. Outputs
(figures, CSV, TensorBoard hparams sessions, summary.md) go to --output_dir.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app
from absl import flags

import launch

_STUDY = flags.DEFINE_enum("study", "bias_variance", ["bias_variance", "tuning"], "Which study.")
_PROBLEM = flags.DEFINE_string(
    "problem", "toy_regression", "Inner problem: a name of unrolled.names(), or the import path "
    "package.module:factory of a function returning an unrolled.Problem.")
_PROBLEM_OPTION = flags.DEFINE_multi_string("problem_option", [], "key=value problem option.")
_STORAGE = flags.DEFINE_string(
    "storage", None, "Optuna storage URL: journal:///PATH, sqlite:///PATH or "
    "postgresql+psycopg://USER@HOST:PORT/DB, the password from PGPASSWORD or ~/.pgpass "
    "(default: $METAOPT_STORAGE, else a journal file in --output_dir).")
_STUDY_NAME = flags.DEFINE_string("study_name", None, "Study name (default <study>-<problem>).")
_N_TRIALS = flags.DEFINE_integer("n_trials", 20, "Finished trials the study should reach.")
_N_WORKERS = flags.DEFINE_integer("n_workers", 1, "Worker processes to spawn (each runs trials "
                                  "until the study has --n_trials).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Outputs folder (default runs/studies/<study_name>).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the estimates' keys and of the search.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_interval", 10, "Seconds between worker heartbeats.")
_GRACE = flags.DEFINE_integer("grace_period", None, "Seconds without heartbeat before a trial is "
                              "failed and retried (default 3 x heartbeat_interval).")
_MAX_RETRY = flags.DEFINE_integer("max_retry", 2, "Retries of a trial whose worker died.")
_REPORT = flags.DEFINE_bool("report", True, "Write figures, CSV and TensorBoard at the end.")
# bias_variance
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["tbptt", "rtrl", "uoro", "pes"],
    "Estimators the trials choose from; options in brackets separated by ';', e.g. "
    "uoro[rho=one_step_variance;rank=4].")
_NUM_STEPS = flags.DEFINE_list("num_steps", ["1", "5", "10", "20"], "Window lengths to choose from.")
_NUM_PARTICLES = flags.DEFINE_list("num_particles", ["2", "8", "32"], "Particles to choose from.")
_SIGMA = flags.DEFINE_list("sigma_range", ["0.001", "0.1"], "Log-uniform range of sigma.")
_NUM_CHAINS = flags.DEFINE_list("num_chains", ["1", "4"], "Chains per estimate to choose from.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 128, "Independent estimates per trial (M).")
_GRID = flags.DEFINE_bool(
    "grid", False, "Enqueue every combination of the choices below as trials first (a systematic "
    "sweep; the sampler explores after it). --n_trials should cover the grid.")
_EXACT = flags.DEFINE_enum("exact", "full_bptt", ["full_bptt", "rtrl"],
                           "Reference for the exact hypergradient.")
# tuning
_METHODS = flags.DEFINE_list(
    "methods", ["online:rtrl", "online:pes", "tpe", "random"],
    "Methods of the tuning study: online:<estimator> (restarts; its first horizon is also the "
    "single-run mode), tpe, random, cmaes (Optuna's CmaEsSampler; pip install "
    "'metaopt[cmaes]'), grid (the practitioner's learning-rate grid, see --baseline_option).")
_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per method (tuning study).")
_BUDGETS = flags.DEFINE_list(
    "budgets", ["1", "3", "10", "30"], "Budgets in training runs of one horizon, every "
    "particle's inner steps counted (tuning study); each method runs to the largest.")
_BASELINE_OPTION = flags.DEFINE_multi_string(
    "baseline_option", [], "key=value problem option of the grid baseline's problem (e.g. "
    "schedule=cosine), on top of --problem_option.")
_BASELINE_KEY = flags.DEFINE_string(
    "baseline_key", "learning_rate", "theta entry (log units) the grid baseline scales.")
_NUM_EVALS = flags.DEFINE_integer("num_evals", 10, "Evaluation points per online run.")
_TUNE_NUM_STEPS = flags.DEFINE_integer("tune_num_steps", 10, "Window of the online methods.")
_TUNE_PARTICLES = flags.DEFINE_integer("tune_num_particles", 8, "Particles of online pes.")
_TUNE_SIGMA = flags.DEFINE_float("tune_sigma", 0.03, "Sigma of online pes.")
_META_OPTIMIZER = flags.DEFINE_enum("meta_optimizer", "adam", ["sgd", "adam"], "Online meta-optimiser.")
_META_LR = flags.DEFINE_float("meta_lr", None, "Online meta learning rate (default: metaopt's).")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", None,
                                    "Online: clip the hypergradient's global norm.")
_MAX_UPDATE = flags.DEFINE_float("max_update", None, "Online: bound on each coordinate of "
                                 "theta's change per outer step (default: metaopt's).")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", None, "Online: outer steps of meta "
                                     "learning-rate warm-up (default: metaopt's).")
_ROLLBACK = flags.DEFINE_float("rollback_factor", 1.5, "Online, with --validate_runs=0 only: set "
                               "theta back to the best horizon's after a horizon this many "
                               "times worse (0: never).")
_VALIDATE_RUNS = flags.DEFINE_float(
    "validate_runs", 1.0, "Online: runs of tuning between validations of theta (one fresh "
    "training run each, counted in the budget; the initial theta is validated first); the "
    "method reports its best validated model. 0: no validation (theta after b - 1 runs, "
    "retrained).")
_SIGNIFICANCE = flags.DEFINE_float(
    "significance", None, "Online: standard errors of the paired validation difference a theta "
    "must win by to become the best, or lose by to be sent back (default: metaopt's).")
_TRUST_RADIUS = flags.DEFINE_float(
    "trust_radius", None, "Online: every coordinate of theta stays within this of the best "
    "validated theta (times the step's shrink; default: metaopt's; 0: no trust region).")
_SINGLE_META_LR = flags.DEFINE_float("single_meta_lr", None, "The single-run mode's own meta "
                                     "learning rate (default: --meta_lr).")
_DECAY_STEPS = flags.DEFINE_integer("decay_steps", None, "Online: time scale of the meta learning "
                                    "rate's 1/sqrt decay, 0: constant (default: metaopt's).")
_SEARCH_WIDTH = flags.DEFINE_float("search_width", 3.0,
                                   "Black-box range: theta0 +- this (unconstrained units).")
_NUM_REPORTS = flags.DEFINE_integer("num_reports", 5, "Intermediate reports per black-box trial.")
# internal: set on spawned workers
_WORKER = flags.DEFINE_integer("worker_trials", None, "Internal: run at most this many trials "
                               "and exit.")
_IS_WORKER = flags.DEFINE_bool("worker", False, "Internal: a spawned worker (storage URL from "
                               "$METAOPT_STORAGE).")


# Seeds feed jax.random.key and numpy's generators (the samplers): 32 bits.
_MAX_SEED = 2**32
# Samples whose estimates are held at once (studies.bias_variance.estimates maps in batches of 64).
_BATCH = 64


def _ints(name, values, *, low=1):
  try:
    out = tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{name} must be a list of integers, got {','.join(values)}") from None
  if not out:
    raise app.UsageError(f"--{name} is empty")
  if any(v < low for v in out):
    raise app.UsageError(f"--{name} must be integers >= {low}, got {','.join(values)}")
  return out


def _floats(name, values):
  import math  # pylint: disable=g-import-not-at-top
  try:
    out = tuple(float(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{name} must be numbers, got {','.join(values)}") from None
  if not all(math.isfinite(v) for v in out):
    raise app.UsageError(f"--{name} must be finite numbers, got {','.join(values)}")
  return out


def _positive(flag):
  import math  # pylint: disable=g-import-not-at-top
  if not (math.isfinite(flag.value) and flag.value > 0):
    raise app.UsageError(f"--{flag.name} must be a positive finite number, got {flag.value}")


def parse_problem_options(items):
  import unrolled  # pylint: disable=g-import-not-at-top
  try:
    return unrolled.parse_options(items)
  except ValueError as e:
    raise app.UsageError(f"--problem_option: {e}") from None


def build_estimator(flag, spec, system, **options):
  """Builds (so validates) one estimator of a flag, turning its error into a usage error."""
  import metaopt  # pylint: disable=g-import-not-at-top
  try:
    return metaopt.get_estimator(spec, system, **options)
  except (ValueError, TypeError, KeyError) as e:
    raise app.UsageError(f"{flag}: {spec!r}: {e}") from None


def _check_memory(flag, estimator, theta, num_chains, factor):
  import metaopt  # pylint: disable=g-import-not-at-top
  try:
    metaopt.check_memory(estimator, theta, num_chains=num_chains, what=flag,
                         working_factor=factor)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def storage_url(output_dir):
  """--storage, else $METAOPT_STORAGE (how workers get it), else the default in ``output_dir``."""
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  env = os.environ.get(storage_lib.ENV_VAR)
  if _IS_WORKER.value and env:  # the parent's URL wins over a --storage from a flagfile
    return env
  return _STORAGE.value or env or storage_lib.default_storage_url(output_dir)


def _check_storage(url):
  """The URL's kind, and for a file storage its folder and an existing SQLite file: no writes."""
  from studies import paths  # pylint: disable=g-import-not-at-top
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  try:
    kind = storage_lib.kind(url)
    path = storage_lib.local_path(url)
    if path is not None:
      paths.check_writable_dir(os.path.dirname(path), flag="--storage")
      if os.path.isdir(path):
        raise storage_lib.StorageError(f"--storage: {path} is a folder, not a file")
      if kind == "sqlite":
        storage_lib.check_sqlite(path)
  except ValueError as e:
    raise app.UsageError(storage_lib.scrub(str(e), url)) from None
  return kind


def _check_bias_variance(problem):
  """Builds every estimator with every window, particle count and sigma it may get in a trial."""
  import metaopt  # pylint: disable=g-import-not-at-top
  system, horizon = problem.system, problem.system.horizon
  particles = _ints("num_particles", _NUM_PARTICLES.value)
  sigma = _floats("sigma_range", _SIGMA.value)
  if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
    raise app.UsageError(f"--sigma_range must be two positive numbers low,high, got "
                         f"{','.join(_SIGMA.value)}")
  num_steps = _ints("num_steps", _NUM_STEPS.value)
  chains = _ints("num_chains", _NUM_CHAINS.value)
  windows = [n for n in num_steps if horizon % n == 0]
  if not windows:
    raise app.UsageError(f"--num_steps: none of {num_steps} divides the horizon {horizon}")
  if not _ESTIMATORS.value:
    raise app.UsageError("--estimators is empty")
  for spec in _ESTIMATORS.value:
    try:
      info = metaopt.estimator_info(spec)
    except (ValueError, KeyError) as e:
      raise app.UsageError(f"--estimators: {spec!r}: {e}") from None
    spec_particles = particles if "num_particles" in info.takes else particles[:1]
    for n in [horizon] if info.whole_horizon else windows:
      for p in spec_particles:
        for s in sigma if "sigma" in info.takes else sigma[:1]:
          est = build_estimator("--estimators", spec, system, num_steps=n, num_particles=p,
                                sigma=s)
        window = metaopt.window_length(spec, system, n)
        if window < 1 or horizon % window:
          raise app.UsageError(f"--estimators: {spec!r} unrolls windows of {window} steps, "
                               f"which do not divide the horizon {horizon}")
        _check_memory("--num_chains", est, problem.theta, max(chains),
                      4.0 * min(_BATCH, _NUM_SAMPLES.value))
  # After the chains' own check: (M, H) float64 estimates and the exact gradients of every
  # chain are held at once.
  size = len(jax_flat(problem.theta))
  need = 8 * _NUM_SAMPLES.value * size * (3 + max(chains))
  have = metaopt.available_bytes()
  if have is not None and need > have:
    raise app.UsageError(f"--num_samples={_NUM_SAMPLES.value} needs about {need / 2**30:.3g} GiB "
                         f"for the estimates; {have / 2**30:.3g} GiB is available: lower it")
  if _EXACT.value == "rtrl":
    for n in windows:
      build_estimator("--exact", "rtrl", system, num_steps=n)
  return num_steps, particles, sigma, chains


def jax_flat(theta):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.flatten_util  # pylint: disable=g-import-not-at-top,unused-import
  return jax.flatten_util.ravel_pytree(theta)[0]


def _check_tuning(problem):
  from studies import tuning  # pylint: disable=g-import-not-at-top
  for flag in (_TUNE_NUM_STEPS, _TUNE_PARTICLES, _NUM_REPORTS):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  for flag in (_TUNE_SIGMA, _SEARCH_WIDTH):
    _positive(flag)
  for flag in (_META_LR, _MAX_GRAD_NORM, _MAX_UPDATE, _SINGLE_META_LR):
    if flag.value is not None:
      _positive(flag)
  for flag in (_VALIDATE_RUNS, _SIGNIFICANCE, _TRUST_RADIUS):
    if flag.value is not None and not (flag.value >= 0 and flag.value < float("inf")):
      raise app.UsageError(f"--{flag.name} must be a finite number >= 0, got {flag.value}")
  if not (_ROLLBACK.value == 0 or _ROLLBACK.value >= 1):  # NaN fails both
    raise app.UsageError(f"--rollback_factor must be 0 (never) or >= 1, got {_ROLLBACK.value}")
  for flag in (_WARMUP_STEPS, _DECAY_STEPS):
    if flag.value is not None and flag.value < 0:
      raise app.UsageError(f"--{flag.name} must be >= 0, got {flag.value}")
  if not _METHODS.value:
    raise app.UsageError("--methods is empty")
  try:
    tuning.check_methods(_METHODS.value)
  except ValueError as e:
    raise app.UsageError(f"--methods: {e}") from None
  if len(set(_METHODS.value)) < len(_METHODS.value):
    raise app.UsageError(f"--methods repeats a method: {','.join(_METHODS.value)}")
  budgets = _ints("budgets", _BUDGETS.value)
  if list(budgets) != sorted(set(budgets)):
    raise app.UsageError(f"--budgets must increase, got {','.join(_BUDGETS.value)}")
  if "cmaes" in _METHODS.value:
    try:
      import cmaes  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise app.UsageError("--methods=cmaes needs the cmaes package: pip install "
                           "'metaopt[cmaes]'") from None
  baseline = parse_problem_options(_BASELINE_OPTION.value)
  if "grid" in _METHODS.value:
    import unrolled  # pylint: disable=g-import-not-at-top
    try:
      base_problem = unrolled.get(_PROBLEM.value, **{**parse_problem_options(
          _PROBLEM_OPTION.value), **baseline})
    except (unrolled.ProblemError, ValueError, TypeError) as e:
      raise app.UsageError(f"--baseline_option: {e}") from None
    if not isinstance(base_problem.theta, dict) or _BASELINE_KEY.value not in base_problem.theta:
      raise app.UsageError(f"--baseline_key={_BASELINE_KEY.value!r} is not an entry of the "
                           "baseline problem's theta (the grid scales it)")
  for m in _METHODS.value:
    if not m.startswith("online:"):
      continue
    build_estimator("--methods", m.split(":", 1)[1], problem.system,
                    num_steps=_TUNE_NUM_STEPS.value, num_particles=_TUNE_PARTICLES.value,
                    sigma=_TUNE_SIGMA.value)
  return budgets, baseline


def build_context():
  """Checks every flag and builds the study's context; writes nothing and compiles nothing.

  Returns:
    (context, study name, output folder); the folder is not created.

  Raises:
    app.UsageError: one line naming the flag at fault.
  """
  import unrolled  # pylint: disable=g-import-not-at-top
  from studies import paths  # pylint: disable=g-import-not-at-top
  for flag in (_N_TRIALS, _N_WORKERS, _NUM_SAMPLES, _SEEDS, _NUM_EVALS, _HEARTBEAT):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  max_workers = max(8, 4 * (os.cpu_count() or 1))
  if _N_WORKERS.value > max_workers:
    raise app.UsageError(f"--n_workers={_N_WORKERS.value} is more than {max_workers} processes "
                         "for this machine; use several machines on PostgreSQL instead")
  if _GRACE.value is not None and _GRACE.value < 1:
    raise app.UsageError(f"--grace_period must be >= 1 second, got {_GRACE.value}")
  if _MAX_RETRY.value < 0:
    raise app.UsageError(f"--max_retry must be >= 0, got {_MAX_RETRY.value}")
  if _WORKER.value is not None and _WORKER.value < 1:
    raise app.UsageError(f"--worker_trials must be >= 1, got {_WORKER.value}")
  if not 0 <= _SEED.value < _MAX_SEED:
    raise app.UsageError(f"--seed must be in [0, 2**32), got {_SEED.value}")
  try:  # a registered name or an import path package.module:factory, before its options
    unrolled.options(_PROBLEM.value)
  except unrolled.ProblemError as e:
    raise app.UsageError(f"--problem={e.name!r}{e.reason}") from None
  options = parse_problem_options(_PROBLEM_OPTION.value)
  try:
    problem = unrolled.get(_PROBLEM.value, **options)
  except unrolled.ProblemError as e:
    raise app.UsageError(f"--problem={e.name!r}{e.reason}") from None
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--problem_option: {e}") from None
  if _STUDY_NAME.value == "":
    raise app.UsageError("--study_name is empty; leave it out for <study>-<problem>")
  # An import path's ':' (and anything else a folder name must not hold) becomes '_'.
  name = _STUDY_NAME.value or re.sub(r"[^A-Za-z0-9._+=-]", "_",
                                     f"{_STUDY.value}-{_PROBLEM.value}")
  try:
    if _OUTPUT_DIR.value:
      output_dir = _OUTPUT_DIR.value
      if not name or "\x00" in name:
        raise ValueError(f"--study_name={name!r} is empty or has a NUL character")
    else:  # the name becomes a folder under runs/studies: it must stay one folder there
      paths.check_name(name, flag="--study_name")
      output_dir = os.path.join("runs", "studies", name)
    paths.check_writable_dir(output_dir, flag="--output_dir")
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _STUDY.value == "bias_variance":
    from studies import bias_variance  # pylint: disable=g-import-not-at-top
    num_steps, particles, sigma, chains = _check_bias_variance(problem)
    ctx = bias_variance.Context(
        _PROBLEM.value, options, tuple(_ESTIMATORS.value), num_steps, particles, sigma, chains,
        _NUM_SAMPLES.value, _SEED.value, _EXACT.value, output_dir)
  else:
    import metaopt  # pylint: disable=g-import-not-at-top
    from studies import tuning  # pylint: disable=g-import-not-at-top
    budgets, baseline = _check_tuning(problem)
    ctx = tuning.Context(
        _PROBLEM.value, options, tuple(_METHODS.value), tuple(range(_SEEDS.value)), budgets,
        _NUM_EVALS.value, _TUNE_NUM_STEPS.value, _TUNE_PARTICLES.value, _TUNE_SIGMA.value,
        _META_OPTIMIZER.value,
        metaopt.DEFAULT_META_LR if _META_LR.value is None else _META_LR.value,
        _SEARCH_WIDTH.value, _NUM_REPORTS.value,
        baseline, _BASELINE_KEY.value, _MAX_GRAD_NORM.value,
        metaopt.DEFAULT_MAX_UPDATE if _MAX_UPDATE.value is None else _MAX_UPDATE.value,
        metaopt.DEFAULT_WARMUP_STEPS if _WARMUP_STEPS.value is None else _WARMUP_STEPS.value,
        metaopt.DEFAULT_DECAY_STEPS if _DECAY_STEPS.value is None else _DECAY_STEPS.value or None,
        _ROLLBACK.value or None, _VALIDATE_RUNS.value,
        metaopt.DEFAULT_SIGNIFICANCE if _SIGNIFICANCE.value is None else _SIGNIFICANCE.value,
        0.5, _SINGLE_META_LR.value,
        metaopt.DEFAULT_TRUST_RADIUS if _TRUST_RADIUS.value is None else _TRUST_RADIUS.value or None)
  return ctx, name, output_dir


class Plan(NamedTuple):
  """A checked study: its context, name, output folder, storage URL and kind, target."""
  ctx: object
  name: str
  output_dir: str
  url: str
  storage_kind: str
  n_trials: int


def validate():
  """Every check of the flags, storage included, before anything is written or computed."""
  ctx, name, output_dir = build_context()
  url = storage_url(output_dir)
  kind = _check_storage(url)
  n_trials = _N_TRIALS.value
  if _STUDY.value == "tuning":  # the grid of (method, seed) runs is the whole study
    n_trials = min(n_trials, len(ctx.methods) * len(ctx.seeds))
  elif _GRID.value and n_trials > len(grid_cells(ctx)):
    # Past the grid the sampler would only draw cells again (a categorical space): no repeats.
    print(f"launch.study: --grid has {len(grid_cells(ctx))} cells; running {len(grid_cells(ctx))} "
          f"trials, not --n_trials={n_trials}", flush=True)
    n_trials = len(grid_cells(ctx))
  return Plan(ctx, name, output_dir, url, kind, n_trials)


def open_study(name, output_dir, url=None, n_trials=None):
  """Opens (or creates) the study on its storage; returns (study, url)."""
  import optuna  # pylint: disable=g-import-not-at-top
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  url = url or storage_url(output_dir)
  try:
    storage = storage_lib.make_storage(url, heartbeat_interval=_HEARTBEAT.value,
                                       grace_period=_GRACE.value, max_retry=_MAX_RETRY.value,
                                       n_trials=n_trials)
  except ValueError as e:
    raise app.UsageError(storage_lib.scrub(str(e), url)) from None
  except ImportError as e:
    raise app.UsageError(f"--storage {storage_lib.redact(url)!r} needs a database driver ({e}); "
                         "install the 'distributed' extra: pip install -e '.[distributed]'") from None
  if _STUDY.value == "bias_variance":
    from studies import bias_variance  # pylint: disable=g-import-not-at-top
    study = storage_lib.open_study(storage, name, bias_variance.DIRECTIONS,
                                   sampler=optuna.samplers.TPESampler(seed=None))
  else:
    study = storage_lib.open_study(storage, name, ["minimize"],
                                   sampler=optuna.samplers.GridSampler(
                                       _tuning_space(), seed=_SEED.value))
  return study, url


def _tuning_space():
  return {"method": list(_METHODS.value), "seed": list(range(_SEEDS.value))}


def finished(study):
  import optuna  # pylint: disable=g-import-not-at-top
  return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def run_trials(study, ctx, n_trials, max_trials=None):
  """Runs trials here until the study has ``n_trials`` complete (at most ``max_trials`` here)."""
  import optuna  # pylint: disable=g-import-not-at-top
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  if _STUDY.value == "bias_variance":
    from studies import bias_variance as kind  # pylint: disable=g-import-not-at-top
  else:
    from studies import tuning as kind  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return storage_lib.run_trials(study, kind.objective(ctx), n_trials=n_trials,
                                max_trials=max_trials, catch=(FloatingPointError,),
                                max_retry=_MAX_RETRY.value, callbacks=[progress_line(n_trials)])


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


def progress_line(n_trials):
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
    elif _STUDY.value == "bias_variance":
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


def run(plan, study):
  """The parent: runs the trials here or in worker processes; returns the exit status."""
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  if _N_WORKERS.value == 1:
    run_trials(study, plan.ctx, plan.n_trials)
    return 0
  env = {**os.environ, storage_lib.ENV_VAR: plan.url}
  cmd = worker_command(sys.argv[1:]) + [f"--study_name={plan.name}",
                                        f"--output_dir={plan.output_dir}"]
  procs = [subprocess.Popen(cmd, env=env) for _ in range(_N_WORKERS.value)]
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
  reclaimed = storage_lib.reclaim_dead_trials(study, max_retry=_MAX_RETRY.value)
  done = finished(study)
  if status:
    print(f"launch.study: error: the study has {done} of {plan.n_trials} complete trials"
          + (f"; trials {reclaimed} of dead workers were failed and queued for a retry"
             if reclaimed else "")
          + ": rerun the same command to finish it", file=sys.stderr, flush=True)
  return status


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  plan = validate()
  os.makedirs(plan.output_dir, exist_ok=True)
  study, url = open_study(plan.name, plan.output_dir, plan.url, plan.n_trials)
  if _IS_WORKER.value or _WORKER.value is not None:
    run_trials(study, plan.ctx, plan.n_trials, max_trials=_WORKER.value)
    return 0
  if _N_WORKERS.value > 1 and plan.storage_kind == "sqlite":
    print(f"launch.study: warning: {_N_WORKERS.value} workers on SQLite: this program's workers "
          "take queued trials under a lock, but other programs on the same file can hand one "
          "trial to two workers; a journal:/// file or PostgreSQL is safer", file=sys.stderr)
  if _GRID.value and _STUDY.value == "bias_variance":
    enqueue_grid(study, plan.ctx)
  done = finished(study)
  print(f"study {plan.name!r} on {storage_lib.redact(url)}: {done} finished trials, running "
        f"{max(0, plan.n_trials - done)} more with {_N_WORKERS.value} worker(s)", flush=True)
  status = run(plan, study) if done < plan.n_trials else 0
  if _REPORT.value:
    from studies import report  # pylint: disable=g-import-not-at-top
    text, figures = report.write_report(study, _STUDY.value, plan.output_dir)
    print(text)
    board = os.path.join(plan.output_dir, "tensorboard")
    print("outputs: " + ", ".join([os.path.join(plan.output_dir, name) for name in (
        "summary.md", "trials.csv")] + figures + [board + os.sep]))
    print(f"study storage: {storage_lib.redact(plan.url)}")
    print(f"TensorBoard (one hparams session per trial): tensorboard --logdir {board}")
  return status


def main(argv):
  """Runs the study; every error the user can fix is one line on stderr (status 2 for flags)."""
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  url = os.environ.get(storage_lib.ENV_VAR) if _IS_WORKER.value else None
  url = url or _STORAGE.value or os.environ.get(storage_lib.ENV_VAR)
  try:
    status = _main(argv)
  except app.UsageError as e:
    print(f"launch.study: error: {storage_lib.scrub(str(e), url)} (--helpshort lists the flags)",
          file=sys.stderr)
    sys.exit(2)
  except storage_lib.StorageError as e:
    print(f"launch.study: error: {storage_lib.scrub(str(e), url)}", file=sys.stderr)
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    message = _storage_failure(e)
    if message is None:
      raise
    print(f"launch.study: error: {storage_lib.scrub(message, url)}", file=sys.stderr)
    sys.exit(1)
  sys.exit(status)


def _storage_failure(error):
  """One line for a storage that failed mid-run (locked or damaged SQLite, lost server), or None."""
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
  where = storage_lib.redact(_STORAGE.value) if _STORAGE.value else "the study's storage"
  if "locked" in text:
    return (f"study storage {where} stayed locked by another process ({text}): let it finish or "
            "stop it, then rerun (a journal:/// storage suits several processes better)")
  return f"study storage {where} failed ({text}): check it (a damaged file: restore or move it)"


if __name__ == "__main__":
  launch.run(main)
