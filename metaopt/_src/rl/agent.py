"""An online actor-critic agent in a partially observable environment, as an unrolled system.

The setting of Irie et al. (2023) and Elelimy et al. (2024): one element-wise
recurrent layer (eLSTM, RTU) reads each observation; a policy and a value
head read the layer's outputs; the weights are updated online, every
environment step, by the one-step actor-critic loss

  delta_t = r_t + gamma (1 - done_t) V(h_{t+1}) - V(h_t),
  L_t = -sg(delta_t) log pi(a_t | h_t) - c_e H(pi(. | h_t)) + c_v / 2 (sg(target_t) - V(h_t))^2,

with ``target_t = r_t + gamma (1 - done_t) V(h_{t+1})`` (semi-gradient TD, as
both papers' reference code).

How it fits the unrolled-system contract: the environment's state is part of
the inner state, and one inner step takes one environment step. The loss of
step t reads h_t (differentiable) and h_{t+1} only through ``stop_gradient``
(the bootstrap target), so it is a function of the state BEFORE the step:
that is what keeps exact RTRL exact here -- :func:`metaopt.rtrl_elementwise`
contracts dL_t/dh_t with the trace of h_t it held before updating it (a
one-step-delayed loss), and the sum over windows equals ``jax.grad`` of the
full unroll on the same keys. Actions are sampled from ``stop_gradient`` of
the policy with the step's key and enter the environment as integers; on
``done`` the hidden state (and, in RTRL, its trace) restarts from the cell's
initial state before the next episode's first observation is read.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.recurrent import elementwise
from metaopt._src.rl import policies


class AgentState(NamedTuple):
  """Inner state of an online agent; every leaf has a leading axis of ``num_envs``.

  Attributes:
    hidden: ``(num_envs, num_units, C)``, the layer's state after reading ``obs``.
    obs: ``(num_envs, obs_size)``, the latest observation.
    env: the environments' states.
    episode_return, episode_length: of the running episodes.
    returns: undiscounted return summed over the episodes finished so far.
    lengths: their lengths, summed.
    episodes: how many episodes finished so far.
    entropy, value_loss: the policy's entropy and the value loss, summed over
      steps so far (diagnostics, through ``stop_gradient``).
    begin: ``(num_envs, num_units, C)``, the state the layer's last step started
      from (``hidden``'s predecessor, or the cell's initial state after ``done``):
      what an encoder's one-step gradient differentiates through.
  """
  hidden: jax.Array
  obs: jax.Array
  env: Any
  episode_return: jax.Array
  episode_length: jax.Array
  returns: jax.Array
  lengths: jax.Array
  episodes: jax.Array
  entropy: jax.Array
  value_loss: jax.Array
  begin: jax.Array


class AgentSystem(NamedTuple):
  """An :class:`UnrolledSystem` (same first three fields) with the structure RTRL needs.

  ``theta = {"cell": ..., "readout": ...}`` as in :class:`ElementwiseSystem`.

  Attributes:
    init, step, horizon: the unrolled system (``step``'s loss is the mean of
      the actor-critic loss over the environments).
    cell: the :class:`ElementwiseCell`.
    env_reset: ``env_reset(key) -> (obs, env_state)`` of ONE environment.
    env_step: ``env_step(key, env_state, action) -> (obs, env_state, reward, done)``
      of ONE environment, resetting itself when ``done``.
    heads: ``heads(readout, outputs, x) -> (policy_params, value)`` of ONE environment
      (``x``: the layer's input, the observation or its encoding).
    num_envs: environments run side by side (vmapped).
    gamma, entropy_cost, value_cost: of the loss.
    policy: the :class:`Policy` of the actions (categorical or Gaussian).
    encode: ``encode(readout, obs) -> x``, a feed-forward encoder before the
      layer with its weights in ``theta["readout"]``, or None (x = obs).
    reward_scale: what the learning targets multiply rewards by (the returns
      recorded in the state stay the environment's).
  """
  init: Callable
  step: Callable
  horizon: int
  cell: elementwise.ElementwiseCell
  env_reset: Callable
  env_step: Callable
  heads: Callable
  num_envs: int
  gamma: float
  entropy_cost: float
  value_cost: float
  policy: policies.Policy = policies.categorical()
  encode: Callable | None = None
  reward_scale: float = 1.0


def agent_system(cell: elementwise.ElementwiseCell, *, env_reset: Callable, env_step: Callable,
                 heads: Callable, horizon: int, num_envs: int = 1, gamma: float = 0.99,
                 entropy_cost: float = 0.01, value_cost: float = 1.0,
                 policy: policies.Policy | None = None,
                 encode: Callable | None = None, reward_scale: float = 1.0) -> AgentSystem:
  """Builds the unrolled system of an online actor-critic agent with one element-wise layer.

  Args:
    cell: the per-unit recurrent cell (its ``step`` reads each observation).
    env_reset: ``env_reset(key) -> (obs, env_state)``, one environment.
    env_step: ``env_step(key, env_state, action) -> (obs, env_state, reward, done)``,
      one environment, auto-resetting (when ``done``, ``obs`` opens the next episode).
    heads: ``heads(readout, outputs, x) -> (policy_params, value)``: the
      policy's parameters (``policy``'s: logits ``(num_actions,)``, or a Gaussian's
      ``(mean, log_std)``) and the value, from the layer's outputs
      ``(num_units, O)`` (and its input ``x``, for a gate in the readout).
    horizon: inner steps before everything restarts from ``init`` (an endless
      run: a large number).
    num_envs: environments side by side; the loss is their mean.
    gamma: discount of the TD target, in [0, 1].
    entropy_cost: c_e >= 0. value_cost: c_v >= 0.
    policy: :func:`metaopt.rl.categorical` (the default) or :func:`metaopt.rl.gaussian`.
    encode: ``encode(readout, obs) -> x``: an encoder before the layer (the RTU
      paper's Dense 64 + tanh), its weights in ``theta["readout"]``. Generic
      estimators differentiate through it like any weight; ``rtrl_elementwise``
      and ``real_time_ppo`` give it its one-step gradient (through the layer's
      last step only, as the reference code: dL_t/dh_t dh_t/dx_t dx_t/dw).
    reward_scale: > 0; the TD and GAE targets read ``reward_scale * reward``
      (Pendulum's rewards of about -8 per step make value targets near -800);
      the recorded returns are the environment's.

  Returns:
    An :class:`AgentSystem`, usable by every estimator.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> cell = metaopt.recurrent.ElementwiseCell(initial=lambda p: jnp.zeros(1),
    ...     step=lambda h, p, x: jnp.tanh(p["w"] * h + p["u"] @ x), output=lambda h, p, x: h)
    >>> def env_step(key, t, action):  # reward 1 for action 1; episodes of 3 steps
    ...   done = t + 1 >= 3
    ...   t = jnp.where(done, 0, t + 1)
    ...   return jnp.ones(2) * t, t, (action == 1).astype(jnp.float32), done
    >>> system = metaopt.rl.agent_system(
    ...     cell, env_reset=lambda key: (jnp.zeros(2), jnp.int32(0)), env_step=env_step,
    ...     heads=lambda r, o, x: (r["pi"] @ o[:, 0], r["v"] @ o[:, 0]), horizon=100, num_envs=4)
    >>> theta = {"cell": {"w": jnp.full(3, 0.5), "u": jnp.ones((3, 2))},
    ...          "readout": {"pi": jnp.zeros((2, 3)), "v": jnp.zeros(3)}}
    >>> state, loss = system.step(system.init(jax.random.key(0), theta), theta, jax.random.key(1))
    >>> state.hidden.shape
    (4, 3, 1)
  """
  horizon = base.check_horizon(base.UnrolledSystem(None, None, horizon))
  num_envs = base.check_count(num_envs, "num_envs")
  gamma = base.check_float(gamma, "gamma", positive=False)
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f"gamma must be in [0, 1], got {gamma}")
  for name, value in (("entropy_cost", entropy_cost), ("value_cost", value_cost)):
    if base.check_float(value, name, positive=False) < 0:
      raise ValueError(f"{name} must be >= 0, got {value}")
  if policy is None:
    policy = policies.categorical()
  if not isinstance(policy, policies.Policy):
    raise ValueError(f"policy must be a metaopt.rl.Policy (categorical() or gaussian()), got "
                     f"{type(policy).__name__}")
  if not base.check_float(reward_scale, "reward_scale") > 0:
    raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
  if encode is not None and not callable(encode):
    raise ValueError(f"encode must be callable or None, got {type(encode).__name__}")

  def init(key, theta):
    elementwise.check_theta_layout(theta)
    obs, env = jax.vmap(env_reset)(jax.random.split(key, num_envs))
    initial = jax.vmap(cell.initial)(theta["cell"])
    x = jax.vmap(lambda o: layer_input(system, theta["readout"], o))(obs)
    hidden = jax.vmap(lambda x: _layer_step(cell, initial, theta["cell"], x))(x)
    zeros = jnp.zeros(num_envs, jnp.float32)
    count = jnp.zeros(num_envs, jnp.int32)
    begin = jnp.broadcast_to(initial, hidden.shape)
    return AgentState(hidden, obs, env, zeros, count, zeros, count, count, zeros, zeros, begin)

  system = AgentSystem(init, None, horizon, cell, env_reset, env_step, heads, num_envs, gamma,
                       entropy_cost, value_cost, policy, encode, float(reward_scale))

  def step(state, theta, key):
    new_state, aux = transition(system, state, theta, key)
    losses, parts = jax.vmap(lambda h, o, a: env_loss(system, theta, h, o, a))(
        state.hidden, state.obs, aux)
    return record(new_state, parts), jnp.mean(losses)

  return system._replace(step=step)


def _layer_step(cell, hidden, cell_params, x):
  return jax.vmap(cell.step, (0, 0, None))(hidden, cell_params, x)


def layer_input(system: AgentSystem, readout: Any, obs: jax.Array) -> jax.Array:
  """What the layer reads from one environment's observation: its encoding, or itself."""
  return obs if system.encode is None else system.encode(readout, obs)


def policy_and_value(system: AgentSystem, theta: Any, hidden: jax.Array,
                     obs: jax.Array) -> tuple[Any, jax.Array]:
  """The heads' output for one environment: (policy parameters, value) from h_t and o_t."""
  return heads_of_input(system, theta, hidden, layer_input(system, theta["readout"], obs))


def heads_of_input(system: AgentSystem, theta: Any, hidden: jax.Array,
                   x: jax.Array) -> tuple[Any, jax.Array]:
  """:func:`policy_and_value` from the layer's input ``x`` (the observation already encoded)."""
  return system.heads(theta["readout"],
                      elementwise.cell_outputs(system.cell, hidden, theta["cell"], x), x)


def with_encoder_step(system: AgentSystem, theta: Any, hidden: jax.Array, begin: jax.Array,
                      obs: jax.Array) -> jax.Array:
  """``hidden`` (one environment's), carrying the encoder's one-step gradient when there is one.

  Its value is ``hidden``; its derivative with respect to ``theta["readout"]``
  is that of the layer's last step, begin -> hidden, through the encoder only
  (begin and the layer's weights held fixed): what RTRL's traces leave out.
  """
  if system.encode is None:
    return hidden
  stop = jax.lax.stop_gradient
  stepped = _layer_step(system.cell, stop(begin), stop(theta["cell"]),
                        system.encode(theta["readout"], obs))
  return hidden + (stepped - stop(stepped))


class Transition(NamedTuple):
  """What the loss of one environment's step needs besides h_t: all theta-free."""
  action: jax.Array
  target: jax.Array
  done: jax.Array
  reward: jax.Array  # the environment's (unscaled)


def transition(system: AgentSystem, state: AgentState, theta: Any,
               key: jax.Array) -> tuple[AgentState, Transition]:
  """One environment step of every environment: act, step, reset, read the next observation.

  The bootstrap target reads the new hidden state through ``stop_gradient``.
  """
  cell = system.cell
  k_act, k_env = jax.random.split(key)
  envs = system.num_envs
  initial = jax.vmap(cell.initial)(theta["cell"])
  stop = jax.lax.stop_gradient

  def one(hidden, obs, env, k_a, k_e):
    x = stop(layer_input(system, theta["readout"], obs))
    params, _ = system.heads(stop(theta["readout"]),
                             stop(elementwise.cell_outputs(cell, hidden, theta["cell"], x)), x)
    action = system.policy.sample(k_a, params)
    new_obs, env, reward, done = system.env_step(k_e, env, action)
    start = jnp.where(done, initial, hidden)
    new_x = layer_input(system, theta["readout"], new_obs)
    new_hidden = _layer_step(cell, start, theta["cell"], new_x)
    _, next_value = system.heads(
        theta["readout"], elementwise.cell_outputs(cell, new_hidden, theta["cell"], new_x), new_x)
    target = stop(system.reward_scale * reward + system.gamma * (1.0 - done) * next_value)
    return new_hidden, start, new_obs, env, reward, done, Transition(action, target, done, reward)

  hidden, begin, obs, env, reward, done, aux = jax.vmap(one)(
      state.hidden, state.obs, state.env, jax.random.split(k_act, envs),
      jax.random.split(k_env, envs))
  episode_return = state.episode_return + reward.astype(state.episode_return.dtype)
  episode_length = state.episode_length + 1
  finished = done.astype(jnp.int32)
  new_state = AgentState(
      hidden, obs, env,
      jnp.where(done, 0.0, episode_return), jnp.where(done, 0, episode_length),
      state.returns + jnp.where(done, episode_return, 0.0),
      state.lengths + finished * episode_length, state.episodes + finished, state.entropy,
      state.value_loss, begin)
  return new_state, aux


def record(state: AgentState, parts: dict) -> AgentState:
  """Adds one step's per-environment entropy and value loss to the running sums."""
  stop = jax.lax.stop_gradient
  add = lambda total, x: total + stop(x).astype(total.dtype)
  return state._replace(entropy=add(state.entropy, parts["entropy"]),
                        value_loss=add(state.value_loss, parts["value_loss"]))


def env_loss(system: AgentSystem, theta: Any, hidden: jax.Array, obs: jax.Array,
             aux: Transition) -> tuple[jax.Array, dict]:
  """The actor-critic loss of one environment's step, a function of h_t; and its parts."""
  x = layer_input(system, theta["readout"], obs)
  outputs = elementwise.cell_outputs(system.cell, hidden, theta["cell"], x)
  return loss_from_outputs(system, theta["readout"], outputs, x, aux)


def loss_from_outputs(system: AgentSystem, readout: Any, outputs: jax.Array, x: jax.Array,
                      aux: Transition) -> tuple[jax.Array, dict]:
  """The actor-critic loss from the layer's outputs and input ``x``; and its parts."""
  params, value = system.heads(readout, outputs, x)
  entropy = system.policy.entropy(params)
  td = aux.target - value
  loss = (-jax.lax.stop_gradient(td) * system.policy.log_prob(params, aux.action)
          - system.entropy_cost * entropy + 0.5 * system.value_cost * td ** 2)
  return loss, {"entropy": entropy, "value_loss": 0.5 * td ** 2}
