"""Online tuning against black-box search (Optuna TPE and random) at matched inner steps.

Each trial of the study is one (method, seed) run, laid out by a grid sampler so
that any number of workers share the grid. Every method gets the same budget of
inner steps (counting every particle's steps; evaluations are not counted):

- ``online:<estimator>``: :func:`metaopt.tuner` from the problem's initial theta.
- ``tpe`` / ``random``: an Optuna search (in memory) over the same theta, each
  trial training one horizon from scratch, reporting its validation loss along
  the way and pruned by ``MedianPruner``.

A run's curve is (inner steps spent, validation loss after training one fresh
horizon with the method's current theta on fixed evaluation keys); for
black-box search the current theta is the best finished trial's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optuna

import metaopt
import unrolled

BLACK_BOX = ("tpe", "random")


class Context(NamedTuple):
  problem_name: str
  problem_options: dict
  methods: tuple  # "online:rtrl", "online:pes", "tpe", "random", ...
  seeds: tuple
  budget: int  # inner steps per run
  num_evals: int
  num_steps: int
  num_particles: int
  sigma: float
  meta_optimizer: str
  meta_lr: float
  search_width: float  # black-box range: theta0 +- search_width (unconstrained units)
  num_reports: int  # intermediate reports per black-box trial


def make_problem(ctx):
  return unrolled.get(ctx.problem_name, **ctx.problem_options)


def evaluator(problem, seed):
  """theta -> validation loss after one fresh horizon on fixed keys (jit-compiled once)."""
  key = jax.random.key(10_000 + seed)

  @jax.jit
  def evaluate(theta):
    out = metaopt.evaluate_horizon(problem.system, theta, key, evaluate=problem.evaluate)
    return out.get("validation_loss", out["meta_loss_mean"])

  return lambda theta: float(evaluate(theta))


def run_online(ctx, problem, estimator, seed):
  est = metaopt.get_estimator(estimator, problem.system, num_steps=ctx.num_steps,
                              num_particles=ctx.num_particles, sigma=ctx.sigma)
  window = metaopt.window_length(estimator, problem.system, ctx.num_steps)
  per_outer = window * metaopt.copies_per_step(estimator, ctx.num_particles)
  outer_steps = max(1, ctx.budget // per_outer)
  meta = metaopt.META_OPTIMIZERS[ctx.meta_optimizer](ctx.meta_lr)
  t = metaopt.tuner(est, meta)
  state = t.init(jax.random.key(seed), problem.theta)
  run = jax.jit(t.run, static_argnums=1)
  evaluate = evaluator(problem, seed)
  marks = np.unique(np.linspace(0, outer_steps, ctx.num_evals + 1).astype(int))
  curve = [(0, evaluate(problem.theta))]
  for a, b in zip(marks[:-1], marks[1:]):
    state, _ = run(state, int(b - a))
    curve.append((int(b) * per_outer, evaluate(state.theta)))
  return curve, jax.flatten_util.ravel_pytree(state.theta)[0].tolist(), {
      "num_skipped": int(state.num_skipped)}


def run_black_box(ctx, problem, method, seed):
  theta0, unravel = jax.flatten_util.ravel_pytree(problem.theta)
  theta0 = np.asarray(theta0)
  horizon = problem.system.horizon
  chunk = max(1, horizon // ctx.num_reports)
  sampler = (optuna.samplers.TPESampler(seed=seed) if method == "tpe"
             else optuna.samplers.RandomSampler(seed=seed))
  pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
  search = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)

  @jax.jit
  def train(state, theta, keys):
    return jax.lax.scan(lambda s, k: problem.system.step(s, unravel(theta), k), state, keys)

  @jax.jit
  def start(theta, key):
    return problem.system.init(key, unravel(theta))

  @jax.jit
  def score(state, losses):
    if problem.evaluate is not None:
      return problem.evaluate(state).get("validation_loss", jnp.mean(losses))
    return jnp.mean(losses)

  evaluate_tree = evaluator(problem, seed)
  evaluate = lambda flat: evaluate_tree(unravel(jnp.asarray(flat)))
  spent, best_theta = 0, theta0
  curve = [(0, evaluate(theta0))]
  trial_index = 0
  while spent < ctx.budget:
    trial = search.ask()
    theta = np.array([trial.suggest_float(f"theta_{i}", v - ctx.search_width,
                                          v + ctx.search_width)
                      for i, v in enumerate(theta0)], np.float32)
    key = jax.random.fold_in(jax.random.key(seed), trial_index)
    trial_index += 1
    state = start(jnp.asarray(theta), key)
    all_keys = jax.random.split(key, horizon)
    value, pruned = None, False
    for r, offset in enumerate(range(0, horizon, chunk)):
      n = min(chunk, horizon - offset, ctx.budget - spent)
      if n <= 0:
        break
      state, losses = train(state, jnp.asarray(theta), all_keys[offset:offset + n])
      spent += n
      value = float(score(state, losses))
      if not np.isfinite(value):
        value = float("inf")
      if offset + n < horizon:
        trial.report(value, r)
        if trial.should_prune():
          pruned = True
          break
    finished = not pruned and offset + n >= horizon
    if pruned:
      search.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif finished:
      search.tell(trial, value)
    else:  # out of budget mid-trial
      search.tell(trial, state=optuna.trial.TrialState.FAIL)
    completed = [t for t in search.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
      best = min(completed, key=lambda t: t.value)
      best_theta = np.array([best.params[f"theta_{i}"] for i in range(theta0.size)], np.float32)
    curve.append((spent, evaluate(best_theta)))
  pruned_trials = sum(t.state == optuna.trial.TrialState.PRUNED for t in search.trials)
  return curve, best_theta.tolist(), {"pruned_trials": pruned_trials,
                                      "search_trials": len(search.trials)}


def objective(ctx):
  """The tuning study's objective: one (method, seed) run; value = its final validation loss."""
  problem = make_problem(ctx)

  def fn(trial):
    method = trial.suggest_categorical("method", list(ctx.methods))
    seed = trial.suggest_categorical("seed", list(ctx.seeds))
    if method.startswith("online:"):
      curve, theta, extra = run_online(ctx, problem, method.split(":", 1)[1], seed)
    elif method in BLACK_BOX:
      curve, theta, extra = run_black_box(ctx, problem, method, seed)
    else:
      raise ValueError(f"unknown method {method!r}; use online:<estimator>, tpe or random")
    trial.set_user_attr("curve", [[int(s), float(v)] for s, v in curve])
    trial.set_user_attr("theta", theta)
    trial.set_user_attr("inner_steps", int(curve[-1][0]))
    for k, v in extra.items():
      trial.set_user_attr(k, v)
    return float(curve[-1][1])

  return fn


def search_space(ctx):
  return {"method": list(ctx.methods), "seed": list(ctx.seeds)}
