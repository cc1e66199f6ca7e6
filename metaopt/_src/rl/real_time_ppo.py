"""Real-time PPO (Elelimy et al. 2024): PPO for a recurrent agent whose gradients come from
exact RTRL traces stored along each rollout."""

from __future__ import annotations

import functools

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt._src.core import base
from metaopt._src.estimators import rtrl_elementwise
from metaopt._src.recurrent import elementwise
from metaopt._src.rl import agent
from metaopt._src.rl import ppo
from metaopt._src.rl.ppo import Learner  # pylint: disable=unused-import  (its home before)


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
  reference code, esraaelelimy/rtus); the heads' gradient is plain backprop, an
  encoder's (``system.encode``) its one-step gradient through the stored begin state.
  Storing the traces makes the update's memory grow with ``num_steps`` times the
  traces (for a 16-unit RTU behind a 64-wide encoder, 128 steps and 8 environments:
  about 20 MB per agent, against 0.6 MB for :func:`bptt_ppo`).
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
  num_steps, num_epochs, num_minibatches = ppo.check_options(
      system, num_steps, num_epochs, num_minibatches, clip, gae_lambda, name="real_time_ppo")
  cell = system.cell
  batch = num_steps * system.num_envs

  def init(key, theta):
    base.check_key(key)
    k_env, k_next = jax.random.split(key)
    inner = system.init(k_env, theta)
    traces = rtrl_elementwise.agent_start_traces(
        cell, theta["cell"], rtrl_elementwise.layer_inputs(system, theta, inner.obs))
    return RealTimePPOState(inner, traces, theta, optimizer.init(theta),
                            jax.random.key_data(k_next), jnp.zeros((), jnp.int32))

  heads = functools.partial(agent.policy_and_value, system)

  def rollout(state, keys):
    theta = state.theta
    m0 = rtrl_elementwise.initial_traces(cell, theta["cell"])
    initial = jax.vmap(cell.initial)(theta["cell"])

    def body(carry, key):
      inner, traces = carry
      params, value = jax.vmap(lambda h, o: heads(theta, h, o))(inner.hidden, inner.obs)
      new_inner, aux = agent.transition(system, inner, theta, key)
      new_x = rtrl_elementwise.layer_inputs(system, theta, new_inner.obs)
      new_traces = jax.vmap(lambda h, m, d, x: rtrl_elementwise.agent_next_traces(
          cell, theta["cell"], h, m, d, x, initial, m0))(inner.hidden, traces, aux.done, new_x)
      log_p = jax.vmap(system.policy.log_prob)(params, aux.action)
      stored = {"hidden": inner.hidden, "begin": inner.begin, "traces": traces, "obs": inner.obs,
                "action": aux.action, "log_p": log_p, "value": value, "reward": system.reward_scale * aux.reward,
                "done": aux.done}
      return (new_inner, new_traces), stored

    (inner, traces), stored = jax.lax.scan(body, (state.inner, state.traces), keys)
    _, last_value = jax.vmap(lambda h, o: heads(theta, h, o))(inner.hidden, inner.obs)
    return inner, traces, stored, last_value

  def minibatch_grad(theta, data):
    """Mean over the minibatch of the PPO loss and its gradient through the stored traces."""
    adv = ppo.normalize(data["advantage"]) if normalize_advantages else data["advantage"]

    def one(hidden, begin, traces, obs, action, old_log_p, old_value, advantage, ret):
      def loss_fn(h, p, r):
        theta = {"cell": p, "readout": r}
        h = agent.with_encoder_step(system, theta, h, begin, obs)  # the encoder's one step
        params, value = heads(theta, h, obs)
        return ppo.surrogate(system, params, value, action, old_log_p, old_value, advantage,
                             ret, clip=clip, clip_value=clip_value)

      (loss, parts), (delta, direct, d_readout) = jax.value_and_grad(
          loss_fn, argnums=(0, 1, 2), has_aux=True)(hidden, theta["cell"], theta["readout"])
      return loss, parts, {"cell": rtrl_elementwise.contract(delta, direct, traces),
                           "readout": d_readout}

    losses, parts, grads = jax.vmap(one)(data["hidden"], data["begin"], data["traces"],
                                         data["obs"], data["action"], data["log_p"],
                                         data["value"], adv, data["return"])
    mean = lambda tree: jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)
    return jnp.mean(losses), mean(parts), mean(grads)

  def step(state):
    key = jax.random.wrap_key_data(state.key)
    k_roll, k_shuffle, k_next = jax.random.split(key, 3)
    inner, traces, stored, last_value = rollout(state, jax.random.split(k_roll, num_steps))
    adv, ret = ppo.advantages(system, stored, last_value, gae_lambda)
    data = {**stored, "advantage": adv, "return": ret}
    data = jax.tree.map(lambda x: x.reshape((batch,) + x.shape[2:]), data)
    (theta, opt_state), (losses, parts) = ppo.optimise(
        optimizer, state.theta, state.opt_state, data, k_shuffle, minibatch_grad,
        num_epochs=num_epochs, num_minibatches=num_minibatches)
    metrics = {"loss": jnp.mean(losses), "clipped": jnp.mean(parts["clipped"]),
               "trace_norm": rtrl_elementwise.trace_norm(traces)}
    new_state = RealTimePPOState(ppo.record(inner, parts, num_steps), traces, theta, opt_state,
                                 jax.random.key_data(k_next), state.updates + 1)
    return new_state, metrics

  return Learner(init, step)
