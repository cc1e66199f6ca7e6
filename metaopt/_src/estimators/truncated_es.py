"""Truncated evolution strategies: the biased, non-persistent ES baseline."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.estimators import perturbations
from metaopt._src.core import window


class TruncatedESState(NamedTuple):
  """State of :func:`truncated_es`.

  Attributes:
    inner: the unperturbed inner state at the start of the next window (one
      copy: the particles restart from it every window).
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def truncated_es(system: base.UnrolledSystem, *, num_steps: int, num_particles: int,
                 sigma: float, spread_copies: bool = True) -> base.Estimator:
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
    spread_copies: spread the particles over the local devices.

  Returns:
    An :class:`~metaopt.Estimator`; ``metrics["loss"]`` is the unperturbed
    copy's window sum.

  Examples:
    Here theta only acts through the state it leaves to later windows, which
    truncation cuts: after the first window the estimate is exactly zero.

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: th,
    ...     step=lambda s, th, key: (0.5 * s, s ** 2), horizon=4)
    >>> est = metaopt.truncated_es(system, num_steps=2, num_particles=8, sigma=0.01)
    >>> state = est.init(jax.random.key(0), jnp.float32(1.0))
    >>> state, first, _ = est.unroll(state, jnp.float32(1.0), jax.random.key(1))
    >>> state, second, _ = est.unroll(state, jnp.float32(1.0), jax.random.key(2))
    >>> bool(first > 0.0), float(second)
    (True, 0.0)
  """
  num_particles, sigma = perturbations.check_options(num_particles, sigma)
  spread_copies = base.check_flag(spread_copies, "spread_copies")

  def thetas_of(theta, keys):
    # Row 0 is the unperturbed copy that carries the state forward.
    theta_vec, unravel, eps = perturbations.window_draw(theta, keys, num_particles, sigma)
    return jnp.concatenate([theta_vec[None], theta_vec + eps]), unravel, eps

  def start(theta, keys, init_key):
    thetas, unravel, _ = thetas_of(theta, keys)
    return perturbations.init_particles(system, unravel, init_key, thetas, spread=spread_copies)

  def resume(fields):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_particles + 1,) + x.shape), fields[0])

  def truncated(begin, theta, keys):
    thetas, unravel, eps = thetas_of(theta, keys)
    finals, losses = perturbations.run_particles(system, unravel, begin(theta), thetas,
                                                 keys.steps, spread=spread_copies)
    grad = perturbations.antithetic_estimate(eps, losses[1:], sigma)
    return (jax.tree.map(lambda x: x[0], finals),), unravel(grad), {"loss": losses[0]}

  return window.windowed(system, TruncatedESState, num_steps=num_steps, start=start,
                         resume=resume, window=truncated)
