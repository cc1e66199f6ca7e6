"""Online tuning against black-box search and the practitioner's grid, at matched inner steps.

Each trial of the study is one (method, seed) run, laid out by a grid sampler so
that any number of workers share the grid. Budgets are counted in training runs
of ``horizon`` inner steps, every particle's steps included (evaluations are not
counted). One trial runs its method to the largest budget and reads off the
smaller ones; what each method's "final model" is at a budget of ``b`` runs:

- ``online:<estimator>`` (restarts, :func:`metaopt.tuner` from the problem's
  initial theta, the inner training restarting every horizon): theta after
  ``(b - 1)`` runs' worth of tuning, then ONE fresh training run with it (the
  ``b``-th run). The same trial also gives the **single run** mode: the first
  horizon of the tuning run is one training run during which theta is tuned
  online (as OHO does); its own final model (chain 0, particle 0) costs
  ``copies`` runs (1 for rtrl / uoro, the particles for pes / nres), and a fresh
  retrain with its final theta one run more.
- ``tpe`` / ``random`` / ``cmaes``: an Optuna search (in memory) over theta0 +-
  ``search_width``, each trial one training run, pruned by ``MedianPruner``; the
  final model is the best finished trial's own (by validation loss).
- ``grid``: the practitioner's baseline: ``b`` learning rates log-spaced over
  lr0 x exp(+-search_width) (``b = 1``: lr0), the problem built with
  ``baseline_options`` (e.g. a cosine schedule) and every other hyperparameter at
  its initial value; the final model is the best run's own (by validation loss).

Every final model is scored on the problem's held-out TEST split (``test_loss``,
``test_accuracy`` from ``problem.evaluate``; problems without one report their
validation or meta-loss there).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.flatten_util  # pylint: disable=unused-import
import jax.numpy as jnp
import numpy as np
import optuna

import metaopt
import unrolled

BLACK_BOX = ("tpe", "random", "cmaes")
BASELINES = ("grid",)
METRICS = ("validation_loss", "test_loss", "test_accuracy")
# A tuned theta whose retrained validation loss exceeds this multiple of the untuned one's (or
# is not finite) at any evaluation point, or any non-finite outer step, counts as a divergence.
# 1.5: on MNIST-1D a dead network (chance, 2.30) is 1.6 x the untuned 1.45.
DIVERGENCE_FACTOR = 1.5
# The fixed keys of every evaluation (and of the online tuner's validation runs): seed + this.
EVAL_SEED = 10_000


class Context(NamedTuple):
  problem_name: str
  problem_options: dict
  methods: tuple  # "online:rtrl", "online:pes", "tpe", "random", "cmaes", "grid"
  seeds: tuple
  budgets: tuple  # training runs (of `horizon` inner steps), increasing
  num_evals: int  # extra evaluation points along an online run's curve
  num_steps: int
  num_particles: int
  sigma: float
  meta_optimizer: str
  meta_lr: float
  search_width: float  # black-box range: theta0 +- search_width (unconstrained units)
  num_reports: int  # intermediate reports per black-box trial
  baseline_options: dict = {}  # problem options of the grid baseline (e.g. schedule=cosine)
  baseline_key: str = "learning_rate"  # theta entry (log units) the grid shifts
  max_grad_norm: float | None = None  # the online tuner's guards (metaopt.meta_optimizer)
  max_update: float | None = metaopt.tuning.DEFAULT_MAX_UPDATE
  warmup_steps: int = metaopt.tuning.DEFAULT_WARMUP_STEPS
  decay_steps: int | None = metaopt.tuning.DEFAULT_DECAY_STEPS
  rollback_factor: float | None = 1.5  # the horizon rollback, used without validation only
  validate_runs: float = 1.0  # runs of tuning between validations of theta (0: none)
  significance: float = metaopt.tuning.DEFAULT_SIGNIFICANCE  # metaopt.Validation's paired test
  shrink: float = 0.5  # metaopt.Validation's step-size factor after a rejection
  single_meta_lr: float | None = None  # the single run's own meta rate (None: meta_lr)
  trust_radius: float | None = metaopt.tuning.DEFAULT_TRUST_RADIUS  # metaopt.Validation's radius


def make_problem(ctx, **extra):
  return unrolled.get(ctx.problem_name, **{**ctx.problem_options, **extra})


def check_methods(methods):
  """Raises ValueError naming a method that is not online:<estimator>, black-box or a baseline."""
  for m in methods:
    if m not in BLACK_BOX + BASELINES and not m.startswith("online:"):
      raise ValueError(f"{m!r} is not online:<estimator> or one of {BLACK_BOX + BASELINES}")


def scores(problem, final, losses):
  """The METRICS of a trained inner state (validation / test fall back to the meta-loss)."""
  out = dict(problem.evaluate(final)) if problem.evaluate is not None else {}
  meta = jnp.mean(losses)
  validation = out.get("validation_loss", meta)
  return {"validation_loss": validation, "test_loss": out.get("test_loss", validation),
          "test_accuracy": out.get("test_accuracy", jnp.nan)}


def _floats(tree):
  return {k: float(v) for k, v in tree.items()}


def evaluator(problem, seed):
  """theta -> METRICS after one fresh training run on fixed keys (jit-compiled once)."""
  key = jax.random.key(EVAL_SEED + seed)
  keys = jax.random.split(key, problem.system.horizon)

  @jax.jit
  def evaluate(theta):
    final, losses = metaopt.full_unroll(problem.system, theta, key, keys)
    return scores(problem, final, losses)

  return lambda theta: _floats(evaluate(theta))


def diverged(untuned_loss, losses, num_skipped):
  """Whether an online run diverged: a non-finite outer step, or a retrained validation loss
  above DIVERGENCE_FACTOR x the untuned one (or not finite) at any evaluation point."""
  limit = DIVERGENCE_FACTOR * untuned_loss
  return bool(num_skipped > 0 or any(not math.isfinite(v) or v > limit for v in losses))


def validation_score(problem):
  """What an online tuner validates theta by: the final model's per-example validation losses
  (the paired test of metaopt.Validation) where the problem has them, else its validation loss."""
  if problem.validation_losses is not None:
    return lambda final, losses: problem.validation_losses(final)
  return lambda final, losses: scores(problem, final, losses)["validation_loss"]


def budget_steps(ctx, horizon, per_outer, every, budget):
  """Outer steps an online run may take within ``budget`` runs: with validation, the last
  validation point whose tuning and validation runs (the initial theta's first) fit."""
  if every is None:  # the b-th run retrains the theta of (b - 1) runs of tuning
    return (budget - 1) * horizon // per_outer
  j = max(0, (budget - 1) * horizon // (every * per_outer + horizon))
  return j * every


def spent_steps(horizon, per_outer, every, m):
  """Inner steps an online run has spent after ``m`` outer steps, validation runs included."""
  if every is None:
    return m * per_outer + horizon
  return m * per_outer + (1 + m // every) * horizon


def make_tuner(ctx, problem, estimator, seed):
  """The online tuner of the study: the estimator, metaopt's meta-optimiser and the drift guard
  (validation of theta every ``validate_runs`` runs of tuning, on the evaluator's keys).

  Returns (tuner, outer steps between validations or None, inner steps per outer step).
  """
  est = metaopt.get_estimator(estimator, problem.system, num_steps=ctx.num_steps,
                              num_particles=ctx.num_particles, sigma=ctx.sigma)
  horizon = problem.system.horizon
  window = metaopt.horizon.window_length(estimator, problem.system, ctx.num_steps)
  per_outer = window * metaopt.horizon.copies_per_step(estimator, ctx.num_particles)
  opt = metaopt.meta_optimizer(
      ctx.meta_optimizer, ctx.meta_lr, max_grad_norm=ctx.max_grad_norm,
      max_update=ctx.max_update, warmup_steps=ctx.warmup_steps, decay_steps=ctx.decay_steps)
  every = None
  if ctx.validate_runs:
    every = max(1, round(ctx.validate_runs * horizon / per_outer))
    check = metaopt.validation(problem.system, every=every, seed=EVAL_SEED + seed,
                               score=validation_score(problem), significance=ctx.significance,
                               shrink=ctx.shrink, radius=ctx.trust_radius)
    return metaopt.tuner(est, opt, validation=check), every, per_outer
  t = metaopt.tuner(est, opt,
                    horizon_windows=None if ctx.rollback_factor is None else horizon // window,
                    rollback_factor=ctx.rollback_factor or 1.5)
  return t, every, per_outer


def run_single(ctx, problem, estimator, seed):
  """The single-run mode: theta tuned online during ONE training run (no validation, the run's
  own meta rate), its own final model and a retrain with its final theta."""
  meta_lr = ctx.single_meta_lr or ctx.meta_lr
  single_ctx = ctx._replace(meta_lr=meta_lr, validate_runs=0, rollback_factor=None)
  t, _, per_outer = make_tuner(single_ctx, problem, estimator, seed)
  window = metaopt.horizon.window_length(estimator, problem.system, ctx.num_steps)
  copies = per_outer // window
  state = jax.jit(t.init)(jax.random.key(seed), problem.theta)
  state, infos = jax.jit(t.run, static_argnums=1)(state, problem.system.horizon // window)
  template = jax.eval_shape(problem.system.init, jax.random.key(0), problem.theta)
  # The run's own losses per inner step (window sums / window): a problem scored by its
  # meta-loss (no validation split) scores the run's own model by them.
  own = jax.jit(lambda s, losses: scores(problem, metaopt.tuning.one_inner_state(s.inner, template),
                                         losses))(state.estimator_state, infos["loss"] / window)
  return ({**_floats(own), "runs": copies, "meta_lr": meta_lr},
          {**evaluator(problem, seed)(state.theta), "runs": copies + 1, "meta_lr": meta_lr},
          jax.flatten_util.ravel_pytree(state.theta)[0].tolist())


def run_online(ctx, problem, estimator, seed):
  """Restarts mode of one online tuning run, with the single-run mode beside it.

  The tuner validates theta (the initial theta first, then every
  ``validate_runs`` runs of tuning) by one fresh training run on the evaluator's
  keys, so the best validated theta's model is a model the method trained: at a
  budget of ``b`` runs (tuning and validation runs counted) the method reports
  it, as black-box search reports its best trial. Without validation
  (``validate_runs=0``), theta after ``b - 1`` runs of tuning, retrained.

  Returns:
    (curve, theta, extra): ``curve`` rows (inner steps spent, validation loss,
    test loss, test accuracy) of the reported (best validated) model as the run
    goes; ``extra`` holds ``at_budget`` ({runs: METRICS}), ``current_curve``
    (the same rows for the tuner's current theta retrained at ``num_evals``
    points: a diagnostic, not counted), ``single_own`` and ``single_retrain``
    (each METRICS plus ``runs``), ``num_skipped``, ``num_rollbacks`` and
    ``diverged``.
  """
  t, every, per_outer = make_tuner(ctx, problem, estimator, seed)
  horizon = problem.system.horizon
  state = jax.jit(t.init)(jax.random.key(seed), problem.theta)
  run = jax.jit(t.run, static_argnums=1)
  evaluate = evaluator(problem, seed)
  last = budget_steps(ctx, horizon, per_outer, every, max(ctx.budgets))
  at_budget_step = {b: budget_steps(ctx, horizon, per_outer, every, b) for b in ctx.budgets}
  checks = set(range(every, last + 1, every)) if every else set(at_budget_step.values())
  current_marks = set(np.linspace(0, last, ctx.num_evals + 1).astype(int).tolist())
  current_marks |= set(at_budget_step.values())  # the diagnostic at every budget too
  marks = sorted({0, last} | checks | current_marks)
  untuned = evaluate(problem.theta)
  flat = lambda th: np.asarray(jax.flatten_util.ravel_pytree(th)[0])
  models = {flat(problem.theta).tobytes(): untuned}  # evaluated thetas (same keys: same model)

  def model(theta):
    k = flat(theta).tobytes()
    if k not in models:
      models[k] = evaluate(theta)
    return models[k]

  reported = {0: untuned}
  current = {0: untuned}
  done = 0
  for m in marks[1:]:
    state, _ = run(state, m - done)
    done = m
    if m in checks:
      reported[m] = model(state.best_theta if every else state.theta)
    if m in current_marks:
      current[m] = model(state.theta)
  row = lambda m, out: (spent_steps(horizon, per_outer, every, m), *(out[k] for k in METRICS))
  curve = [row(m, out) for m, out in sorted(reported.items())]
  extra = {"current_curve": [row(m, out) for m, out in sorted(current.items())],
           "at_budget": {str(b): reported[at_budget_step[b]] for b in ctx.budgets},
           "validate_every": every, "num_validations": int(state.num_validations),
           "num_skipped": int(state.num_skipped), "num_rollbacks": int(state.num_rollbacks),
           "step_scale": float(state.step_scale)}
  extra["diverged"] = diverged(untuned["validation_loss"],
                              [p["validation_loss"] for p in current.values()],
                              int(state.num_skipped))
  own, retrain, single_theta = run_single(ctx, problem, estimator, seed)
  extra.update(single_own=own, single_retrain=retrain, single_theta=single_theta,
               current_theta=flat(state.theta).tolist())
  theta = state.best_theta if every else state.theta
  return curve, flat(theta).tolist(), extra


def sampler(method, seed):
  """The black-box method's Optuna sampler. CMA-ES's search distribution starts at the centre of
  the box, theta0 (Optuna's default mean; its x0 argument is deprecated since Optuna 4.9)."""
  if method == "tpe":
    return optuna.samplers.TPESampler(seed=seed)
  if method == "cmaes":  # needs the cmaes package (the [cmaes] extra)
    return optuna.samplers.CmaEsSampler(seed=seed)
  return optuna.samplers.RandomSampler(seed=seed)


def _trainer(problem, unravel):
  @jax.jit
  def train(state, theta, keys):
    return jax.lax.scan(lambda s, k: problem.system.step(s, unravel(theta), k), state, keys)

  @jax.jit
  def start(theta, key):
    return problem.system.init(key, unravel(theta))

  @jax.jit
  def score(state, losses):
    return scores(problem, state, losses)

  return train, start, score


def run_black_box(ctx, problem, method, seed):
  """An Optuna search of theta at the largest budget; the best finished trial's model per budget."""
  theta0, unravel = jax.flatten_util.ravel_pytree(problem.theta)
  theta0 = np.asarray(theta0)
  horizon = problem.system.horizon
  budget = max(ctx.budgets) * horizon
  chunk = max(1, horizon // ctx.num_reports)
  pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
  search = optuna.create_study(direction="minimize", sampler=sampler(method, seed),
                               pruner=pruner)
  # Anyone tuning tries the defaults first: the first trial is theta0 (Optuna's enqueue_trial).
  search.enqueue_trial({f"theta_{i}": float(v) for i, v in enumerate(theta0)})
  train, start, score = _trainer(problem, unravel)
  spent, best, best_theta = 0, None, theta0
  finished = []  # (spent when it finished, METRICS)
  curve = []
  while spent < budget:
    trial = search.ask()
    theta = np.array([trial.suggest_float(f"theta_{i}", v - ctx.search_width,
                                          v + ctx.search_width)
                      for i, v in enumerate(theta0)], np.float32)
    # Every method's models train on the same keys (the evaluator's): the first trial is
    # theta0's very run, and trials differ by theta alone.
    key = jax.random.key(EVAL_SEED + seed)
    state = start(jnp.asarray(theta), key)
    all_keys = jax.random.split(key, horizon)
    value, pruned, out, run_losses = None, False, None, []
    for r, offset in enumerate(range(0, horizon, chunk)):
      n = min(chunk, horizon - offset, budget - spent)
      if n <= 0:
        break
      state, losses = train(state, jnp.asarray(theta), all_keys[offset:offset + n])
      spent += n
      # The losses of the whole run so far: a problem scored by its meta-loss (no validation
      # split) is scored as the evaluator scores every other method's runs.
      run_losses.append(losses)
      out = _floats(score(state, jnp.concatenate(run_losses)))
      value = out["validation_loss"] if math.isfinite(out["validation_loss"]) else float("inf")
      if offset + n < horizon:
        trial.report(value, r)
        if trial.should_prune():
          pruned = True
          break
    complete = not pruned and offset + n >= horizon
    if pruned:
      search.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif complete:
      search.tell(trial, value)
      finished.append((spent, out))
      if best is None or value < best["validation_loss"]:
        best, best_theta = out, theta
    else:  # out of budget mid-trial
      search.tell(trial, state=optuna.trial.TrialState.FAIL)
    if best is not None:
      curve.append((spent, *(best[k] for k in METRICS)))
  at_budget = {}
  for b in ctx.budgets:
    done = [o for s, o in finished if s <= b * horizon]
    at_budget[str(b)] = min(done, key=lambda o: o["validation_loss"]) if done else None
  pruned_trials = sum(t.state == optuna.trial.TrialState.PRUNED for t in search.trials)
  return curve, best_theta.tolist(), {"pruned_trials": pruned_trials, "at_budget": at_budget,
                                      "search_trials": len(search.trials)}


def run_grid(ctx, seed):
  """The practitioner's baseline: for each budget b, b log-spaced learning rates, best by validation."""
  problem = make_problem(ctx, **ctx.baseline_options)
  if not isinstance(problem.theta, dict) or ctx.baseline_key not in problem.theta:
    raise ValueError(f"the grid baseline shifts theta[{ctx.baseline_key!r}]; this problem's "
                     f"theta has {sorted(problem.theta) if isinstance(problem.theta, dict) else 'no keys'}")
  horizon = problem.system.horizon
  evaluate_shifted = jax.jit(lambda shift, key: scores(problem, *metaopt.full_unroll(
      problem.system, {**problem.theta, ctx.baseline_key: problem.theta[ctx.baseline_key] + shift},
      key, jax.random.split(key, horizon))))
  at_budget, curve, spent = {}, [], 0
  for b in ctx.budgets:
    shifts = np.linspace(-ctx.search_width, ctx.search_width, b) if b > 1 else np.zeros(1)
    runs = []
    for shift in shifts:
      key = jax.random.key(EVAL_SEED + seed)  # the keys every method's models train on
      runs.append(dict(_floats(evaluate_shifted(jnp.float32(shift), key)),
                       learning_rate_factor=float(np.exp(shift))))
    spent += b * horizon
    best = min(runs, key=lambda o: o["validation_loss"] if math.isfinite(o["validation_loss"])
               else float("inf"))
    at_budget[str(b)] = best
    curve.append((b * horizon, *(best[k] for k in METRICS)))
  return curve, [], {"at_budget": at_budget, "inner_steps_all_budgets": spent}


def objective(ctx):
  """The tuning study's objective: one (method, seed) run; value = its validation loss at the
  largest budget."""
  problem = make_problem(ctx)

  def fn(trial):
    method = trial.suggest_categorical("method", list(ctx.methods))
    seed = trial.suggest_categorical("seed", list(ctx.seeds))
    check_methods([method])
    if method.startswith("online:"):
      curve, theta, extra = run_online(ctx, problem, method.split(":", 1)[1], seed)
    elif method in BLACK_BOX:
      curve, theta, extra = run_black_box(ctx, problem, method, seed)
    else:
      curve, theta, extra = run_grid(ctx, seed)
    trial.set_user_attr("curve", [[int(c[0]), *map(float, c[1:])] for c in curve])
    trial.set_user_attr("theta", theta)
    trial.set_user_attr("inner_steps", int(curve[-1][0]))
    trial.set_user_attr("run_steps", problem.system.horizon)
    for k, v in extra.items():
      trial.set_user_attr(k, v)
    final = extra["at_budget"][str(max(ctx.budgets))]
    value = float(final["validation_loss"]) if final else float("inf")
    # A diverged run stays a finished trial (Optuna fails NaN values): counted, not lost.
    return value if math.isfinite(value) else float("inf")

  return fn


def search_space(ctx):
  return {"method": list(ctx.methods), "seed": list(ctx.seeds)}
