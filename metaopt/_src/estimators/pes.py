"""Persistent evolution strategies (Vicol, Metz & Sohl-Dickstein, 2021)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.estimators import perturbations
from metaopt._src.core import window


class PESState(NamedTuple):
  """State of :func:`pes`.

  Attributes:
    inner: each particle's inner state, stacked on a leading axis of size
      ``num_particles``.
    accumulator: each particle's sum of the perturbations it has seen in this
      horizon, (num_particles, H).
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  accumulator: jax.Array
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def pes(system: base.UnrolledSystem, *, num_steps: int, num_particles: int,
        sigma: float, spread_copies: bool = True) -> base.Estimator:
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
    spread_copies: spread the particles over the local devices (turn it off
      when the tuner's chains are spread instead).

  Returns:
    An :class:`~metaopt.Estimator`. ``metrics["loss"]`` is the particles'
    mean window sum; ``metrics["accumulator_norm"]`` the mean norm of xi.

  Examples:
    PES needs no derivative of the step: here the loss jumps where s crosses
    0.5, which a gradient never sees but the smoothed loss does.

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.float32(0.0),
    ...     step=lambda s, th, key: (s + th, jnp.where(s + th > 0.5, 1.0, 0.0)), horizon=4)
    >>> est = metaopt.pes(system, num_steps=1, num_particles=64, sigma=0.05)
    >>> g = metaopt.sum_window_grads(est, jnp.float32(0.16), jax.random.key(0), num_windows=4)
    >>> bool(g > 1.0)  # the third step's loss jumps at theta = 1/6, within sigma of 0.16
    True
  """
  num_particles, sigma = perturbations.check_options(num_particles, sigma)
  spread_copies = base.check_flag(spread_copies, "spread_copies")

  def start(theta, keys, init_key):
    theta_vec, unravel, eps = perturbations.window_draw(theta, keys, num_particles, sigma)
    return (perturbations.init_particles(system, unravel, init_key, theta_vec + eps,
                                         spread=spread_copies), jnp.zeros_like(eps))

  def persistent(begin, theta, keys):
    theta_vec, unravel, eps = perturbations.window_draw(theta, keys, num_particles, sigma)
    inner, accumulator = begin(theta)
    accumulator = accumulator + eps
    finals, losses = perturbations.run_particles(system, unravel, inner, theta_vec + eps,
                                                 keys.steps, spread=spread_copies)
    grad = perturbations.antithetic_estimate(accumulator, losses, sigma)
    metrics = {"loss": jnp.mean(losses),
               "accumulator_norm": jnp.mean(jnp.linalg.norm(accumulator, axis=-1))}
    return (finals, accumulator), unravel(grad), metrics

  return window.windowed(system, PESState, num_steps=num_steps, start=start, window=persistent)
