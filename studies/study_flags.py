"""The checks of ``launch.study``'s flags and the study context they build.

Every function takes the parsed flags as ``f``: ``absl.flags.FLAGS`` or any
object with the flags' names as attributes (this module defines no flags).
Every check runs before anything is written or computed; a bad value raises
``absl.app.UsageError`` with one line naming the flag.
"""

from __future__ import annotations

import os
import re

from absl import app

# Seeds feed jax.random.key and numpy's generators (the samplers): 32 bits.
MAX_SEED = 2**32
# Samples whose estimates are held at once (studies.bias_variance.estimates maps in batches of 64).
BATCH = 64


def _ints(name, values, *, low=1):
  """The list flag ``--name`` as integers >= ``low``."""
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
  """The list flag ``--name`` as finite numbers."""
  import math  # pylint: disable=g-import-not-at-top
  try:
    out = tuple(float(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{name} must be numbers, got {','.join(values)}") from None
  if not all(math.isfinite(v) for v in out):
    raise app.UsageError(f"--{name} must be finite numbers, got {','.join(values)}")
  return out


def _positive(name, value):
  """Refuses a ``--name`` that is not a positive finite number."""
  import math  # pylint: disable=g-import-not-at-top
  if not (math.isfinite(value) and value > 0):
    raise app.UsageError(f"--{name} must be a positive finite number, got {value}")


def parse_problem_options(items):
  """``key=value`` problem options as a dict; a bad one is a usage error of --problem_option."""
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
    metaopt.devices.check_memory(estimator, theta, num_chains=num_chains, what=flag,
                         working_factor=factor)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def storage_url(f, output_dir):
  """--storage, else $METAOPT_STORAGE (how workers get it), else the default in ``output_dir``."""
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  env = os.environ.get(storage_lib.ENV_VAR)
  if f.worker and env:  # the parent's URL wins over a --storage from a flagfile
    return env
  return f.storage or env or storage_lib.default_storage_url(output_dir)


def check_storage(url):
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


def check_bias_variance(f, problem):
  """Builds every estimator with every window, particle count and sigma it may get in a trial.

  Returns:
    (num_steps, num_particles, sigma range, num_chains) as tuples.
  """
  import metaopt  # pylint: disable=g-import-not-at-top
  system, horizon = problem.system, problem.system.horizon
  particles = _ints("num_particles", f.num_particles)
  sigma = _floats("sigma_range", f.sigma_range)
  if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
    raise app.UsageError(f"--sigma_range must be two positive numbers low,high, got "
                         f"{','.join(f.sigma_range)}")
  num_steps = _ints("num_steps", f.num_steps)
  chains = _ints("num_chains", f.num_chains)
  windows = [n for n in num_steps if horizon % n == 0]
  if not windows:
    raise app.UsageError(f"--num_steps: none of {num_steps} divides the horizon {horizon}")
  if not f.estimators:
    raise app.UsageError("--estimators is empty")
  for spec in f.estimators:
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
        window = metaopt.horizon.window_length(spec, system, n)
        if window < 1 or horizon % window:
          raise app.UsageError(f"--estimators: {spec!r} unrolls windows of {window} steps, "
                               f"which do not divide the horizon {horizon}")
        _check_memory("--num_chains", est, problem.theta, max(chains),
                      4.0 * min(BATCH, f.num_samples))
  # After the chains' own check: (M, H) float64 estimates and the exact gradients of every
  # chain are held at once.
  size = len(jax_flat(problem.theta))
  need = 8 * f.num_samples * size * (3 + max(chains))
  have = metaopt.devices.available_bytes()
  if have is not None and need > have:
    raise app.UsageError(f"--num_samples={f.num_samples} needs about {need / 2**30:.3g} GiB "
                         f"for the estimates; {have / 2**30:.3g} GiB is available: lower it")
  if f.exact == "rtrl":
    for n in windows:
      build_estimator("--exact", "rtrl", system, num_steps=n)
  return num_steps, particles, sigma, chains


def jax_flat(theta):
  """``theta``'s leaves as one flat vector."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.flatten_util  # pylint: disable=g-import-not-at-top,unused-import
  return jax.flatten_util.ravel_pytree(theta)[0]


def check_tuning(f, problem):
  """The tuning study's flags; builds every online method's estimator.

  Returns:
    (budgets, the grid baseline's problem options).
  """
  from studies import tuning  # pylint: disable=g-import-not-at-top
  for name in ("tune_num_steps", "tune_num_particles", "num_reports"):
    if getattr(f, name) < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}")
  for name in ("tune_sigma", "search_width"):
    _positive(name, getattr(f, name))
  for name in ("meta_lr", "max_grad_norm", "max_update", "single_meta_lr"):
    if getattr(f, name) is not None:
      _positive(name, getattr(f, name))
  for name in ("validate_runs", "significance", "trust_radius"):
    value = getattr(f, name)
    if value is not None and not (value >= 0 and value < float("inf")):
      raise app.UsageError(f"--{name} must be a finite number >= 0, got {value}")
  if not (f.rollback_factor == 0 or f.rollback_factor >= 1):  # NaN fails both
    raise app.UsageError(f"--rollback_factor must be 0 (never) or >= 1, got {f.rollback_factor}")
  for name in ("warmup_steps", "decay_steps"):
    if getattr(f, name) is not None and getattr(f, name) < 0:
      raise app.UsageError(f"--{name} must be >= 0, got {getattr(f, name)}")
  methods = f.methods
  if not methods:
    raise app.UsageError("--methods is empty")
  try:
    tuning.check_methods(methods)
  except ValueError as e:
    raise app.UsageError(f"--methods: {e}") from None
  if len(set(methods)) < len(methods):
    raise app.UsageError(f"--methods repeats a method: {','.join(methods)}")
  budgets = _ints("budgets", f.budgets)
  if list(budgets) != sorted(set(budgets)):
    raise app.UsageError(f"--budgets must increase, got {','.join(f.budgets)}")
  if "cmaes" in methods:
    try:
      import cmaes  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise app.UsageError("--methods=cmaes needs the cmaes package: pip install "
                           "'metaopt[cmaes]'") from None
  baseline = parse_problem_options(f.baseline_option)
  if "grid" in methods:
    import unrolled  # pylint: disable=g-import-not-at-top
    try:
      base_problem = unrolled.get(f.problem, **{**parse_problem_options(
          f.problem_option), **baseline})
    except (unrolled.ProblemError, ValueError, TypeError) as e:
      raise app.UsageError(f"--baseline_option: {e}") from None
    if not isinstance(base_problem.theta, dict) or f.baseline_key not in base_problem.theta:
      raise app.UsageError(f"--baseline_key={f.baseline_key!r} is not an entry of the "
                           "baseline problem's theta (the grid scales it)")
  for m in methods:
    if not m.startswith("online:"):
      continue
    build_estimator("--methods", m.split(":", 1)[1], problem.system,
                    num_steps=f.tune_num_steps, num_particles=f.tune_num_particles,
                    sigma=f.tune_sigma)
  return budgets, baseline


def _or_default(value, default):
  return default if value is None else value


def build_context(f):
  """Checks every flag and builds the study's context; writes nothing and compiles nothing.

  Returns:
    (context, study name, output folder); the folder is not created.

  Raises:
    app.UsageError: one line naming the flag at fault.
  """
  import unrolled  # pylint: disable=g-import-not-at-top
  from studies import paths  # pylint: disable=g-import-not-at-top
  for name in ("n_trials", "n_workers", "num_samples", "num_seeds", "num_evals",
               "heartbeat_interval"):
    if getattr(f, name) < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}")
  max_workers = max(8, 4 * (os.cpu_count() or 1))
  if f.n_workers > max_workers:
    raise app.UsageError(f"--n_workers={f.n_workers} is more than {max_workers} processes "
                         "for this machine; use several machines on PostgreSQL instead")
  if f.grace_period is not None and f.grace_period < 1:
    raise app.UsageError(f"--grace_period must be >= 1 second, got {f.grace_period}")
  if f.max_retry < 0:
    raise app.UsageError(f"--max_retry must be >= 0, got {f.max_retry}")
  if f.worker_trials is not None and f.worker_trials < 1:
    raise app.UsageError(f"--worker_trials must be >= 1, got {f.worker_trials}")
  if not 0 <= f.seed < MAX_SEED:
    raise app.UsageError(f"--seed must be in [0, 2**32), got {f.seed}")
  try:  # a registered name or an import path package.module:factory, before its options
    unrolled.options(f.problem)
  except unrolled.ProblemError as e:
    raise app.UsageError(f"--problem={e.name!r}{e.reason}") from None
  options = parse_problem_options(f.problem_option)
  try:
    problem = unrolled.get(f.problem, **options)
  except unrolled.ProblemError as e:
    raise app.UsageError(f"--problem={e.name!r}{e.reason}") from None
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--problem_option: {e}") from None
  if f.study_name == "":
    raise app.UsageError("--study_name is empty; leave it out for <study>-<problem>")
  # An import path's ':' (and anything else a folder name must not hold) becomes '_'.
  name = f.study_name or re.sub(r"[^A-Za-z0-9._+=-]", "_", f"{f.study}-{f.problem}")
  try:
    if f.output_dir:
      output_dir = f.output_dir
      if not name or "\x00" in name:
        raise ValueError(f"--study_name={name!r} is empty or has a NUL character")
    else:  # the name becomes a folder under runs/studies: it must stay one folder there
      paths.check_name(name, flag="--study_name")
      output_dir = os.path.join("runs", "studies", name)
    paths.check_writable_dir(output_dir, flag="--output_dir")
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if f.study == "bias_variance":
    from studies import bias_variance  # pylint: disable=g-import-not-at-top
    num_steps, particles, sigma, chains = check_bias_variance(f, problem)
    ctx = bias_variance.Context(
        f.problem, options, tuple(f.estimators), num_steps, particles, sigma, chains,
        f.num_samples, f.seed, f.exact, output_dir)
  else:
    import metaopt  # pylint: disable=g-import-not-at-top
    from studies import tuning  # pylint: disable=g-import-not-at-top
    budgets, baseline = check_tuning(f, problem)
    d = metaopt.tuning
    ctx = tuning.Context(
        f.problem, options, tuple(f.methods), tuple(range(f.num_seeds)), budgets,
        f.num_evals, f.tune_num_steps, f.tune_num_particles, f.tune_sigma,
        f.meta_optimizer, _or_default(f.meta_lr, d.DEFAULT_META_LR),
        f.search_width, f.num_reports,
        baseline, f.baseline_key, f.max_grad_norm,
        _or_default(f.max_update, d.DEFAULT_MAX_UPDATE),
        _or_default(f.warmup_steps, d.DEFAULT_WARMUP_STEPS),
        d.DEFAULT_DECAY_STEPS if f.decay_steps is None else f.decay_steps or None,
        f.rollback_factor or None, f.validate_runs,
        _or_default(f.significance, d.DEFAULT_SIGNIFICANCE),
        0.5, f.single_meta_lr,
        d.DEFAULT_TRUST_RADIUS if f.trust_radius is None else f.trust_radius or None)
  return ctx, name, output_dir
