"""Exact RTRL at linear cost for element-wise recurrent layers (eLSTM, RTU)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.rl import agent
from metaopt._src.core import base
from metaopt._src.recurrent import elementwise
from metaopt._src.core import window


class RTRLElementwiseState(NamedTuple):
  """State of :func:`rtrl_elementwise`.

  Attributes:
    inner: the :class:`RecurrentState` at the start of the next window.
    traces: d h[i] / d theta["cell"][i] for every unit i: the structure of
      ``theta["cell"]`` with each leaf ``(num_units, C) + leaf.shape[1:]``.
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: elementwise.RecurrentState
  traces: base.PyTree
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def _unit_jacobians(fn, *args):
  """Value of ``fn(*args) -> (C,)`` and its Jacobians w.r.t. each arg, by C VJPs."""
  value, pull = jax.vjp(fn, *args)
  eye = jnp.eye(value.shape[0], dtype=value.dtype)
  return value, jax.vmap(pull)(eye)


def initial_traces(cell, cell_params):
  """d initial(p_i) / d p_i for every unit: the traces at a (re)start."""
  _, (traces,) = jax.vmap(lambda p: _unit_jacobians(cell.initial, p))(cell_params)
  return traces


def traced_layer_step(cell, hidden, cell_params, x, traces):
  """h' = the layer's step and its traces M' = (dh'/dh) M + dh'/dtheta_cell, per unit."""
  new_hidden, (d_hidden, d_params) = jax.vmap(
      lambda h, p: _unit_jacobians(lambda h, p: cell.step(h, p, x), h, p))(hidden, cell_params)
  # M_t[i] = (dh_t/dh_{t-1})[i] M_{t-1}[i] + (dh_t/dtheta_i)[i]; C x C per unit.
  traces = jax.tree.map(
      lambda m, j: jnp.einsum("nab,nb...->na...", d_hidden, m) + j, traces, d_params)
  return new_hidden, traces


def contract(delta, direct, traces):
  """dL/dtheta_cell = direct terms + sum over a unit's channels of dL/dh[i] M[i]."""
  return jax.tree.map(lambda d, m: d + jnp.einsum("na,na...->n...", delta, m), direct, traces)


def trace_norm(traces):
  """The traces' norm per environment (leading axis), root mean square over environments."""
  num_envs = jax.tree.leaves(traces)[0].shape[0]
  return jnp.sqrt(sum(jnp.sum(m.astype(jnp.float32) ** 2) for m in jax.tree.leaves(traces))
                  / num_envs)


def agent_start_traces(cell, cell_params, obs):
  """The traces of every environment's h_0 = step(initial, theta, x_0); obs: the layer's
  inputs x_0 (the observations or their encodings), (num_envs, ...)."""
  initial = jax.vmap(cell.initial)(cell_params)
  m0 = initial_traces(cell, cell_params)
  return jax.vmap(lambda x: traced_layer_step(cell, initial, cell_params, x, m0)[1])(obs)


def agent_next_traces(cell, cell_params, hidden, traces, done, new_obs, initial, m0):
  """One environment's traces after its step (``new_obs``: the layer's next input): restarted
  (with the hidden state) on ``done``."""
  begin_hidden = jnp.where(done, initial, hidden)
  begin_traces = jax.tree.map(lambda m, m_0: jnp.where(done, m_0, m), traces, m0)
  return traced_layer_step(cell, begin_hidden, cell_params, new_obs, begin_traces)[1]


def layer_inputs(system: agent.AgentSystem, theta, obs):
  """The layer's inputs of every environment, (num_envs, ...), held fixed for the traces."""
  return jax.lax.stop_gradient(
      jax.vmap(lambda o: agent.layer_input(system, theta["readout"], o))(obs))


def rtrl_elementwise(system: elementwise.ElementwiseSystem, *, num_steps: int) -> base.Estimator:
  """Exact real-time recurrent learning for one element-wise recurrent layer.

  In a layer whose recurrence is element-wise (an eLSTM's diagonal recurrent
  weights; an RTU's 2x2 rotation per unit), unit i's state depends on its own
  past and its own parameters only, so the sensitivity d h_t / d theta is
  block diagonal: unit i carries a trace M_t[i] = d h_t[i] / d theta_i of size
  C x (weights per unit), updated as

    M_t[i] = (d h_t[i] / d h_{t-1}[i]) M_{t-1}[i] + d h_t[i] / d theta_i,

  with both Jacobians of one unit obtained by C vector-Jacobian products. The
  gradient of L_t is delta_t[i] M_t[i] (delta_t = dL_t/dh_t by backprop through
  the readout) plus the direct terms. Cost and memory per step are linear in
  the number of weights (about C backward passes of one step), against one
  JVP per weight for generic :func:`metaopt.rtrl`.

  Which weights get exact traces: all of ``theta["cell"]`` (the layer's input
  weights, element-wise recurrent weights, biases and any output gate); the
  readout ``theta["readout"]`` does not influence the state and gets plain
  backprop at each step. The result is exact: for a fixed theta the sum over
  windows equals ``jax.grad`` of the full unroll (when theta is updated
  online between windows, the traces mix past thetas: the usual RTRL
  approximation). It would not be for a STACK of such
  layers: layer 2's units read all of layer 1's units, so d h2/d theta1 is a
  dense (units x weights) matrix and the block-diagonal traces would drop the
  cross-unit terms (Irie et al., 2023, discuss this limit); this estimator
  therefore accepts one recurrent layer (put feed-forward layers in the
  readout).

  Args:
    system: an :class:`ElementwiseSystem` from :func:`metaopt.recurrent.elementwise_system`.
    num_steps: inner steps per window (1 = fully online).

  Returns:
    An :class:`Estimator`.

  Raises:
    ValueError: for a system without element-wise structure or a bad num_steps.

  Examples:
    Fully online (one-step windows), it still gives the exact gradient:

    >>> import jax, jax.numpy as jnp, metaopt
    >>> leaky = metaopt.recurrent.ElementwiseCell(
    ...     initial=lambda p: jnp.zeros(1),
    ...     step=lambda h, p, x: h + p["rate"] * (jnp.tanh(p["v"] @ x) - h),
    ...     output=lambda h, p, x: h)
    >>> system = metaopt.recurrent.elementwise_system(
    ...     leaky, stream_init=lambda key: jnp.float32(0.0),
    ...     observe=lambda t, key: (t + 1, jnp.array([jnp.sin(t), 1.0]), jnp.cos(t)),
    ...     readout_loss=lambda r, o, y: (r @ o[:, 0] - y) ** 2, horizon=12)
    >>> theta = {"cell": {"rate": jnp.full(3, 0.3), "v": jnp.ones((3, 2))},
    ...          "readout": jnp.ones(3)}
    >>> est = metaopt.rtrl_elementwise(system, num_steps=1)
    >>> g = metaopt.sum_window_grads(est, theta, jax.random.key(0), num_windows=12)
    >>> exact = metaopt.exact_grad(system, theta, jax.random.key(0), num_steps=1, num_windows=12)
    >>> jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, rtol=1e-4)), g, exact))
    True
  """
  if isinstance(system, agent.AgentSystem):
    return _rtrl_agent(system, num_steps=num_steps)
  if not isinstance(system, elementwise.ElementwiseSystem):
    raise ValueError(
        "rtrl_elementwise needs an ElementwiseSystem (from metaopt.recurrent.elementwise_system) or an "
        "AgentSystem (from metaopt.rl.agent_system), got "
        f"{type(system).__name__}; for a dense recurrence use metaopt.rtrl or metaopt.uoro")
  cell = system.cell

  def start(theta, keys, init_key):  # lazily, with this window's theta, like every estimator
    return system.init(init_key, theta), initial_traces(cell, theta["cell"])

  def forward(begin, theta, keys):
    cell_params = theta["cell"]
    inner, traces = begin(theta)

    def body(carry, step_key):
      inner, traces, grad = carry
      stream, x, target = system.observe(inner.stream, step_key)
      hidden, traces = traced_layer_step(cell, inner.hidden, cell_params, x, traces)

      def loss_fn(hidden, cell_params, readout):
        outputs = elementwise.cell_outputs(cell, hidden, cell_params, x)
        return system.readout_loss(readout, outputs, target)

      loss, (delta, direct, d_readout) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
          hidden, cell_params, theta["readout"])
      step_grad = {"cell": contract(delta, direct, traces), "readout": d_readout}
      grad = jax.tree.map(lambda g, d: g + d.astype(g.dtype), grad, step_grad)
      return (elementwise.RecurrentState(hidden, stream), traces, grad), loss

    zeros = jax.tree.map(jnp.zeros_like, theta)
    (inner, traces, grad), losses = jax.lax.scan(body, (inner, traces, zeros), keys.steps)
    return (inner, traces), grad, {"loss": jnp.sum(losses)}

  return window.windowed(system, RTRLElementwiseState, num_steps=num_steps, start=start,
                         window=forward, check_theta=elementwise.check_theta_layout)


def _rtrl_agent(system: agent.AgentSystem, *, num_steps: int) -> base.Estimator:
  """rtrl_elementwise for an online agent: traces per environment, reset on ``done``.

  The loss of step t reads h_t only (h_{t+1} through stop_gradient), so its
  gradient contracts dL_t/dh_t with the trace of h_t held BEFORE the step's
  update: exact for the actor-critic loss the system defines.
  """
  cell = system.cell

  def start(theta, keys, init_key):
    inner = system.init(init_key, theta)
    return inner, agent_start_traces(cell, theta["cell"], layer_inputs(system, theta, inner.obs))

  def forward(begin, theta, keys):
    cell_params = theta["cell"]
    inner, traces = begin(theta)
    m0 = initial_traces(cell, cell_params)
    initial = jax.vmap(cell.initial)(cell_params)

    def body(carry, step_key):
      inner, traces, grad = carry
      new_inner, aux = agent.transition(system, inner, theta, step_key)

      def one(hidden, begin, obs, traces, aux, new_obs):
        def loss_fn(h, p, r):
          # The encoder (if any) gets its one-step gradient through h; the layer, its traces'.
          h = agent.with_encoder_step(system, {"cell": p, "readout": r}, h, begin, obs)
          x = agent.layer_input(system, r, obs)
          return agent.loss_from_outputs(system, r, elementwise.cell_outputs(cell, h, p, x), x,
                                         aux)

        (loss, parts), (delta, direct, d_readout) = jax.value_and_grad(
            loss_fn, argnums=(0, 1, 2), has_aux=True)(hidden, cell_params, theta["readout"])
        new_x = jax.lax.stop_gradient(agent.layer_input(system, theta["readout"], new_obs))
        new_traces = agent_next_traces(cell, cell_params, hidden, traces, aux.done, new_x,
                                       initial, m0)
        grad = {"cell": contract(delta, direct, traces), "readout": d_readout}
        return loss, parts, grad, new_traces

      losses, parts, grads, traces = jax.vmap(one)(inner.hidden, inner.begin, inner.obs, traces,
                                                   aux, new_inner.obs)
      step_grad = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
      grad = jax.tree.map(lambda g, d: g + d.astype(g.dtype), grad, step_grad)
      return (agent.record(new_inner, parts), traces, grad), jnp.mean(losses)

    zeros = jax.tree.map(jnp.zeros_like, theta)
    (inner, traces, grad), losses = jax.lax.scan(body, (inner, traces, zeros), keys.steps)
    metrics = {"loss": jnp.sum(losses), "trace_norm": trace_norm(traces)}
    return (inner, traces), grad, metrics

  return window.windowed(system, RTRLElementwiseState, num_steps=num_steps, start=start,
                         window=forward, check_theta=elementwise.check_theta_layout)
