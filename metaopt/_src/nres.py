"""Noise-reuse evolution strategies (Li, Metz, Vicol et al., 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base
from metaopt._src import perturbations


class NRESState(NamedTuple):
  """State of :func:`nres`.

  Attributes:
    inner: each particle's inner state, stacked (leading axis ``num_particles``).
    perturbation: each particle's perturbation for the whole horizon, (num_particles, H).
    count: inner steps taken in the current horizon.
    init_key: key data of the key that makes the current horizon's initial states.
  """
  inner: base.PyTree
  perturbation: jax.Array
  count: jax.Array
  init_key: jax.Array


def nres(system: base.UnrolledSystem, *, num_steps: int, num_particles: int,
         sigma: float) -> base.Estimator:
  """NRES: ES that draws one antithetic perturbation per particle per horizon and reuses it.

  At a horizon start every particle draws eps_i ~ N(0, sigma^2 I) (particle
  i + N/2 gets -eps_i), makes its initial state with theta + eps_i, and keeps
  eps_i until the horizon ends. Each window's estimate is
  1/(N sigma^2) sum_i eps_i L_i. Summed over the horizon that is plain
  antithetic ES on the whole horizon's loss, hence unbiased for the gradient
  of the Gaussian-smoothed loss, and its variance does not grow with the
  number of windows (unlike PES, whose accumulated perturbations do).

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    num_particles: number of particles, even (antithetic pairs).
    sigma: standard deviation of the perturbations.

  Returns:
    An :class:`~metaopt.Estimator`; ``metrics["loss"]`` is the particles' mean window sum.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.nres(system, num_steps=2, num_particles=8, sigma=0.01)
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
    return NRESState(inner, zeros, base.initial_count(), base.key_data(key))

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)
    theta_vec, unravel = base.ravel(theta)
    fresh = state.count == 0
    eps = jnp.where(fresh, perturbations.antithetic(keys.noise, theta_vec, num_particles, sigma),
                    state.perturbation)
    thetas = theta_vec + eps
    starts = jax.lax.cond(
        fresh, lambda: perturbations.init_particles(system, unravel,
                                                    base.as_key(state.init_key), thetas),
        lambda: state.inner)
    finals, losses = perturbations.run_particles(system, unravel, starts, thetas, keys.steps)
    grad = perturbations.antithetic_estimate(eps, losses, sigma)
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    return NRESState(finals, eps, count, init_key), unravel(grad), {"loss": jnp.mean(losses)}

  return base.Estimator(init, unroll)
