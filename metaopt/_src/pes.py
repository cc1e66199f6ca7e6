"""Persistent evolution strategies (Vicol, Metz & Sohl-Dickstein, 2021)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base
from metaopt._src import perturbations


class PESState(NamedTuple):
  """State of :func:`pes`.

  Attributes:
    inner: each particle's inner state, stacked on a leading axis of size
      ``num_particles``.
    accumulator: each particle's sum of the perturbations it has seen in this
      horizon, (num_particles, H).
    count: inner steps taken in the current horizon.
    init_key: key data (uint32) of the key that makes the current horizon's initial states.
  """
  inner: base.PyTree
  accumulator: jax.Array
  count: jax.Array
  init_key: jax.Array


def pes(system: base.UnrolledSystem, *, num_steps: int, num_particles: int,
        sigma: float) -> base.Estimator:
  """PES: unbiased evolution strategies over a whole horizon, window by window.

  Every window draws fresh antithetic perturbations eps_i ~ N(0, sigma^2 I)
  (particle i + N/2 gets -eps_i) and runs each particle with theta + eps_i
  from its own persistent state; all particles share the window's step keys.
  Each particle adds its eps_i to an accumulator xi_i, which is reset at a
  horizon start, where each particle's initial state is made with its own
  perturbed theta. The window's estimate is

    g = 1/(N sigma^2) sum_i xi_i L_i,

  L_i being particle i's summed window loss. Summed over a horizon it is an
  unbiased estimate of the gradient of the Gaussian-smoothed total loss
  (which tends to the exact gradient as sigma -> 0). Particles are vmapped.

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    num_particles: number of particles, even (antithetic pairs).
    sigma: standard deviation of the perturbations, in theta's (flattened) units.

  Returns:
    An :class:`~metaopt.Estimator`. ``metrics["loss"]`` is the particles'
    mean window sum; ``metrics["accumulator_norm"]`` the mean norm of xi.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.pes(system, num_steps=2, num_particles=8, sigma=0.01)
    >>> state = est.init(jax.random.key(0), jnp.float32(0.1))
    >>> state, grad, metrics = est.unroll(state, jnp.float32(0.1), jax.random.key(1))
  """
  horizon = base.check_horizon(system)
  base.check_num_steps(num_steps, horizon)
  base.check_num_particles(num_particles)
  sigma = base.check_sigma(sigma)

  def init(key, theta):
    base.check_init_args(system, key, theta)
    inner, zeros = perturbations.init_particle_states(system, key, theta, num_particles)
    return PESState(inner, zeros, base.initial_count(), base.key_data(key))

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)
    theta_vec, unravel = base.ravel(theta)
    eps = perturbations.antithetic(keys.noise, theta_vec, num_particles, sigma)
    thetas = theta_vec + eps
    fresh = state.count == 0
    starts = jax.lax.cond(
        fresh, lambda: perturbations.init_particles(system, unravel, base.as_key(state.init_key), thetas),
        lambda: state.inner)
    accumulator = jnp.where(fresh, 0.0, state.accumulator) + eps
    finals, losses = perturbations.run_particles(system, unravel, starts, thetas, keys.steps)
    grad = perturbations.antithetic_estimate(accumulator, losses, sigma)
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    metrics = {"loss": jnp.mean(losses),
               "accumulator_norm": jnp.mean(jnp.linalg.norm(accumulator, axis=-1))}
    return PESState(finals, accumulator, count, init_key), unravel(grad), metrics

  return base.Estimator(init, unroll)
