"""PPO for a recurrent agent with truncated BPTT over sequences of its rollout: how GRU and LSTM
agents are trained in RL (the comparators of Elelimy et al. 2024)."""

from __future__ import annotations

import functools

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt._src.core import base
from metaopt._src.rl import agent
from metaopt._src.rl import ppo


class BPTTPPOState(NamedTuple):
  """State of :func:`bptt_ppo`: a :class:`RealTimePPOState` without traces (the environments'
  ``inner`` state, never reset between rollouts; ``theta``; ``opt_state``; the ``key`` data of
  the next rollout; the rollouts done, ``updates``)."""
  inner: agent.AgentState
  theta: Any
  opt_state: Any
  key: jax.Array
  updates: jax.Array


def bptt_ppo(system: agent.AgentSystem, optimizer: optax.GradientTransformation, *,
             num_steps: int = 128, truncation: int | None = None, num_epochs: int = 4,
             num_minibatches: int = 4, clip: float = 0.2, gae_lambda: float = 0.95,
             normalize_advantages: bool = True, clip_value: bool = True) -> ppo.Learner:
  """PPO with truncated backpropagation through time, for an agent with any recurrent layer.

  Each ``step`` collects ``num_steps`` steps of every environment with the
  current weights (storing each step's observation, action, log-probability,
  value and the state the layer's step started from), computes GAE advantages,
  then cuts the rollout into sequences of ``truncation`` steps per environment
  and runs ``num_epochs`` passes over them, shuffled into ``num_minibatches``
  minibatches of whole sequences. Each update re-runs the layer over its
  sequences with the current weights, from each sequence's stored starting
  state (``stop_gradient``: the truncation; restarting from the cell's initial
  state after ``done``), and backpropagates the clipped surrogate loss of
  :func:`real_time_ppo` through the sequence: the gradient of a step's loss
  reaches back at most to its sequence's start. ``truncation=num_steps`` (the
  default, None) backpropagates through the whole rollout.

  Args:
    system: an :class:`AgentSystem` from :func:`metaopt.rl.agent_system`; any
      layer (a dense GRU or LSTM as one block "unit", or an element-wise one).
    optimizer: an optax transformation.
    num_steps: rollout length per environment.
    truncation: BPTT sequence length; must divide ``num_steps`` (None: ``num_steps``).
    num_minibatches: must divide ``num_steps / truncation * system.num_envs`` (the sequences).
    num_epochs, clip, gae_lambda, normalize_advantages, clip_value: as :func:`real_time_ppo`.

  Returns:
    A :class:`Learner`.

  Examples:
    Continuous actions (a Gaussian policy): one-step episodes whose reward
    -(a - 1)^2 peaks at a = 1; the policy's mean mu * h moves from 0 towards it.

    >>> import jax, jax.numpy as jnp, optax, metaopt
    >>> cell = metaopt.recurrent.ElementwiseCell(lambda p: jnp.zeros(1),
    ...     lambda h, p, x: jnp.tanh(p["w"] * h + p["u"] @ x), lambda h, p, x: h)
    >>> reach = lambda key, state, a: (jnp.ones(1), state, -jnp.sum((a - 1.0) ** 2), True)
    >>> system = metaopt.rl.agent_system(
    ...     cell, env_reset=lambda key: (jnp.ones(1), 0), env_step=reach,
    ...     heads=lambda r, o, x: ((r["mu"] * o[0], r["log_std"]), r["v"] * o[0, 0]),
    ...     horizon=10**6, num_envs=8, policy=metaopt.rl.gaussian())
    >>> theta = {"cell": {"w": jnp.full(1, 0.5), "u": jnp.ones((1, 1))},
    ...          "readout": {"mu": jnp.zeros(1), "log_std": jnp.zeros(1), "v": 0.0}}
    >>> learner = metaopt.rl.bptt_ppo(system, optax.adam(3e-2), num_steps=8, truncation=4)
    >>> state = learner.init(jax.random.key(0), theta)
    >>> step = jax.jit(learner.step)
    >>> for _ in range(50):
    ...   state, metrics = step(state)
    >>> mean = state.theta["readout"]["mu"][0] * jnp.tanh(state.theta["cell"]["u"][0, 0])
    >>> float(mean) > 0.5
    True
  """
  ppo.check_system(system, "bptt_ppo")  # before reading num_envs
  num_steps = base.check_count(num_steps, "num_steps")
  truncation = num_steps if truncation is None else base.check_count(truncation, "truncation")
  if num_steps % truncation:
    raise ValueError(f"truncation={truncation} must divide num_steps={num_steps}")
  num_chunks = num_steps // truncation
  num_steps, num_epochs, num_minibatches = ppo.check_options(
      system, num_steps, num_epochs, num_minibatches, clip, gae_lambda, name="bptt_ppo",
      samples_per_env=num_chunks)
  cell = system.cell

  def init(key, theta):
    base.check_key(key)
    k_env, k_next = jax.random.split(key)
    return BPTTPPOState(system.init(k_env, theta), theta, optimizer.init(theta),
                        jax.random.key_data(k_next), jnp.zeros((), jnp.int32))

  heads = functools.partial(agent.policy_and_value, system)

  def rollout(state, keys):
    theta = state.theta

    def body(inner, key):
      params, value = jax.vmap(lambda h, o: heads(theta, h, o))(inner.hidden, inner.obs)
      new_inner, aux = agent.transition(system, inner, theta, key)
      log_p = jax.vmap(system.policy.log_prob)(params, aux.action)
      stored = {"begin": inner.begin, "obs": inner.obs, "action": aux.action, "log_p": log_p,
                "value": value, "reward": system.reward_scale * aux.reward, "done": aux.done}
      return new_inner, stored

    inner, stored = jax.lax.scan(body, state.inner, keys)
    _, last_value = jax.vmap(lambda h, o: heads(theta, h, o))(inner.hidden, inner.obs)
    return inner, stored, last_value

  def sequences(data):
    """(num_steps, num_envs, ...) -> (num_chunks * num_envs, truncation, ...)."""
    def cut(x):
      x = x.reshape((num_chunks, truncation) + x.shape[1:])
      x = jnp.moveaxis(x, 2, 1)  # (chunks, envs, truncation, ...)
      return x.reshape((-1, truncation) + x.shape[3:])
    return jax.tree.map(cut, data)

  def sequence_loss(theta, seq, adv):
    """Sum over one sequence of the PPO loss, the layer re-run from its stored start."""
    initial = jax.vmap(cell.initial)(theta["cell"])
    # Within the sequence, step t starts from h_{t-1}, or the initial state after done_{t-1}.
    restart = jnp.concatenate([jnp.zeros(1, bool), seq["done"][:-1]])
    start = jax.lax.stop_gradient(seq["begin"][0])  # the truncation

    def body(hidden, t):
      begin = jnp.where(t == 0, start, jnp.where(restart[t], initial, hidden))
      x = agent.layer_input(system, theta["readout"], seq["obs"][t])
      hidden = jax.vmap(cell.step, (0, 0, None))(begin, theta["cell"], x)
      params, value = agent.heads_of_input(system, theta, hidden, x)  # x encoded once
      loss, parts = ppo.surrogate(system, params, value, seq["action"][t], seq["log_p"][t],
                                  seq["value"][t], adv[t], seq["return"][t], clip=clip,
                                  clip_value=clip_value)
      return hidden, (loss, parts)

    _, (losses, parts) = jax.lax.scan(body, start, jnp.arange(truncation))
    return jnp.sum(losses), parts

  def minibatch_grad(theta, data):
    adv = ppo.normalize(data["advantage"]) if normalize_advantages else data["advantage"]
    count = adv.size

    def loss_fn(theta):
      losses, parts = jax.vmap(lambda s, a: sequence_loss(theta, s, a))(data, adv)
      return jnp.sum(losses) / count, parts

    (loss, parts), grad = jax.value_and_grad(loss_fn, has_aux=True)(theta)
    return loss, jax.tree.map(jnp.mean, parts), grad

  def step(state):
    key = jax.random.wrap_key_data(state.key)
    k_roll, k_shuffle, k_next = jax.random.split(key, 3)
    inner, stored, last_value = rollout(state, jax.random.split(k_roll, num_steps))
    adv, ret = ppo.advantages(system, stored, last_value, gae_lambda)
    data = sequences({**stored, "advantage": adv, "return": ret})
    (theta, opt_state), (losses, parts) = ppo.optimise(
        optimizer, state.theta, state.opt_state, data, k_shuffle, minibatch_grad,
        num_epochs=num_epochs, num_minibatches=num_minibatches)
    metrics = {"loss": jnp.mean(losses), "clipped": jnp.mean(parts["clipped"])}
    new_state = BPTTPPOState(ppo.record(inner, parts, num_steps), theta, opt_state,
                             jax.random.key_data(k_next), state.updates + 1)
    return new_state, metrics

  return ppo.Learner(init, step)
