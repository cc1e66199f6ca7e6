"""The benchmark's cost suites (``suite(config) -> {"rows": [...], ...}``) and their problems.

The suites of whole online runs are in :mod:`studies.benchmark_online`. A
ratio is (estimator seconds per inner step) / (plain seconds per inner step),
each a median over repeats timed interleaved (:mod:`metaopt.timing`). The
problem is ``unrolled.digits_mlp`` (SGD with momentum on scikit-learn's digits,
meta-loss = validation loss after each step) unless a suite says otherwise.
"""

from __future__ import annotations

import jax
import numpy as np

import metaopt
from metaopt import timing
import unrolled

PARAMS_SWEEP = ((64, 1), (128, 2), (256, 2), (512, 2), (700, 3))  # ~5k, 26k, 85k, 300k, 1M


def digits(*, width=128, depth=2, num_hyperparams=2, horizon=200):
  """The digits MLP with H hyperparameters: 1 lr; 2 lr + weight decay; else H schedule knots.

  Examples:
    >>> from studies import benchmark_suites
    >>> benchmark_suites.digits(width=16, depth=1, num_hyperparams=8).num_params
    1210
  """
  if num_hyperparams == 1:
    options = {}
  elif num_hyperparams == 2:
    options = {"weight_decay": 1e-4}
  else:
    options = {"schedule": "piecewise_linear", "num_knots": num_hyperparams}
  problem = unrolled.digits_mlp(width=width, depth=depth, horizon=horizon, **options)
  size = jax.flatten_util.ravel_pytree(problem.theta)[0].size
  assert size == num_hyperparams, (size, num_hyperparams)
  return problem


def label(spec, num_particles):
  """``name(8)`` for an estimator that takes particles (8 of them), else the spec itself.

  Examples:
    >>> import metaopt
    >>> from studies import benchmark_suites
    >>> benchmark_suites.label("uoro[rank=4]", 8)
    'uoro[rank=4]'
    >>> takers = [n for n in metaopt.ESTIMATORS if "num_particles" in metaopt.estimator_info(n).takes]
    >>> all(benchmark_suites.label(n, 8) == f"{n}(8)" for n in takers), len(takers)
    (True, 3)
  """
  takes = metaopt.estimator_info(spec).takes
  return f"{spec}({num_particles})" if "num_particles" in takes else spec


def make(spec, system, num_steps, num_particles):
  """(estimator, inner steps one of its unrolls advances).

  Examples:
    >>> import unrolled
    >>> from studies import benchmark_suites
    >>> system = unrolled.toy_regression(horizon=40).system
    >>> [benchmark_suites.make(n, system, 20, 8)[1] for n in ("tbptt", "full_bptt")]
    [20, 40]
  """
  return (metaopt.get_estimator(spec, system, num_steps=num_steps, num_particles=num_particles),
          metaopt.horizon.window_length(spec, system, num_steps))


HEADLINE_SIZES = ((128, 2), (700, 3))  # the digits MLP at 26k and 1M parameters


def floor(problem, num_steps):
  """``counter(est, window) -> {"flop_ratio", "bytes_ratio"}`` on ``problem``.

  The plain step is counted once, here.

  XLA's counts (``metaopt.timing.count_ratios``); call it before timing: counting clears JAX's
  caches.
  """
  plain = timing.plain_counts(problem.system, problem.theta, num_steps=num_steps)
  return lambda est, window: timing.count_ratios(problem.system, problem.theta, est,
                                                 num_steps=num_steps, window=window, plain=plain)


def with_floor(row, counts):
  """``row`` with the XLA ratios and the measured ratio over the FLOP ratio."""
  return {**row, **counts, "over_flops": row["ratio"] / counts["flop_ratio"]}


def headline(config):
  """Every estimator at 26k and 1M parameters, H=2: ratio, XLA FLOP and bytes ratios, compile s.

  Each estimator is timed interleaved with the plain step; its ratio is taken against the
  median of those plain steps at its size (``paired_ratio``: against its own).
  """
  rows, problems = [], []
  for width, depth in HEADLINE_SIZES:
    problem, plain_times = digits(width=width, depth=depth), []
    counter = floor(problem, config.num_steps)
    problems.append({"problem": problem.description, "num_params": problem.num_params})
    repeats = config.repeats if width <= 128 else max(3, config.repeats // 3)
    at = []
    for spec in config.estimators:
      est, window = make(spec, problem.system, config.num_steps, config.num_particles)
      counts = counter(est, window)  # before timing: it clears JAX's caches
      compile_s = timing.compile_seconds(est, problem.theta)
      plain_s, est_s = timing.seconds_per_step(problem.system, problem.theta, est, window=window,
                                               num_steps=config.num_steps, repeats=repeats)
      plain_times.append(plain_s)
      at.append(({"estimator": label(spec, config.num_particles), "num_params": problem.num_params,
                  "seconds_per_step": est_s, "paired_ratio": est_s / plain_s,
                  "compile_seconds": compile_s}, counts))
      print(f"  {problem.num_params} {at[-1][0]['estimator']}: {est_s / plain_s:.2f} "
            f"(FLOPs {counts['flop_ratio']:.2f}, bytes {counts['bytes_ratio']:.2f}; "
            f"compile {compile_s:.2f} s)", flush=True)
    # Against the size's median plain step, not each estimator's own interleaved one: a big
    # window's buffers slow the plain step run after it (full_bptt at 1M: 13.1 ms against 8.3).
    plain = float(np.median(plain_times))
    rows += [{"estimator": "plain step", "num_params": problem.num_params,
              "seconds_per_step": plain, "ratio": 1.0, "compile_seconds": None,
              "flop_ratio": 1.0, "bytes_ratio": 1.0, "over_flops": 1.0}]
    rows += [with_floor({**row, "ratio": row["seconds_per_step"] / plain}, counts)
             for row, counts in at]
  return {"problems": problems, "num_hyperparams": 2, "num_steps": config.num_steps,
          "rows": rows}


def breakdown(config):
  """Where the time goes on the headline problem: pieces of a step, against its primal."""
  problem = digits()
  seconds = timing.step_breakdown(problem.system, problem.theta, num_steps=config.num_steps,
                                  repeats=config.repeats)
  primal = next(iter(seconds.values()))
  rows = [{"piece": name, "seconds_per_step": s, "ratio": s / primal}
          for name, s in seconds.items()]
  for r in rows:
    print(f"  {r['piece']}: {r['ratio']:.2f}", flush=True)
  return {"problem": problem.description, "rows": rows}


def _sweep(config, points, build):
  rows = []
  for point in points:
    problem, reps = build(point)
    counter = floor(problem, config.num_steps)
    for spec in config.sweep_estimators:
      est, window = make(spec, problem.system, config.num_steps, config.num_particles)
      counts = counter(est, window)
      plain_s, est_s = timing.seconds_per_step(
          problem.system, problem.theta, est, window=window, num_steps=config.num_steps,
          repeats=max(3, config.repeats // reps))
      rows.append(with_floor({"point": point, "num_params": problem.num_params,
                              "estimator": label(spec, config.num_particles),
                              "plain_seconds_per_step": plain_s, "seconds_per_step": est_s,
                              "ratio": est_s / plain_s}, counts))
      print(f"  {point} {rows[-1]['estimator']}: {est_s / plain_s:.2f} "
            f"(FLOPs {counts['flop_ratio']:.2f})", flush=True)
  return rows


def params(config):
  """Ratio against the parameter count P (~5k to ~1M)."""
  build = lambda wd: (digits(width=wd[0], depth=wd[1]), 1 if wd[0] <= 128 else 3)
  rows = _sweep(config, PARAMS_SWEEP, build)
  for r in rows:
    r["point"] = f"{r['point'][0]}x{r['point'][1]}"
  return {"x": "num_params", "rows": rows}


def hyperparams(config):
  """Ratio against H = 1, 2, 8, 64 (constant lr; lr + wd; 8 or 64 schedule knots)."""
  return {"x": "num_hyperparams",
          "rows": _sweep(config, (1, 2, 8, 64), lambda h: (digits(num_hyperparams=h), 1))}


def particles(config):
  """The particles estimator on the 5k MLP (num_steps=10) against num_particles = 2 ... 256."""
  problem, name = digits(width=64, depth=1), config.particles_estimator
  rows, counter = [], floor(problem, 10)
  for n in (2, 8, 32, 128, 256):
    est = metaopt.get_estimator(name, problem.system, num_steps=10, num_particles=n, sigma=0.01)
    counts = counter(est, 10)
    plain_s, est_s = timing.seconds_per_step(problem.system, problem.theta, est, num_steps=10,
                                             repeats=max(3, config.repeats // (1 + n // 32)))
    rows.append(with_floor({"point": n, "num_params": problem.num_params, "estimator": name,
                            "plain_seconds_per_step": plain_s, "seconds_per_step": est_s,
                            "ratio": est_s / plain_s, "ratio_per_particle": est_s / plain_s / n},
                           counts))
    print(f"  {name}({n}): {est_s / plain_s:.2f} (FLOPs {counts['flop_ratio']:.2f})", flush=True)
  return {"x": "num_particles", "rows": rows}
