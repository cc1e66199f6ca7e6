"""Real-time recurrent learning for hyperparameters (forward mode, as in OHO)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base
from metaopt._src import sharding


class RTRLState(NamedTuple):
  """State of :func:`rtrl`.

  Attributes:
    inner: the inner state at the start of the next window.
    influence: Z = d inner / d theta for the float leaves of ``inner``, each
      with a leading axis of size H (the number of theta coordinates).
    count: inner steps taken in the current horizon.
    init_key: key data (uint32) of the key that makes the current horizon's initial state.
  """
  inner: base.PyTree
  influence: list
  count: jax.Array
  init_key: jax.Array


def rtrl(system: base.UnrolledSystem, *, num_steps: int) -> base.Estimator:
  """Exact forward-mode hypergradients: RTRL with theta as the "parameters".

  Carries the influence Z_t = ds_t/dtheta, started from d init/dtheta, and
  updates it with one JVP per coordinate of theta, batched with ``vmap`` over
  tangents after a single linearisation of the step (the step's primal is
  computed once). The same JVP yields dL_t/dtheta, so no backward pass is
  needed. Cost per step: the step plus H tangent passes; memory: H copies of
  the state, constant in the horizon.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.rtrl(system, num_steps=2)
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
    influence = [jnp.zeros((theta_vec.size,) + x.shape, x.dtype) for x in floats]
    return RTRLState(inner, influence, base.initial_count(),
                     base.key_data(key))

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)
    theta_vec, unravel = base.ravel(theta)
    basis = jnp.eye(theta_vec.size, dtype=theta_vec.dtype)
    split = base.StateSplit.of(state.inner)

    def fresh():
      init_flat = base.flat_init(system, split, unravel, state.init_key)
      floats, lin, others = jax.linearize(init_flat, theta_vec, has_aux=True)
      return split.merge(floats, others), jax.vmap(lin)(basis)

    inner, influence = jax.lax.cond(state.count == 0, fresh,
                                    lambda: (state.inner, state.influence))

    def body(carry, step_key):
      inner, influence, grad = carry
      floats, others = split.split(inner)
      f = base.flat_step(system, split, unravel, others, step_key)
      (floats, loss), lin, others = jax.linearize(f, floats, theta_vec, has_aux=True)
      influence, dloss = jax.vmap(lin)(*sharding.shard_leading((influence, basis)))
      influence = sharding.shard_leading(influence)
      return (split.merge(floats, others), influence, grad + dloss.astype(grad.dtype)), loss

    (inner, influence, grad), losses = jax.lax.scan(
        body, (inner, influence, jnp.zeros_like(theta_vec)), keys.steps)
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    return RTRLState(inner, influence, count, init_key), unravel(grad), {"loss": jnp.sum(losses)}

  return base.Estimator(init, unroll)
