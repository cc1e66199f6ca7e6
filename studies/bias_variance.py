"""Bias, variance and cost of hypergradient estimators, as a multi-objective Optuna study.

A trial picks an estimator and its settings, draws ``num_samples`` independent
estimates of the full-horizon hypergradient at the problem's theta (each the
average of ``num_chains`` chains), and compares each with the exact
hypergradient computed on the same initial state and the same minibatches
(paired), so that minibatch noise common to every method does not count as
the estimator's variance (the total variance is recorded too).

Recorded per trial (user attributes): bias^2 = |mean(g - exact)|^2 with its
standard error and a debiased version, the estimator's variance
E|d - mean d|^2 (d = g - exact) and per coordinate, the total variance of g,
MSE = bias^2 + variance, each also relative to |E exact|^2, wall seconds per
estimate after compilation, that cost in plain inner steps, and inner steps
per estimate. Objectives: minimise (bias^2, variance, cost seconds).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import metaopt
import unrolled

OBJECTIVES = ("bias2", "variance", "cost_seconds")
DIRECTIONS = ["minimize"] * 3


class Context(NamedTuple):
  """What every trial of one study shares."""
  problem_name: str
  problem_options: dict
  estimators: tuple
  num_steps: tuple
  num_particles: tuple
  sigma: tuple  # (low, high), log-uniform
  num_chains: tuple
  num_samples: int
  seed: int
  exact: str  # "full_bptt" or "rtrl"
  output_dir: str


def flat_theta(theta):
  return jax.flatten_util.ravel_pytree(theta)[0]


def sample_keys(seed, num_samples):
  return jax.random.split(jax.random.key(seed), num_samples)


def chain_key(sample_key, chain):
  """Chain c of an estimate uses the same keys in every trial, whatever num_chains is."""
  return jax.random.fold_in(sample_key, chain)


def estimates(problem, est, window, num_chains, keys, batch_size=64):
  """(M, H) estimates, each the mean of num_chains chains, mapped in batches (bounded memory)."""
  windows = problem.system.horizon // window

  def one(key):
    chains = jax.vmap(lambda c: flat_theta(metaopt.sum_window_grads(
        est, problem.theta, chain_key(key, c), num_windows=windows)))(jnp.arange(num_chains))
    return jnp.mean(chains, axis=0)

  return _sharded_map(one, keys, batch_size)


def _sharded_map(fn, keys, batch_size):
  """``fn`` over keys, vmapped in batches (bounded memory), each batch spread over the devices."""
  if keys.shape[0] == 0:
    raise ValueError("no sample keys: ask for at least one sample")
  data, impl = jax.random.key_data(keys), jax.random.key_impl(keys)
  batch = min(batch_size, data.shape[0])
  one_batch = lambda d: metaopt.devices.shard_leading(
      jax.vmap(lambda k: fn(jax.random.wrap_key_data(k, impl=impl)))(metaopt.devices.shard_leading(d)))
  num_full = data.shape[0] // batch
  main = jax.lax.map(one_batch, data[:num_full * batch].reshape((num_full, batch) + data.shape[1:]))
  main = main.reshape((num_full * batch,) + main.shape[2:])
  if data.shape[0] == num_full * batch:
    return main
  return jnp.concatenate([main, one_batch(data[num_full * batch:])])


def exact_grads(problem, exact, chain, keys, window):
  """(M, H): the exact hypergradient of chain ``chain`` of every sample, on the very step keys an
  estimator with windows of ``window`` steps sees (minibatches differ with the window length).

  ``exact`` names the exact estimator to use: ``full_bptt`` replays the keys with
  :func:`metaopt.exact_grad`; any other sums its window grads."""
  windows = problem.system.horizon // window
  if metaopt.estimator_info(exact).whole_horizon:
    grad = lambda k: metaopt.exact_grad(problem.system, problem.theta, k, num_steps=window,
                                        num_windows=windows)
  else:
    est = metaopt.get_estimator(exact, problem.system, num_steps=window)
    grad = lambda k: metaopt.sum_window_grads(est, problem.theta, k, num_windows=windows)
  one = lambda k: flat_theta(grad(chain_key(k, chain)))
  fn = jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=min(16, ks.shape[0])))
  return np.asarray(fn(keys))


def cached_exact(ctx: Context, problem, num_chains, window):
  """Mean over chains 0..num_chains-1 of the exact grads, each (chain, window) cached on disk once."""
  tag = hashlib.sha1(json.dumps([ctx.problem_name, ctx.problem_options, ctx.seed,
                                 ctx.num_samples, ctx.exact], sort_keys=True,
                                default=str).encode()).hexdigest()[:12]
  folder = os.path.join(ctx.output_dir, "exact_cache")
  os.makedirs(folder, exist_ok=True)
  keys = sample_keys(ctx.seed, ctx.num_samples)
  chains = []
  for c in range(num_chains):
    path = os.path.join(folder, f"{tag}-window{window}-chain{c}.npy")
    cached = _load_cached(path, (ctx.num_samples, len(flat_theta(problem.theta))))
    if cached is not None:
      chains.append(cached)
      continue
    grads = exact_grads(problem, ctx.exact, c, keys, window)
    buffer = io.BytesIO()
    np.save(buffer, grads)
    metaopt.files.write_atomic(path, buffer.getvalue())
    chains.append(grads)
  return np.mean(chains, axis=0)


def _load_cached(path, shape):
  """A cached exact-gradient array, or None if absent or unreadable (then it is recomputed).

  Loaded without pickle (a damaged or foreign file never runs code); a file of
  the wrong shape or with non-finite values counts as damaged. The recomputed
  array replaces it atomically.
  """
  if not os.path.exists(path):
    return None
  try:
    grads = np.load(path, allow_pickle=False)
    if grads.shape != shape or not np.all(np.isfinite(grads)):
      raise ValueError(f"shape {grads.shape} (expected {shape}) or non-finite values")
    return grads
  except (ValueError, EOFError, OSError) as e:
    print(f"warning: exact-gradient cache {path} is damaged ({str(e).splitlines()[0][:120]}); "
          "recomputing it", file=sys.stderr, flush=True)
    return None


_PLAIN_STEP_SECONDS = {}


# Timed draws per trial; the cost is their median.
TIMING_REPEATS = 5


def plain_step_seconds(problem, repeats=5):
  """Seconds of one plain inner step (:func:`metaopt.timing.plain_step_seconds`), once per problem."""
  key = (problem.description,)
  if key not in _PLAIN_STEP_SECONDS:
    _PLAIN_STEP_SECONDS[key] = metaopt.timing.plain_step_seconds(problem.system, problem.theta,
                                                                 repeats=repeats)
  return _PLAIN_STEP_SECONDS[key]


def measure(problem, estimator, *, num_steps, num_particles, sigma, num_chains, num_samples,
            seed, exact_mean_fn):
  """Draws the estimates and returns every recorded number (a dict of floats and lists)."""
  est = metaopt.get_estimator(estimator, problem.system, num_steps=num_steps,
                              num_particles=num_particles, sigma=sigma)
  # The spec's own options (e.g. rtrl[num_steps=5]) win over the trial's: count what runs.
  window = metaopt.horizon.window_length(estimator, problem.system, num_steps)
  keys = sample_keys(seed, num_samples)
  # Compile ahead of time, so the timed call is the computation alone.
  draw = jax.jit(lambda ks: estimates(problem, est, window, num_chains, ks)).lower(keys).compile()
  # One timed draw is at the mercy of the machine's other work: the cost is the median of
  # TIMING_REPEATS draws (the same keys, so the same work), their spread recorded with it.
  seconds = []
  for _ in range(TIMING_REPEATS):
    start = time.perf_counter()
    g = np.asarray(jax.block_until_ready(draw(keys)), np.float64)
    seconds.append(time.perf_counter() - start)
  exact = np.asarray(exact_mean_fn(num_chains, window), np.float64)
  out = summarise(g, exact, float(np.median(seconds)) / num_samples, plain_step_seconds(problem),
                  inner_steps_per_estimate(estimator, problem.system.horizon, num_chains,
                                           num_particles))
  out["cost_seconds_repeats"] = [t / num_samples for t in seconds]
  return out


def inner_steps_per_estimate(estimator, horizon, num_chains, num_particles):
  return horizon * num_chains * metaopt.horizon.copies_per_step(estimator, num_particles)


def summarise(g, exact, seconds_per_estimate, plain_seconds, inner_steps):
  """The recorded numbers from (M, H) estimates and their paired exact gradients."""
  m = g.shape[0]
  d = g - exact
  bias = d.mean(0)
  var_coord = d.var(0, ddof=1)
  bias2 = float(np.sum(bias**2))
  # Var(|mean d|^2) by the delta method: 4 sum_j bias_j^2 var_j / M (+ a second-order term).
  bias2_se = float(np.sqrt(4 * np.sum(bias**2 * var_coord) / m + 2 * np.sum(var_coord**2) / m**2))
  variance = float(np.sum(var_coord))
  sq_dev = np.sum((d - bias) ** 2, axis=1)
  variance_se = float(sq_dev.std(ddof=1) / np.sqrt(m))
  total_variance = float(np.sum(g.var(0, ddof=1)))
  scale = float(np.sum(exact.mean(0) ** 2))
  out = {
      "bias2": bias2, "bias2_se": bias2_se, "bias2_debiased": bias2 - variance / m,
      "variance": variance, "variance_se": variance_se,
      "variance_per_coordinate": var_coord.tolist(),
      "variance_x_cost": variance * seconds_per_estimate / plain_seconds,
      "total_variance": total_variance, "mse": bias2 + variance,
      "exact_norm2": scale, "relative_bias2": bias2 / scale, "relative_variance": variance / scale,
      "relative_mse": (bias2 + variance) / scale,
      "cost_seconds": seconds_per_estimate,
      "cost_plain_steps": seconds_per_estimate / plain_seconds,
      "inner_steps": inner_steps, "num_samples": m,
      "mean_estimate": g.mean(0).tolist(), "exact_mean": exact.mean(0).tolist(),
  }
  return out


def make_problem(ctx: Context):
  return unrolled.get(ctx.problem_name, **ctx.problem_options)


def objective(ctx: Context):
  """The Optuna objective of a bias_variance study."""
  problem = make_problem(ctx)
  horizon = problem.system.horizon
  num_steps_choices = [n for n in ctx.num_steps if horizon % n == 0]
  if not num_steps_choices:
    raise ValueError(f"none of num_steps {ctx.num_steps} divides the horizon {horizon}")

  def fn(trial):
    estimator = trial.suggest_categorical("estimator", list(ctx.estimators))
    info = metaopt.estimator_info(estimator)
    num_steps = (horizon if info.whole_horizon
                 else trial.suggest_categorical("num_steps", num_steps_choices))
    num_particles, sigma = 2, 0.01
    if "num_particles" in info.takes:
      num_particles = trial.suggest_categorical("num_particles", list(ctx.num_particles))
    if "sigma" in info.takes:
      sigma = trial.suggest_float("sigma", ctx.sigma[0], ctx.sigma[1], log=True)
    num_chains = trial.suggest_categorical("num_chains", list(ctx.num_chains))
    numbers = measure(problem, estimator, num_steps=num_steps, num_particles=num_particles,
                      sigma=sigma, num_chains=num_chains, num_samples=ctx.num_samples,
                      seed=ctx.seed,
                      exact_mean_fn=lambda c, w: cached_exact(ctx, problem, c, w))
    numbers["settings"] = {"estimator": estimator,
                           "num_steps": metaopt.horizon.window_length(estimator, problem.system, num_steps),
                           "num_particles": num_particles, "sigma": sigma,
                           "num_chains": num_chains}
    for name, value in numbers.items():
      trial.set_user_attr(name, value)
    return tuple(numbers[k] for k in OBJECTIVES)

  return fn
