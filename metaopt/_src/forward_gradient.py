"""Directional forward gradients (Silver et al., 2022) over a horizon."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base


class ForwardGradientState(NamedTuple):
  """State of :func:`forward_gradient`.

  Attributes:
    inner: the inner state at the start of the next window.
    direction: the horizon's random direction v in theta space, (H,).
    tangent: (ds/dtheta) v for the float leaves of ``inner``.
    count: inner steps taken in the current horizon.
    init_key: key data of the key that makes the current horizon's initial state.
  """
  inner: base.PyTree
  direction: jax.Array
  tangent: list
  count: jax.Array
  init_key: jax.Array


def forward_gradient(system: base.UnrolledSystem, *, num_steps: int) -> base.Estimator:
  """Forward gradient: (dL/dtheta · v) v with one random direction v ~ N(0, I) per horizon.

  The tangent (ds/dtheta) v starts at (d init/dtheta) v and is carried by one
  JVP per step, which also gives dL_t/dtheta · v; E[v v^T] = I makes the
  estimate unbiased. Cost: one JVP per step, whatever the number H of
  hyperparameters; variance grows with H (about |grad|^2 H per estimate).

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.forward_gradient(system, num_steps=2)
    >>> state = est.init(jax.random.key(0), jnp.float32(0.1))
    >>> state, grad, metrics = est.unroll(state, jnp.float32(0.1), jax.random.key(1))
  """
  horizon = base.check_horizon(system)
  base.check_num_steps(num_steps, horizon)

  def init(key, theta):
    base.check_init_args(system, key, theta)
    inner = system.init(key, theta)
    theta_vec, _ = base.ravel(theta)
    floats, _ = base.StateSplit.of(inner).split(inner)
    return ForwardGradientState(inner, jnp.zeros_like(theta_vec),
                                [jnp.zeros_like(x) for x in floats], base.initial_count(),
                                base.key_data(key))

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)
    theta_vec, unravel = base.ravel(theta)
    split = base.StateSplit.of(state.inner)

    def fresh():
      v = jax.random.normal(keys.noise, theta_vec.shape, theta_vec.dtype)
      init_flat = base.flat_init(system, split, unravel, state.init_key)
      floats, tangent, others = jax.jvp(init_flat, (theta_vec,), (v,), has_aux=True)
      return split.merge(floats, others), v, tangent

    inner, v, tangent = jax.lax.cond(state.count == 0, fresh,
                                     lambda: (state.inner, state.direction, state.tangent))

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
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    return (ForwardGradientState(inner, v, tangent, count, init_key), unravel(directional * v),
            {"loss": jnp.sum(losses)})

  return base.Estimator(init, unroll)
