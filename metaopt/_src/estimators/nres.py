"""Noise-reuse evolution strategies (Li, Metz, Vicol et al., 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.estimators import perturbations
from metaopt._src.core import window


class NRESState(NamedTuple):
  """State of :func:`nres`.

  Attributes:
    inner: each particle's inner state, stacked (leading axis ``num_particles``).
    perturbation: each particle's perturbation, (num_particles, H), drawn at the
      horizon's start and reused by every window of that horizon.
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  perturbation: jax.Array
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def nres(system: base.UnrolledSystem, *, num_steps: int, num_particles: int, sigma: float,
         spread_copies: bool = True) -> base.Estimator:
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
    spread_copies: spread the particles over the local devices.

  Returns:
    An :class:`~metaopt.Estimator`; ``metrics["loss"]`` is the particles' mean window sum.

  Examples:
    Unbiased: the mean of many estimates approaches the exact gradient (here
    the loss is quadratic, so smoothing changes nothing):

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2),
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)), horizon=4)
    >>> theta = jnp.array([0.2, -0.1])
    >>> est = metaopt.nres(system, num_steps=1, num_particles=8, sigma=0.01)
    >>> draw = lambda k: metaopt.sum_window_grads(est, theta, k, num_windows=4)
    >>> g = jax.vmap(draw)(jax.random.split(jax.random.key(0), 500))
    >>> exact = metaopt.exact_grad(system, theta, jax.random.key(0), num_steps=1, num_windows=4)
    >>> bool(jnp.all(jnp.abs(g.mean(0) - exact) < 4 * g.std(0) / jnp.sqrt(500)))
    True
  """
  num_particles, sigma = perturbations.check_options(num_particles, sigma)
  spread_copies = base.check_flag(spread_copies, "spread_copies")

  def start(theta, keys, init_key):
    theta_vec, unravel, eps = perturbations.window_draw(theta, keys, num_particles, sigma)
    return (perturbations.init_particles(system, unravel, init_key, theta_vec + eps,
                                         spread=spread_copies), eps)

  def reuse(begin, theta, keys):
    theta_vec, unravel = base.ravel(theta)
    inner, eps = begin(theta)
    finals, losses = perturbations.run_particles(system, unravel, inner, theta_vec + eps,
                                                 keys.steps, spread=spread_copies)
    grad = perturbations.antithetic_estimate(eps, losses, sigma)
    return (finals, eps), unravel(grad), {"loss": jnp.mean(losses)}

  return window.windowed(system, NRESState, num_steps=num_steps, start=start, window=reuse)
