"""Real-time PPO (Elelimy et al. 2024): PPO for a recurrent agent whose gradients come from
exact RTRL traces stored along each rollout."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt._src.rl import agent
from metaopt._src.core import base
from metaopt._src.recurrent import elementwise
from metaopt._src.estimators import rtrl_elementwise


class RealTimePPOState(NamedTuple):
  """State of :func:`real_time_ppo`.

  Attributes:
    inner: the :class:`AgentState` of the environments (never reset between rollouts).
    traces: d h / d theta["cell"] of the current hidden state, per environment.
    theta: the agent's weights.
    opt_state: the optimiser's state.
    key: key data for the next rollout.
    updates: rollouts done.
  """
  inner: agent.AgentState
  traces: Any
  theta: Any
  opt_state: Any
  key: jax.Array
  updates: jax.Array


class Learner(NamedTuple):
  """``init(key, theta) -> state``; ``step(state) -> (state, metrics)``: one rollout and update."""
  init: Any
  step: Any


def real_time_ppo(system: agent.AgentSystem, optimizer: optax.GradientTransformation, *,
                  num_steps: int = 128, num_epochs: int = 4, num_minibatches: int = 4,
                  clip: float = 0.2, gae_lambda: float = 0.95,
                  normalize_advantages: bool = True, clip_value: bool = True) -> Learner:
  """PPO with exact RTRL traces, for an agent with one element-wise recurrent layer.

  Each ``step`` collects ``num_steps`` steps of every environment with the
  current weights, storing for every step the hidden state h_t and its RTRL
  trace M_t = dh_t/dtheta_cell (carried across rollouts, reset on ``done``);
  computes GAE advantages (``system.gamma``, ``gae_lambda``); then runs
  ``num_epochs`` passes over the steps, shuffled as single steps into
  ``num_minibatches`` minibatches, each an ``optimizer`` update of the clipped
  surrogate loss ``-min(r A, clip(r, 1 ± clip) A) + c_v/2 (V - R)^2 - c_e H``
  (``system.value_cost`` and ``system.entropy_cost``; with ``clip_value``, the
  larger of that value error and the one of V_old + clip(V - V_old, ± clip), as
  the reference). The gradient with
  respect to the layer's weights is dL/dh_t · M_t with the STORED h_t and M_t
  (the rollout's weights: no re-unroll, the real-time approximation of the
  reference code, esraaelelimy/rtus); the heads' gradient is plain backprop.
  On the first minibatch of the first epoch (weights still the rollout's) the
  gradient is exact: ``jax.grad`` of the loss through a re-unroll from the
  horizon start gives the same.

  Args:
    system: an :class:`AgentSystem` from :func:`metaopt.rl.agent_system`.
    optimizer: an optax transformation (the reference: clip the global norm at
      0.5, then Adam 1e-4 with eps 1e-5).
    num_steps: rollout length per environment.
    num_epochs: passes over each rollout.
    num_minibatches: must divide ``num_steps * system.num_envs``.
    clip: the PPO ratio clip, > 0.
    gae_lambda: in [0, 1].
    normalize_advantages: per minibatch, to zero mean and unit variance.
    clip_value: clip the value's change from the rollout's, as the ratio.

  Returns:
    A :class:`Learner`.

  Examples:
    A one-step bandit (every episode one step; action 1 pays 1), 4 environments:

    >>> import jax, jax.numpy as jnp, optax, metaopt
    >>> cell = metaopt.recurrent.ElementwiseCell(lambda p: jnp.zeros(1), lambda h, p, x: p["u"] * x,
    ...                                lambda h, p, x: h)
    >>> bandit = lambda key, state, action: (jnp.ones(1), state, 1.0 * (action == 1), True)
    >>> system = metaopt.rl.agent_system(cell, env_reset=lambda key: (jnp.ones(1), 0),
    ...     env_step=bandit, heads=lambda r, o, x: (r["pi"] * o[0, 0], r["v"] * o[0, 0]),
    ...     horizon=10**6, num_envs=4)
    >>> theta = {"cell": {"u": jnp.ones((1, 1))}, "readout": {"pi": jnp.zeros(2), "v": 0.0}}
    >>> ppo = metaopt.rl.real_time_ppo(system, optax.adam(1e-2), num_steps=8)
    >>> state = ppo.init(jax.random.key(0), theta)
    >>> for _ in range(30):
    ...   state, metrics = jax.jit(ppo.step)(state)
    >>> float(jax.nn.softmax(state.theta["readout"]["pi"])[1]) > 0.6
    True
  """
  if not isinstance(system, agent.AgentSystem):
    raise ValueError(f"real_time_ppo needs an AgentSystem (from metaopt.rl.agent_system), got "
                     f"{type(system).__name__}")
  num_steps = base.check_count(num_steps, "num_steps")
  num_epochs = base.check_count(num_epochs, "num_epochs")
  num_minibatches = base.check_count(num_minibatches, "num_minibatches")
  if (num_steps * system.num_envs) % num_minibatches:
    raise ValueError(f"num_minibatches={num_minibatches} must divide num_steps * num_envs = "
                     f"{num_steps * system.num_envs}")
  if not base.check_float(clip, "clip") > 0:
    raise ValueError(f"clip must be > 0, got {clip}")
  if not 0.0 <= base.check_float(gae_lambda, "gae_lambda", positive=False) <= 1.0:
    raise ValueError(f"gae_lambda must be in [0, 1], got {gae_lambda}")
  cell = system.cell
  batch = num_steps * system.num_envs
  minibatch = batch // num_minibatches

  def init(key, theta):
    base.check_key(key)
    k_env, k_next = jax.random.split(key)
    inner = system.init(k_env, theta)
    traces = rtrl_elementwise.agent_start_traces(cell, theta["cell"], inner.obs)
    return RealTimePPOState(inner, traces, theta, optimizer.init(theta),
                            jax.random.key_data(k_next), jnp.zeros((), jnp.int32))

  def heads(theta, hidden, obs):
    outputs = elementwise.cell_outputs(cell, hidden, theta["cell"], obs)
    logits, value = system.heads(theta["readout"], outputs, obs)
    return jax.nn.log_softmax(logits), value

  def rollout(state, keys):
    theta = state.theta
    m0 = rtrl_elementwise.initial_traces(cell, theta["cell"])
    initial = jax.vmap(cell.initial)(theta["cell"])

    def body(carry, key):
      inner, traces = carry
      log_p, value = jax.vmap(lambda h, o: heads(theta, h, o))(inner.hidden, inner.obs)
      new_inner, aux = agent.transition(system, inner, theta, key)

      new_traces = jax.vmap(lambda h, m, d, x: rtrl_elementwise.agent_next_traces(
          cell, theta["cell"], h, m, d, x, initial, m0))(inner.hidden, traces, aux.done,
                                                         new_inner.obs)
      log_p_action = jnp.take_along_axis(log_p, aux.action[:, None], axis=1)[:, 0]
      stored = {"hidden": inner.hidden, "traces": traces, "obs": inner.obs,
                "action": aux.action, "log_p": log_p_action, "value": value,
                "reward": aux.reward, "done": aux.done}
      return (new_inner, new_traces), stored

    (inner, traces), stored = jax.lax.scan(body, (state.inner, state.traces), keys)
    _, last_value = jax.vmap(lambda h, o: heads(theta, h, o))(inner.hidden, inner.obs)
    return inner, traces, stored, last_value

  def advantages(stored, last_value):
    """GAE over the rollout, (num_steps, num_envs)."""
    not_done = 1.0 - stored["done"].astype(stored["value"].dtype)
    next_values = jnp.concatenate([stored["value"][1:], last_value[None]], axis=0)
    deltas = stored["reward"] + system.gamma * not_done * next_values - stored["value"]

    def body(carry, x):
      delta, nd = x
      carry = delta + system.gamma * gae_lambda * nd * carry
      return carry, carry

    _, adv = jax.lax.scan(body, jnp.zeros_like(last_value), (deltas, not_done), reverse=True)
    return adv, adv + stored["value"]

  def sample_loss(hidden, cell_params, readout, obs, action, old_log_p, old_value, advantage,
                  ret):
    log_p, value = heads({"cell": cell_params, "readout": readout}, hidden, obs)
    ratio = jnp.exp(log_p[action] - old_log_p)
    surrogate = -jnp.minimum(ratio * advantage,
                             jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantage)
    value_loss = 0.5 * (value - ret) ** 2
    if clip_value:
      clipped = old_value + jnp.clip(value - old_value, -clip, clip)
      value_loss = jnp.maximum(value_loss, 0.5 * (clipped - ret) ** 2)
    entropy = -jnp.sum(jnp.exp(log_p) * log_p)
    loss = surrogate + system.value_cost * value_loss - system.entropy_cost * entropy
    return loss, {"value_loss": value_loss, "entropy": entropy,
                  "clipped": (jnp.abs(ratio - 1.0) > clip).astype(value.dtype)}

  def minibatch_grad(theta, data):
    """Mean over the minibatch of the PPO loss and its gradient through the stored traces."""
    adv = data["advantage"]
    if normalize_advantages:
      adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)

    def one(hidden, traces, obs, action, old_log_p, old_value, advantage, ret):
      (loss, parts), (delta, direct, d_readout) = jax.value_and_grad(
          sample_loss, argnums=(0, 1, 2), has_aux=True)(
              hidden, theta["cell"], theta["readout"], obs, action, old_log_p, old_value,
              advantage, ret)
      return loss, parts, {"cell": rtrl_elementwise.contract(delta, direct, traces),
                           "readout": d_readout}

    losses, parts, grads = jax.vmap(one)(data["hidden"], data["traces"], data["obs"],
                                         data["action"], data["log_p"], data["value"], adv,
                                         data["return"])
    mean = lambda tree: jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)
    return jnp.mean(losses), mean(parts), mean(grads)

  def step(state):
    key = jax.random.wrap_key_data(state.key)
    k_roll, k_shuffle, k_next = jax.random.split(key, 3)
    inner, traces, stored, last_value = rollout(state, jax.random.split(k_roll, num_steps))
    adv, ret = advantages(stored, last_value)
    data = {**stored, "advantage": adv, "return": ret}
    data = jax.tree.map(lambda x: x.reshape((batch,) + x.shape[2:]), data)

    def epoch(carry, k):
      theta, opt_state = carry
      order = jax.random.permutation(k, batch).reshape(num_minibatches, minibatch)

      def update(carry, idx):
        theta, opt_state = carry
        loss, parts, grad = minibatch_grad(theta, jax.tree.map(lambda x: x[idx], data))
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), (loss, parts)

      return jax.lax.scan(update, (theta, opt_state), order)

    (theta, opt_state), (losses, parts) = jax.lax.scan(
        epoch, (state.theta, state.opt_state), jax.random.split(k_shuffle, num_epochs))
    inner = inner._replace(
        entropy=inner.entropy + jnp.mean(parts["entropy"]).astype(inner.entropy.dtype)
        * num_steps,
        value_loss=inner.value_loss + jnp.mean(parts["value_loss"]).astype(
            inner.value_loss.dtype) * num_steps)
    metrics = {"loss": jnp.mean(losses), "clipped": jnp.mean(parts["clipped"]),
               "trace_norm": rtrl_elementwise.trace_norm(traces)}
    new_state = RealTimePPOState(inner, traces, theta, opt_state, jax.random.key_data(k_next),
                                 state.updates + 1)
    return new_state, metrics

  return Learner(init, step)
