"""The learned-optimizer suite: meta-training's cost per outer step, against learned_optimization.

The setting of learned_optimization's own measurements (README, "Learned
optimizers"): 8 tasks of the quadratic family (``FixedDimQuadraticFamily``),
T = 100, K = 10, outer Adam, one outer step per call; with PES (2 particles,
an antithetic pair, per task) or truncated BPTT; the optimizer learnable SGD
(theta = its log learning rate) or the per-parameter MLP (lopt's defaults:
19 inputs, 2 x 32 hidden, 1,762 weights). Each row is timed through the
code ``launch.meta_train`` runs (``metaopt.tuner`` over
``unrolled.families.family_system``): one outer step per jitted call from a
Python loop, and many inside one scanned call; plus the first call's time
(compilation included). A second part measures what PES costs per particle
against a plain training step driven by the MLP optimizer on a 4,906-parameter
MNIST-1D MLP.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax

import metaopt
from metaopt import learned_optimizers as lo
from studies import meta_training
from unrolled import families

DIMS = (10, 1_000, 100_000)
NUM_TASKS, HORIZON, NUM_STEPS = 8, 100, 10
OPTIMIZERS = {"learnable_sgd": lambda: lo.learnable_sgd(learning_rate=1e-3),
              "mlp_lopt": lo.mlp_lopt}


def _tuner(dim, optimizer, estimator):
  lopt = OPTIMIZERS[optimizer]()
  system = families.family_system(families.quadratic(dim=dim), lopt, horizon=HORIZON)
  spec = meta_training.estimator_spec(estimator, NUM_STEPS)  # as launch.meta_train runs it
  est = metaopt.get_estimator(spec, system, num_steps=NUM_STEPS, num_particles=2,
                              sigma=0.01, spread_copies=False)
  t = metaopt.tuner(est, optax.adam(1e-3), num_chains=NUM_TASKS)
  return t, lopt.init(jax.random.key(0))


def outer_step_row(dim: int, optimizer: str, estimator: str, *, repeats: int) -> dict:
  """Seconds per outer step: first call, one step per call, and per step inside a scanned call."""
  t, theta = _tuner(dim, optimizer, estimator)
  state = jax.jit(t.init)(jax.random.key(1), theta)
  jax.block_until_ready(state)
  update = jax.jit(t.update)
  start = time.perf_counter()
  state, _ = jax.block_until_ready(update(state))
  first = time.perf_counter() - start
  big = dim >= 100_000
  repeats = min(repeats, 3) if big else max(repeats, 30)
  per_call = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(update(state))
    per_call.append(time.perf_counter() - start)
  n = 2 if big else 10 if dim >= 1000 else 100
  run = jax.jit(t.run, static_argnums=1)
  state, _ = jax.block_until_ready(run(state, n))
  scanned = []
  for _ in range(max(1, repeats // 3) if not big else 1):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(run(state, n))
    scanned.append((time.perf_counter() - start) / n)
  return {"dim": dim, "optimizer": optimizer, "estimator": estimator,
          "num_weights": lo.num_weights(theta), "first_call_seconds": first,
          "seconds_per_outer_step": float(np.median(per_call)),
          "seconds_per_outer_step_scanned": float(np.median(scanned)),
          "finite": bool(np.isfinite(np.asarray(state.grad_mean)).all())}


def per_particle(*, repeats: int, num_particles: int = 8, num_steps: int = 10) -> dict:
  """PES's seconds per inner step per particle over a plain step driven by the MLP optimizer."""
  lopt = lo.mlp_lopt()
  family = families.mnist1d_mlp(widths=(96,))
  system = families.family_system(family, lopt, horizon=100)
  theta = lopt.init(jax.random.key(0))
  est = metaopt.pes(system, num_steps=num_steps, num_particles=num_particles, sigma=0.01)
  plain, pes = metaopt.timing.seconds_per_step(system, theta, est, num_steps=num_steps,
                                               repeats=repeats)
  params = jax.eval_shape(family.init_params, family.sample(jax.random.key(0)),
                          jax.random.key(1))
  return {"num_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
          "num_particles": num_particles, "num_steps": num_steps,
          "plain_seconds_per_step": plain, "pes_seconds_per_step": pes,
          "ratio_per_particle": pes / num_particles / plain}


def learned_optimizers(config) -> dict:
  """The suite: every (optimizer, estimator, dim) row, then the per-particle ratio."""
  rows = []
  for optimizer in OPTIMIZERS:
    for estimator in ("pes", "tbptt"):
      for dim in DIMS:
        rows.append(outer_step_row(dim, optimizer, estimator, repeats=config.repeats))
        print(f"  {optimizer} {estimator} {dim}: "
              f"{1e3 * rows[-1]['seconds_per_outer_step']:.3f} ms per outer step", flush=True)
  return {"rows": rows, "per_particle": per_particle(repeats=config.repeats),
          "setting": f"{NUM_TASKS} tasks, T={HORIZON}, K={NUM_STEPS}, outer Adam"}
