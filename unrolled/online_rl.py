"""An online actor-critic agent (one recurrent layer, policy and value heads) in a POMDP."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import metaopt
from unrolled import cells
from unrolled import envs
from unrolled import online_rnn

# The agent's recurrent layers: the element-wise cells of the papers (RTUs with our defaults and
# the reference code's; eLSTM with its output gate in the cell or, as the reference, in the
# readout; LRUs, the RTU paper's main comparator) and a dense tanh baseline.
AGENT_CELLS = ("rtu_linear", "rtu_nonlinear", "rtu_linear_reference", "rtu_nonlinear_reference",
               "elstm", "elstm_readout_gate", "dense_tanh", "lru")


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


def dense_tanh_block(num_units: int) -> metaopt.recurrent.ElementwiseCell:
  """A dense tanh layer as ONE "unit" of ``num_units`` channels: h' = tanh(W_h h + W_x x + b).

  Every channel reads every channel, so the layer is a single block; on it,
  :func:`metaopt.rtrl_elementwise` is plain exact RTRL (a trace of
  num_units x all weights), and every generic estimator applies.
  """
  del num_units

  def step(h, p, x):
    return jnp.tanh(p["W_h"] @ h + p["W_x"] @ x.astype(p["W_x"].dtype) + p["b"])

  return metaopt.recurrent.ElementwiseCell(initial=lambda p: jnp.zeros_like(p["b"]), step=step,
                                 output=lambda h, p, x: h)


def online_agent(*, cell: str = "rtu_linear", env: str = "memory_chain", hidden_size: int = 16,
                 seed: int = 0, num_envs: int = 8, gamma: float = 0.99,
                 entropy_cost: float = 0.01, value_cost: float = 1.0,
                 env_options: dict | None = None, head_hidden: int = 0) -> OnlineAgent:
  """Builds an actor-critic agent with one recurrent layer and linear heads.

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

  Returns:
    An :class:`OnlineAgent`.
  """
  if cell not in AGENT_CELLS:
    raise ValueError(f"unknown cell {cell!r}; choose one of {list(AGENT_CELLS)}")
  if not isinstance(hidden_size, int) or hidden_size < 1:
    raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
  if isinstance(head_hidden, bool) or not isinstance(head_hidden, int) or head_hidden < 0:
    raise ValueError(f"head_hidden must be an int >= 0, got {head_hidden!r}")
  environment = envs.make(env, **(env_options or {}))
  k_cell, k_pi, k_v = jax.random.split(jax.random.key(seed), 3)
  if cell == "dense_tanh":
    recurrent = dense_tanh_block(hidden_size)
    dense = cells.dense_tanh().init_params(k_cell, environment.obs_size, hidden_size)
    cell_params = jax.tree.map(lambda x: x[None], dense)  # one block "unit"
    num_features = hidden_size
  elif cell == "elstm_readout_gate":
    layer = cells.elstm(output_gate="readout")
    recurrent = layer.cell
    cell_params = layer.init_params(k_cell, environment.obs_size, hidden_size)
    num_features = hidden_size
  else:
    layer = cells.CELLS[cell]()
    recurrent = layer.cell
    cell_params = layer.init_params(k_cell, environment.obs_size, hidden_size)
    num_features = hidden_size * layer.num_outputs
  head_in = head_hidden or num_features
  scale = 1.0 / jnp.sqrt(head_in)
  theta = {"cell": cell_params,
           "readout": {"pi_w": jax.random.normal(k_pi, (environment.num_actions, head_in))
                               * 0.1 * scale,
                       "pi_b": jnp.zeros(environment.num_actions),
                       "v_w": jax.random.normal(k_v, (head_in,)) * 0.1 * scale,
                       "v_b": jnp.zeros(())}}
  if head_hidden:
    k_ph, k_vh = jax.random.split(jax.random.fold_in(k_cell, 2))
    for name, k in (("pi", k_ph), ("v", k_vh)):
      theta["readout"][f"{name}_hidden_w"] = (jax.random.normal(k, (head_hidden, num_features))
                                              / jnp.sqrt(num_features))
      theta["readout"][f"{name}_hidden_b"] = jnp.zeros(head_hidden)
  gate_in_readout = cell == "elstm_readout_gate"
  if gate_in_readout:  # the reference's dense output gate over [x; c], outside the RTRL layer
    k_gate = jax.random.fold_in(k_cell, 1)
    fan_in = environment.obs_size + hidden_size
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
    return (readout["pi_w"] @ pi_in + readout["pi_b"], readout["v_w"] @ v_in + readout["v_b"])

  system = metaopt.rl.agent_system(recurrent, env_reset=environment.reset,
                                env_step=environment.step, heads=heads,
                                horizon=online_rnn.ENDLESS, num_envs=num_envs, gamma=gamma,
                                entropy_cost=entropy_cost, value_cost=value_cost)
  num_params = sum(x.size for x in jax.tree.leaves(theta))
  description = (f"agent with {cell} ({hidden_size} units, {num_params} weights), "
                 f"{num_envs} envs of {environment.description}")
  return OnlineAgent(system, theta, environment, description, num_params)


def episode_stats(state: metaopt.rl.AgentState) -> dict:
  """Totals over environments of the finished episodes' returns, lengths and count."""
  return {"returns": jnp.sum(state.returns), "lengths": jnp.sum(state.lengths),
          "episodes": jnp.sum(state.episodes), "entropy": jnp.sum(state.entropy),
          "value_loss": jnp.sum(state.value_loss)}
