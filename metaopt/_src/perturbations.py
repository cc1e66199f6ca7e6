"""Antithetic Gaussian perturbations shared by the evolution-strategies estimators."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metaopt._src import base
from metaopt._src import sharding


def antithetic(key: jax.Array, theta_vec: jax.Array, num_particles: int,
               sigma: float) -> jax.Array:
  """(num_particles, H) perturbations: N(0, sigma^2 I) draws, then their negatives."""
  half = sigma * jax.random.normal(key, (num_particles // 2, theta_vec.size), theta_vec.dtype)
  return jnp.concatenate([half, -half])


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


def run_particles(system: base.UnrolledSystem, unravel, starts, thetas, step_keys):
  """Runs one window for every particle (vmapped), all with the same step keys.

  Returns the particles' final states and their summed window losses, (N,).
  """

  def one(start, theta_vec):
    theta = unravel(theta_vec)
    final, losses = jax.lax.scan(lambda s, k: system.step(s, theta, k), start, step_keys)
    return final, jnp.sum(losses)

  starts, thetas = sharding.shard_leading((starts, thetas))
  return sharding.shard_leading(jax.vmap(one)(starts, thetas))


def init_particles(system: base.UnrolledSystem, unravel, init_key, thetas):
  """Each particle's initial state, made with its own perturbed theta."""
  thetas = sharding.shard_leading(thetas)
  return sharding.shard_leading(jax.vmap(lambda tv: system.init(init_key, unravel(tv)))(thetas))


def init_particle_states(system: base.UnrolledSystem, key, theta, num_particles: int):
  """Every particle's state at theta (no perturbation yet), and a zero (num_particles, H) array."""
  theta_vec, unravel = base.ravel(theta)
  thetas = jnp.broadcast_to(theta_vec, (num_particles, theta_vec.size))
  return init_particles(system, unravel, key, thetas), jnp.zeros_like(thetas)
