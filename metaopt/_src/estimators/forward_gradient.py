"""Directional forward gradients (Silver et al., 2022; Baydin et al., 2022) over a horizon."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.core import window


class ForwardGradientState(NamedTuple):
  """State of :func:`forward_gradient`.

  Attributes:
    inner: the inner state at the start of the next window.
    direction: the horizon's random direction v in theta space, (H,).
    tangent: (ds/dtheta) v for the float leaves of ``inner``.
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  direction: jax.Array
  tangent: list
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def forward_gradient(system: base.UnrolledSystem, *, num_steps: int) -> base.Estimator:
  """Forward gradient: (dL/dtheta · v) v with one random direction v ~ N(0, I) per horizon.

  The tangent (ds/dtheta) v starts at (d init/dtheta) v and is carried by one
  JVP per step, which also gives dL_t/dtheta · v; E[v v^T] = I makes the
  estimate unbiased. Cost: one JVP per step, whatever the number H of
  hyperparameters; variance grows with H (about ``|grad|^2 H`` per estimate).

  Examples:
    Each estimate points along its own random direction; their mean is the gradient:

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.zeros(2),
    ...     step=lambda s, th, key: (s + th, jnp.sum(s * jnp.array([1.0, -1.0]))), horizon=2)
    >>> est = metaopt.forward_gradient(system, num_steps=2)
    >>> draw = lambda k: metaopt.sum_window_grads(est, jnp.zeros(2), k, num_windows=1)
    >>> g = jax.vmap(draw)(jax.random.split(jax.random.key(0), 4000))
    >>> bool(jnp.allclose(g.mean(0), jnp.array([1.0, -1.0]), atol=0.1))
    True
  """

  def start(theta, keys, init_key):
    f, theta_vec, split = base.flat_init(system, theta, init_key)
    v = jax.random.normal(keys.noise, theta_vec.shape, theta_vec.dtype)
    floats, tangent, others = jax.jvp(f, (theta_vec,), (v,), has_aux=True)
    return split.merge(floats, others), v, tangent

  def forward(begin, theta, keys):
    theta_vec, unravel = base.ravel(theta)
    inner, v, tangent = begin(theta)
    split = base.StateSplit.of(inner)

    def body(carry, step_key):
      inner, tangent, directional = carry
      floats, others = split.split(inner)
      f = base.flat_step(system, split, unravel, others, step_key)
      (floats, loss), (tangent, dloss), others = jax.jvp(f, (floats, theta_vec), (tangent, v),
                                                          has_aux=True)
      return (split.merge(floats, others), tangent,
              directional + dloss.astype(directional.dtype)), loss

    (inner, tangent, directional), losses = jax.lax.scan(
        body, (inner, tangent, jnp.zeros((), theta_vec.dtype)), keys.steps)
    return (inner, v, tangent), unravel(directional * v), {"loss": jnp.sum(losses)}

  return window.windowed(system, ForwardGradientState, num_steps=num_steps, start=start,
                         window=forward)
