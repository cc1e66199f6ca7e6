"""Truncated evolution strategies: the biased, non-persistent ES baseline."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base
from metaopt._src import perturbations


class TruncatedESState(NamedTuple):
  """State of :func:`truncated_es`.

  Attributes:
    inner: the unperturbed inner state at the start of the next window.
    count: inner steps taken in the current horizon.
    init_key: key data (uint32) of the key that makes the current horizon's initial state.
  """
  inner: base.PyTree
  count: jax.Array
  init_key: jax.Array


def truncated_es(system: base.UnrolledSystem, *, num_steps: int, num_particles: int,
                 sigma: float) -> base.Estimator:
  """Truncated ES: antithetic ES on each window alone, with no memory across windows.

  Each window, every particle starts from the same unperturbed state (in a
  horizon's first window, from ``init`` with its own perturbed theta), runs
  with theta + eps_i, and g = 1/(N sigma^2) sum_i eps_i L_i. An extra,
  unperturbed copy advances the shared state (so a window costs N + 1 copies).
  It ignores how theta's effect on the state carries into later windows: the
  ES analogue of truncated BPTT, biased.

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    num_particles: number of perturbed particles, even (antithetic pairs).
    sigma: standard deviation of the perturbations.

  Returns:
    An :class:`~metaopt.Estimator`; ``metrics["loss"]`` is the unperturbed
    copy's window sum.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.truncated_es(system, num_steps=2, num_particles=8, sigma=0.01)
    >>> state = est.init(jax.random.key(0), jnp.float32(0.1))
    >>> state, grad, metrics = est.unroll(state, jnp.float32(0.1), jax.random.key(1))
  """
  horizon = base.check_horizon(system)
  base.check_num_steps(num_steps, horizon)
  base.check_num_particles(num_particles)
  sigma = base.check_sigma(sigma)

  def init(key, theta):
    base.check_init_args(system, key, theta)
    return TruncatedESState(system.init(key, theta), base.initial_count(),
                     base.key_data(key))

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)
    theta_vec, unravel = base.ravel(theta)
    eps = perturbations.antithetic(keys.noise, theta_vec, num_particles, sigma)
    # Row 0 is the unperturbed copy that carries the state forward.
    thetas = jnp.concatenate([theta_vec[None], theta_vec + eps])
    starts = jax.lax.cond(
        state.count == 0,
        lambda: perturbations.init_particles(system, unravel, base.as_key(state.init_key), thetas),
        lambda: jax.tree.map(lambda x: jnp.broadcast_to(x, (num_particles + 1,) + x.shape),
                             state.inner))
    finals, losses = perturbations.run_particles(system, unravel, starts, thetas, keys.steps)
    grad = perturbations.antithetic_estimate(eps, losses[1:], sigma)
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    inner = jax.tree.map(lambda x: x[0], finals)
    return TruncatedESState(inner, count, init_key), unravel(grad), {"loss": losses[0]}

  return base.Estimator(init, unroll)
