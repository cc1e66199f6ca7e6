r"""Run an Optuna study of hypergradient estimators; many workers may share one study.

Examples:
  python -m launch.study --flagfile=launch/configs/study_toy_regression.flags
  python -m launch.study --study=bias_variance --problem=influence_balancing \
      --storage=postgresql+psycopg://user:pw@db-host:5432/metaopt --study_name=ib --n_trials=50

Several invocations with the same --storage and --study_name (or --n_workers > 1,
which spawns worker processes) share the study; rerunning continues it: it runs
trials until the study has --n_trials finished ones. Outputs (figures, CSV,
TensorBoard hparams sessions, summary.md) go to --output_dir.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app
from absl import flags

_STUDY = flags.DEFINE_enum("study", "bias_variance", ["bias_variance", "tuning"], "Which study.")
_PROBLEM = flags.DEFINE_string("problem", "toy_regression", "Inner problem (unrolled.names()).")
_PROBLEM_OPTION = flags.DEFINE_multi_string("problem_option", [], "key=value problem option.")
_STORAGE = flags.DEFINE_string(
    "storage", None, "Optuna storage URL: sqlite:///PATH, journal:///PATH or "
    "postgresql+psycopg://USER:PW@HOST:PORT/DB (default: SQLite in --output_dir).")
_STUDY_NAME = flags.DEFINE_string("study_name", None, "Study name (default <study>-<problem>).")
_N_TRIALS = flags.DEFINE_integer("n_trials", 20, "Finished trials the study should reach.")
_N_WORKERS = flags.DEFINE_integer("n_workers", 1, "Worker processes to spawn (each runs trials).")
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
    "uoro[rho=variance;rank=4].")
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
_METHODS = flags.DEFINE_list("methods", ["online:rtrl", "online:pes", "tpe", "random"],
                             "Methods of the tuning study.")
_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per method (tuning study).")
_BUDGET = flags.DEFINE_integer("budget", 20000, "Inner steps per run (tuning study).")
_NUM_EVALS = flags.DEFINE_integer("num_evals", 10, "Evaluation points per online run.")
_TUNE_NUM_STEPS = flags.DEFINE_integer("tune_num_steps", 10, "Window of the online methods.")
_TUNE_PARTICLES = flags.DEFINE_integer("tune_num_particles", 8, "Particles of online pes.")
_TUNE_SIGMA = flags.DEFINE_float("tune_sigma", 0.03, "Sigma of online pes.")
_META_OPTIMIZER = flags.DEFINE_enum("meta_optimizer", "adam", ["sgd", "adam"], "Online meta-optimiser.")
_META_LR = flags.DEFINE_float("meta_lr", 0.03, "Online meta learning rate.")
_SEARCH_WIDTH = flags.DEFINE_float("search_width", 3.0,
                                   "Black-box range: theta0 +- this (unconstrained units).")
_NUM_REPORTS = flags.DEFINE_integer("num_reports", 5, "Intermediate reports per black-box trial.")
# internal: set on spawned workers
_WORKER = flags.DEFINE_integer("worker_trials", None, "Internal: run this many trials and exit.")


def _ints(name, values):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{name} must be a list of integers, got {values}") from None


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
  except ValueError as e:
    raise app.UsageError(f"{flag}: {e}") from None


def build_context():
  """Validates flags and builds the study's context, before anything is compiled."""
  import unrolled  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  if _PROBLEM.value not in unrolled.names():
    raise app.UsageError(f"--problem={_PROBLEM.value!r} is unknown; choose one of "
                         f"{unrolled.names()}")
  options = parse_problem_options(_PROBLEM_OPTION.value)
  try:
    problem = unrolled.get(_PROBLEM.value, **options)
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--problem_option: {e}") from None
  for flag in (_N_TRIALS, _N_WORKERS, _NUM_SAMPLES, _BUDGET, _SEEDS, _NUM_EVALS):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  name = _STUDY_NAME.value or f"{_STUDY.value}-{_PROBLEM.value}"
  output_dir = _OUTPUT_DIR.value or os.path.join("runs", "studies", name)
  os.makedirs(output_dir, exist_ok=True)
  if _STUDY.value == "bias_variance":
    from studies import bias_variance  # pylint: disable=g-import-not-at-top
    particles = _ints("num_particles", _NUM_PARTICLES.value)
    sigma = tuple(float(s) for s in _SIGMA.value)
    if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
      raise app.UsageError(f"--sigma_range must be two positive numbers low,high, got {sigma}")
    num_steps = _ints("num_steps", _NUM_STEPS.value)
    if not any(problem.system.horizon % n == 0 for n in num_steps):
      raise app.UsageError(f"none of --num_steps {num_steps} divides the horizon "
                           f"{problem.system.horizon}")
    window = next(n for n in num_steps if problem.system.horizon % n == 0)
    for spec in _ESTIMATORS.value:  # building an estimator validates its options, no compute
      for n in particles:
        build_estimator("--estimators", spec, problem.system, num_steps=window,
                        num_particles=n, sigma=sigma[0])
    ctx = bias_variance.Context(
        _PROBLEM.value, options, tuple(_ESTIMATORS.value), num_steps, particles, sigma,
        _ints("num_chains", _NUM_CHAINS.value), _NUM_SAMPLES.value, _SEED.value, _EXACT.value,
        output_dir)
  else:
    from studies import tuning  # pylint: disable=g-import-not-at-top
    for m in _METHODS.value:
      if m in tuning.BLACK_BOX:
        continue
      if not m.startswith("online:"):
        raise app.UsageError(f"--methods: {m!r} is not online:<estimator> or one of "
                             f"{tuning.BLACK_BOX}")
      build_estimator("--methods", m.split(":", 1)[1], problem.system,
                      num_steps=_TUNE_NUM_STEPS.value, num_particles=_TUNE_PARTICLES.value,
                      sigma=_TUNE_SIGMA.value)
    ctx = tuning.Context(
        _PROBLEM.value, options, tuple(_METHODS.value), tuple(range(_SEEDS.value)), _BUDGET.value,
        _NUM_EVALS.value, _TUNE_NUM_STEPS.value, _TUNE_PARTICLES.value, _TUNE_SIGMA.value,
        _META_OPTIMIZER.value, _META_LR.value, _SEARCH_WIDTH.value, _NUM_REPORTS.value)
  return ctx, name, output_dir


def open_study(name, output_dir):
  import optuna  # pylint: disable=g-import-not-at-top
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  url = _STORAGE.value or storage_lib.default_storage_url(output_dir)
  try:
    storage = storage_lib.make_storage(url, heartbeat_interval=_HEARTBEAT.value,
                                       grace_period=_GRACE.value, max_retry=_MAX_RETRY.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  except ImportError as e:
    raise app.UsageError(f"--storage {url!r} needs a database driver ({e}); install the "
                         "'distributed' extra: pip install -e '.[distributed]'") from None
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


def run_trials(study, ctx, n):
  import optuna  # pylint: disable=g-import-not-at-top
  if _STUDY.value == "bias_variance":
    from studies import bias_variance as kind  # pylint: disable=g-import-not-at-top
  else:
    from studies import tuning as kind  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study.optimize(kind.objective(ctx), n_trials=n, catch=(FloatingPointError,))


def enqueue_grid(study, ctx):
  """Enqueues every (estimator, num_steps, num_particles, num_chains) combination once."""
  import itertools  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  import unrolled  # pylint: disable=g-import-not-at-top
  horizon = unrolled.get(ctx.problem_name, **ctx.problem_options).system.horizon
  sigma = math.sqrt(ctx.sigma[0] * ctx.sigma[1])
  steps = [n for n in ctx.num_steps if horizon % n == 0]
  for est in ctx.estimators:
    info = metaopt.estimator_info(est)
    for k, c in itertools.product([horizon] if info.whole_horizon else steps, ctx.num_chains):
      params = {"estimator": est, "num_chains": c}
      if not info.whole_horizon:
        params["num_steps"] = k
      if "sigma" in info.takes:
        params["sigma"] = sigma
      for n in ctx.num_particles if "num_particles" in info.takes else [None]:
        extra = {} if n is None else {"num_particles": n}
        study.enqueue_trial({**params, **extra}, skip_if_exists=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  ctx, name, output_dir = build_context()
  study, url = open_study(name, output_dir)
  if _WORKER.value is not None:
    run_trials(study, ctx, _WORKER.value)
    return
  if _GRID.value and _STUDY.value == "bias_variance":
    enqueue_grid(study, ctx)
  remaining = max(0, _N_TRIALS.value - finished(study))
  if _STUDY.value == "tuning":
    remaining = min(remaining, len(ctx.methods) * len(ctx.seeds))
  print(f"study {name!r} on {url}: {finished(study)} finished trials, running {remaining} more "
        f"with {_N_WORKERS.value} worker(s)", flush=True)
  if remaining:
    shares = [remaining // _N_WORKERS.value + (i < remaining % _N_WORKERS.value)
              for i in range(_N_WORKERS.value)]
    if _N_WORKERS.value == 1:
      run_trials(study, ctx, remaining)
    else:
      args = [a for a in sys.argv[1:] if not a.startswith("--n_workers")]
      procs = [subprocess.Popen([sys.executable, "-m", "launch.study", *args,
                                 f"--storage={url}", f"--study_name={name}",
                                 f"--output_dir={output_dir}", f"--worker_trials={share}"])
               for share in shares if share]
      codes = [p.wait() for p in procs]
      if any(codes):
        print(f"warning: worker exit codes {codes}", file=sys.stderr)
  if _REPORT.value:
    from studies import report  # pylint: disable=g-import-not-at-top
    text, figures = report.write_report(study, _STUDY.value, output_dir)
    print(text)
    print("outputs: " + ", ".join([os.path.join(output_dir, "trials.csv"), *figures,
                                   os.path.join(output_dir, "tensorboard")]))


if __name__ == "__main__":
  app.run(main)
