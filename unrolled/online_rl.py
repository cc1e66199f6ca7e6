"""An online actor-critic agent (one recurrent layer, policy and value heads) in a POMDP."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import metaopt
from unrolled import cells
from unrolled import envs

# The agent's recurrent layers: the element-wise cells of the papers (RTUs with our defaults and
# the reference code's; eLSTM with its output gate in the cell or, as the reference, in the
# readout; LRUs, the RTU paper's main comparator), a dense tanh baseline and the dense GRU and
# LSTM, the comparators trained with truncated BPTT.
AGENT_CELLS = ("rtu_linear", "rtu_nonlinear", "rtu_linear_reference", "rtu_nonlinear_reference",
               "elstm", "elstm_readout_gate", "dense_tanh", "lru", "gru", "lstm")


# Agents never reach their horizon; it only has to be a multiple of every window length:
# 14,414,400 = 4 * online_rnn.ENDLESS = 2^6 3^2 5^2 7 11 13 is divisible by 1..16, 32 and 64.
HORIZON = 14_414_400


class OnlineAgent(NamedTuple):
  """An agent trained online.

  Attributes:
    system: a :class:`metaopt.rl.AgentSystem`.
    theta: initial weights, ``{"cell": ..., "readout": {"pi_w", "pi_b", "v_w", "v_b"}}``.
    env: the :class:`unrolled.envs.Env`.
    description: one line.
    num_params: number of weights.
  """
  system: Any
  theta: Any
  env: envs.Env
  description: str
  num_params: int


def dense_block(layer: cells.RecurrentLayer) -> metaopt.recurrent.ElementwiseCell:
  """A dense layer (``layer.dense_step``: tanh RNN, GRU, LSTM) as ONE "unit" of all its channels.

  Every channel reads every channel, so the layer is a single block whose
  state is the layer's ``(num_units, C)`` state flattened; its output is the
  first ``layer.num_outputs`` channels of each unit (an LSTM's h, not c). On it
  :func:`metaopt.rtrl_elementwise` is plain exact RTRL (a trace of
  num_units x C x all weights), and every generic estimator applies.
  """
  channels, outputs = layer.num_channels, layer.num_outputs

  def step(h, p, x):
    return layer.dense_step(h.reshape(-1, channels), p, x).reshape(-1)

  def initial(p):
    return jnp.zeros(p["W_h"].shape[1] * channels, p["W_h"].dtype)

  return metaopt.recurrent.ElementwiseCell(
      initial=initial, step=step, output=lambda h, p, x: h.reshape(-1, channels)[:, :outputs]
      .reshape(-1))


def online_agent(*, cell: str = "rtu_linear", env: str = "memory_chain", hidden_size: int = 16,
                 seed: int = 0, num_envs: int = 8, gamma: float = 0.99,
                 entropy_cost: float = 0.01, value_cost: float = 1.0,
                 env_options: dict | None = None, head_hidden: int = 0,
                 encoder_size: int = 0, reward_scale: float = 1.0) -> OnlineAgent:
  """Builds an actor-critic agent with one recurrent layer and linear heads.

  Discrete-action environments get a categorical policy; continuous ones
  (``env.continuous``) a Gaussian with a learned, state-independent log
  standard deviation (initially 0), as PPO's reference implementations.

  Args:
    cell: one of ``AGENT_CELLS``.
    env: one of ``envs.ENVS``.
    hidden_size: recurrent units.
    seed: makes the initial weights.
    num_envs: environments side by side.
    gamma, entropy_cost, value_cost: of the actor-critic loss (:func:`metaopt.rl.agent_system`).
    env_options: keyword options of the environment (e.g. ``{"memory_length": 20}``).
    head_hidden: 0 for linear policy and value heads; else each head is a tanh
      layer of this many units and a linear layer (the RTU paper's code: 64).
      The heads get plain backprop, so exact RTRL stays exact.
    encoder_size: 0 for none; else a tanh layer of this many units encodes
      each observation before the recurrent layer (the RTU paper's network:
      Dense 64 + tanh). Its weights sit in ``theta["readout"]`` ("enc_w",
      "enc_b"): generic estimators backpropagate into it through their windows,
      ``rtrl_elementwise`` and real-time PPO give it its one-step gradient, as
      the reference code.
    reward_scale: what the learning targets multiply rewards by
      (:func:`metaopt.rl.agent_system`); returns are reported unscaled.

  Returns:
    An :class:`OnlineAgent`.
  """
  if cell not in AGENT_CELLS:
    raise ValueError(f"unknown cell {cell!r}; choose one of {list(AGENT_CELLS)}")
  if not isinstance(hidden_size, int) or hidden_size < 1:
    raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
  for name, value in (("head_hidden", head_hidden), ("encoder_size", encoder_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")
  environment = envs.make(env, **(env_options or {}))
  k_cell, k_pi, k_v = jax.random.split(jax.random.key(seed), 3)
  input_size = encoder_size or environment.obs_size
  if cell in cells.DENSE_CELLS:
    layer = cells.DENSE_CELLS[cell]()
    recurrent = dense_block(layer)
    dense = layer.init_params(k_cell, input_size, hidden_size)
    cell_params = jax.tree.map(lambda x: x[None], dense)  # one block "unit"
    num_features = hidden_size * layer.num_outputs
  elif cell == "elstm_readout_gate":
    layer = cells.elstm(output_gate="readout")
    recurrent = layer.cell
    cell_params = layer.init_params(k_cell, input_size, hidden_size)
    num_features = hidden_size
  else:
    layer = cells.CELLS[cell]()
    recurrent = layer.cell
    cell_params = layer.init_params(k_cell, input_size, hidden_size)
    num_features = hidden_size * layer.num_outputs
  head_in = head_hidden or num_features
  scale = 1.0 / jnp.sqrt(head_in)
  theta = {"cell": cell_params,
           "readout": {"pi_w": jax.random.normal(k_pi, (environment.num_actions, head_in))
                               * 0.1 * scale,
                       "pi_b": jnp.zeros(environment.num_actions),
                       "v_w": jax.random.normal(k_v, (head_in,)) * 0.1 * scale,
                       "v_b": jnp.zeros(())}}
  if environment.continuous:  # a Gaussian policy: (mean, log_std)
    theta["readout"]["log_std"] = jnp.zeros(environment.num_actions)
  if encoder_size:
    k_enc = jax.random.fold_in(k_cell, 3)
    theta["readout"]["enc_w"] = (jax.random.normal(k_enc, (encoder_size, environment.obs_size))
                                 / jnp.sqrt(environment.obs_size))
    theta["readout"]["enc_b"] = jnp.zeros(encoder_size)
  if head_hidden:
    k_ph, k_vh = jax.random.split(jax.random.fold_in(k_cell, 2))
    for name, k in (("pi", k_ph), ("v", k_vh)):
      theta["readout"][f"{name}_hidden_w"] = (jax.random.normal(k, (head_hidden, num_features))
                                              / jnp.sqrt(num_features))
      theta["readout"][f"{name}_hidden_b"] = jnp.zeros(head_hidden)
  gate_in_readout = cell == "elstm_readout_gate"
  if gate_in_readout:  # the reference's dense output gate over [x; c], outside the RTRL layer
    k_gate = jax.random.fold_in(k_cell, 1)
    fan_in = input_size + hidden_size
    theta["readout"]["gate_w"] = (jax.random.normal(k_gate, (hidden_size, fan_in))
                                  / jnp.sqrt(fan_in))
    theta["readout"]["gate_b"] = jnp.zeros(hidden_size)

  def heads(readout, outputs, obs):
    features = outputs.reshape(-1)
    if gate_in_readout:
      gate_in = jnp.concatenate([obs.astype(features.dtype), features])
      features = jax.nn.sigmoid(readout["gate_w"] @ gate_in + readout["gate_b"]) * features
    if head_hidden:
      pi_in = jnp.tanh(readout["pi_hidden_w"] @ features + readout["pi_hidden_b"])
      v_in = jnp.tanh(readout["v_hidden_w"] @ features + readout["v_hidden_b"])
    else:
      pi_in = v_in = features
    policy_out = readout["pi_w"] @ pi_in + readout["pi_b"]
    if environment.continuous:
      policy_out = (policy_out, readout["log_std"])
    return policy_out, readout["v_w"] @ v_in + readout["v_b"]

  def encode(readout, obs):
    return jnp.tanh(readout["enc_w"] @ obs.astype(readout["enc_w"].dtype) + readout["enc_b"])

  system = metaopt.rl.agent_system(
      recurrent, env_reset=environment.reset, env_step=environment.step, heads=heads,
      horizon=HORIZON, num_envs=num_envs, gamma=gamma, entropy_cost=entropy_cost,
      value_cost=value_cost,
      policy=metaopt.rl.gaussian() if environment.continuous else metaopt.rl.categorical(),
      encode=encode if encoder_size else None, reward_scale=reward_scale)
  num_params = sum(x.size for x in jax.tree.leaves(theta))
  encoder = f"Dense {encoder_size} + tanh encoder, " if encoder_size else ""
  description = (f"agent with {encoder}{cell} ({hidden_size} units, {num_params} weights), "
                 f"{num_envs} envs of {environment.description}")
  return OnlineAgent(system, theta, environment, description, num_params)


def episode_stats(state: metaopt.rl.AgentState) -> dict:
  """Totals over environments of the finished episodes' returns, lengths and count."""
  return {"returns": jnp.sum(state.returns), "lengths": jnp.sum(state.lengths),
          "episodes": jnp.sum(state.episodes), "entropy": jnp.sum(state.entropy),
          "value_loss": jnp.sum(state.value_loss)}
