"""What the evolution-strategies estimators share: options, antithetic draws, the particles' runs."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.devices import sharding
from metaopt._src.core import window


def check_options(num_particles, sigma) -> tuple[int, float]:
  """Validated ``(num_particles, sigma)``: an even particle count (antithetic pairs), sigma > 0."""
  return base.check_num_particles(num_particles), base.check_sigma(sigma)


def antithetic(key: jax.Array, theta_vec: jax.Array, num_particles: int,
               sigma: float) -> jax.Array:
  """(num_particles, H) perturbations: N(0, sigma^2 I) draws, then their negatives."""
  half = sigma * jax.random.normal(key, (num_particles // 2, theta_vec.size), theta_vec.dtype)
  return jnp.concatenate([half, -half])


def window_draw(theta: base.PyTree, keys: window.WindowKeys, num_particles: int, sigma: float
                ) -> tuple[jax.Array, Callable, jax.Array]:
  """``(theta_vec, unravel, eps)``: flat theta and this window's antithetic perturbations.

  Drawn from ``keys.noise`` alone, so a horizon's ``start`` and the window
  that follows it draw the same ``eps``.
  """
  theta_vec, unravel = base.ravel(theta)
  return theta_vec, unravel, antithetic(keys.noise, theta_vec, num_particles, sigma)


def antithetic_estimate(directions: jax.Array, losses: jax.Array, sigma: float) -> jax.Array:
  """(1 / (N sigma^2)) sum_i direction_i L_i, written on the pairs' loss differences.

  ``directions[i + N/2] == -directions[i]``, so the sum equals
  sum over pairs of direction_+ (L_+ - L_-), which avoids the float cancellation
  of adding two large, nearly equal products.
  """
  num_particles = losses.shape[0]
  half = num_particles // 2
  diff = losses[:half] - losses[half:]
  estimate = directions[:half].T @ diff.astype(directions.dtype)
  return estimate / (num_particles * sigma**2)


def run_particles(system: base.UnrolledSystem, unravel, starts, thetas, step_keys, *,
                  spread: bool):
  """Runs one window for every particle (vmapped), all with the same step keys.

  Returns the particles' final states and their summed window losses, (N,).
  """

  def one(start, theta_vec):
    theta = unravel(theta_vec)
    final, losses = jax.lax.scan(lambda s, k: system.step(s, theta, k), start, step_keys)
    return final, jnp.sum(losses)

  starts, thetas = sharding.shard_leading((starts, thetas), spread=spread)
  return sharding.shard_leading(jax.vmap(one)(starts, thetas), spread=spread)


def init_particles(system: base.UnrolledSystem, unravel, init_key, thetas, *, spread: bool):
  """Each particle's initial state, made with its own perturbed theta."""
  thetas = sharding.shard_leading(thetas, spread=spread)
  return sharding.shard_leading(jax.vmap(lambda tv: system.init(init_key, unravel(tv)))(thetas),
                                spread=spread)
