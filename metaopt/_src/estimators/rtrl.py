"""Real-time recurrent learning for hyperparameters (forward mode, as in OHO)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.devices import sharding
from metaopt._src.core import window


# Up to this many theta coordinates, RTRL's tangents are separate JVPs rather than one vmap.
MAX_SEPARATE_TANGENTS = 4


class RTRLState(NamedTuple):
  """State of :func:`rtrl`.

  Attributes:
    inner: the inner state at the start of the next window.
    influence: Z = d inner / d theta for the float leaves of ``inner``, each
      with a leading axis of size H (the number of theta coordinates).
    count: inner steps taken in the current horizon (see :func:`~metaopt.windowed`).
    init_key: key data of the current horizon's initial-state key.
    theta_spec: theta's structure, shapes and dtypes at ``init``, as zero-size arrays
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  influence: list
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def rtrl(system: base.UnrolledSystem, *, num_steps: int,
         spread_copies: bool = True) -> base.Estimator:
  """Exact forward-mode hypergradients: RTRL with theta as the "parameters".

  Carries the influence Z_t = ds_t/dtheta, started from d init/dtheta, and
  updates it with one JVP per coordinate of theta after a single
  linearisation of the step (the step's primal is computed once): separate
  JVPs for up to ``MAX_SEPARATE_TANGENTS`` coordinates, one ``vmap`` over
  tangents beyond. The same JVP yields dL_t/dtheta, so no backward pass is
  needed. Cost per step: the step plus H tangent passes; memory: H copies of
  the state, constant in the horizon. For a system with ``meta_loss`` (the
  loss read off the new state), the tangents carry the transition only and
  dL_t/dtheta = (dL_t/ds_{t+1}) Z_{t+1} + dL_t/dtheta|direct comes from one
  reverse pass of the loss, whatever H.

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    spread_copies: spread the H tangents over the local devices
      (:func:`~metaopt.devices.shard_leading`); turn it off when an outer axis (the
      tuner's chains) is spread instead.

  Examples:
    Unlike truncated BPTT, a one-step window keeps every long-range effect:

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)), horizon=6)
    >>> theta = jnp.array([0.1, -0.2])
    >>> est = metaopt.rtrl(system, num_steps=1)
    >>> g = metaopt.sum_window_grads(est, theta, jax.random.key(0), num_windows=6)
    >>> exact = metaopt.exact_grad(system, theta, jax.random.key(0), num_steps=1, num_windows=6)
    >>> bool(jnp.allclose(g, exact, rtol=1e-5))
    True
  """
  spread_copies = base.check_flag(spread_copies, "spread_copies")

  def start(theta, keys, init_key):
    f, theta_vec, split = base.flat_init(system, theta, init_key)
    floats, lin, others = jax.linearize(f, theta_vec, has_aux=True)
    return split.merge(floats, others), jax.vmap(lin)(jnp.eye(theta_vec.size, dtype=theta_vec.dtype))

  def forward(begin, theta, keys):
    theta_vec, unravel = base.ravel(theta)
    basis = jnp.eye(theta_vec.size, dtype=theta_vec.dtype)
    inner, influence = begin(theta)
    split = base.StateSplit.of(inner)

    # A few tangents run as separate JVPs: vmapped, a tangent's product with an input they
    # share (x @ dW_h) becomes one wide matmul that needs a transposed copy of all H tangents
    # every step (at 1M parameters, H = 2: 4.6 plain steps vmapped, 4.3 separate). Past
    # MAX_SEPARATE_TANGENTS the program would grow with H; spread over devices, they stay
    # vmapped.
    separate = (0 < theta_vec.size <= MAX_SEPARATE_TANGENTS
                and not (spread_copies and sharding.spreads(theta_vec.size)))
    one_pass = base.loss_by_one_pass(system, split.split(inner)[0])
    shard = (lambda x: x) if separate else (
        lambda x: sharding.shard_leading(x, spread=spread_copies))

    def tangents(lin, influence):
      """lin applied to each (Z_h, e_h): a list over h of its outputs."""
      if separate:
        return [lin(z, e) for z, e in zip(influence, basis)]
      return jax.vmap(lin)(*shard((influence, basis)))

    def body(carry, step_key):
      inner, influence, grad = carry
      floats, others = split.split(inner)
      if one_pass:  # H tangents of the transition, one reverse pass of the loss
        transition, loss_at = base.flat_transition(system, split, unravel, others, step_key)
        floats, lin, others = jax.linearize(transition, floats, theta_vec, has_aux=True)
        influence = tangents(lin, influence)
        loss, pull = jax.vjp(loss_at(others), floats, theta_vec)
        c_state, c_theta = pull(jnp.ones_like(loss))
        contract = lambda zh: sum(  # accumulated in theta's dtype, whatever the leaves'
            (jnp.vdot(c.astype(z.dtype), z, preferred_element_type=c_theta.dtype)
             for z, c in zip(zh, c_state)), jnp.zeros((), c_theta.dtype))
        if not c_state:  # no float state: theta acts on the loss directly only
          dloss = c_theta
        elif separate:
          dloss = c_theta + jnp.stack([contract(zh) for zh in influence])
        else:
          dloss = c_theta + jax.vmap(contract)(influence)
      else:
        f = base.flat_step(system, split, unravel, others, step_key)
        (floats, loss), lin, others = jax.linearize(f, floats, theta_vec, has_aux=True)
        out = tangents(lin, influence)
        influence, dloss = ([o[0] for o in out], jnp.stack([o[1] for o in out])) if separate \
            else out
      return (split.merge(floats, others), shard(influence), grad + dloss.astype(grad.dtype)), loss

    if separate:  # carried as H separate trees inside the window
      influence = [[z[h] for z in influence] for h in range(theta_vec.size)]
    (inner, influence, grad), losses = jax.lax.scan(
        body, (inner, influence, jnp.zeros_like(theta_vec)), keys.steps)
    if separate:
      influence = [jnp.stack(zs) for zs in zip(*influence)]
    return (inner, influence), unravel(grad), {"loss": jnp.sum(losses)}

  return window.windowed(system, RTRLState, num_steps=num_steps, start=start, window=forward)
