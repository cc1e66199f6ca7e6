"""What every PPO variant here shares: its options, GAE, the clipped surrogate loss and the
epochs of minibatch updates (Schulman et al. 2017; the defaults of the RTU paper's code)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt._src.core import base
from metaopt._src.rl import agent


class Learner(NamedTuple):
  """``init(key, theta) -> state``; ``step(state) -> (state, metrics)``: one rollout and update."""
  init: Any
  step: Any


def check_system(system, name: str):
  if not isinstance(system, agent.AgentSystem):
    raise ValueError(f"{name} needs an AgentSystem (from metaopt.rl.agent_system), got "
                     f"{type(system).__name__}")


def check_options(system, num_steps, num_epochs, num_minibatches, clip, gae_lambda, *,
                  name: str, samples_per_env: int | None = None):
  """Checks the shared options; returns (num_steps, num_epochs, num_minibatches)."""
  check_system(system, name)
  num_steps = base.check_count(num_steps, "num_steps")
  num_epochs = base.check_count(num_epochs, "num_epochs")
  num_minibatches = base.check_count(num_minibatches, "num_minibatches")
  samples = (num_steps if samples_per_env is None else samples_per_env) * system.num_envs
  if samples % num_minibatches:
    what = ("num_steps * num_envs" if samples_per_env is None
            else "(num_steps / truncation) * num_envs")
    raise ValueError(f"num_minibatches={num_minibatches} must divide {what} = {samples}")
  if not base.check_float(clip, "clip") > 0:
    raise ValueError(f"clip must be > 0, got {clip}")
  if not 0.0 <= base.check_float(gae_lambda, "gae_lambda", positive=False) <= 1.0:
    raise ValueError(f"gae_lambda must be in [0, 1], got {gae_lambda}")
  return num_steps, num_epochs, num_minibatches


def advantages(system: agent.AgentSystem, stored: dict, last_value: jax.Array,
               gae_lambda: float) -> tuple[jax.Array, jax.Array]:
  """GAE (Schulman et al. 2016) over a rollout, (num_steps, num_envs); and the returns."""
  not_done = 1.0 - stored["done"].astype(stored["value"].dtype)
  next_values = jnp.concatenate([stored["value"][1:], last_value[None]], axis=0)
  deltas = stored["reward"] + system.gamma * not_done * next_values - stored["value"]

  def body(carry, x):
    delta, nd = x
    carry = delta + system.gamma * gae_lambda * nd * carry
    return carry, carry

  _, adv = jax.lax.scan(body, jnp.zeros_like(last_value), (deltas, not_done), reverse=True)
  return adv, adv + stored["value"]


def normalize(adv: jax.Array) -> jax.Array:
  return (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)


def surrogate(system: agent.AgentSystem, policy_params, value, action, old_log_p, old_value,
              advantage, ret, *, clip: float, clip_value: bool) -> tuple[jax.Array, dict]:
  """One sample's PPO loss -min(r A, clip(r) A) + c_v/2 (V - R)^2 - c_e H, and its parts."""
  log_p = system.policy.log_prob(policy_params, action)
  ratio = jnp.exp(log_p - old_log_p)
  loss_pi = -jnp.minimum(ratio * advantage, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantage)
  value_loss = 0.5 * (value - ret) ** 2
  if clip_value:
    clipped = old_value + jnp.clip(value - old_value, -clip, clip)
    value_loss = jnp.maximum(value_loss, 0.5 * (clipped - ret) ** 2)
  entropy = system.policy.entropy(policy_params)
  loss = loss_pi + system.value_cost * value_loss - system.entropy_cost * entropy
  return loss, {"value_loss": value_loss, "entropy": entropy,
                "clipped": (jnp.abs(ratio - 1.0) > clip).astype(value.dtype)}


def optimise(optimizer: optax.GradientTransformation, theta, opt_state, data: dict,
             key: jax.Array, minibatch_grad: Callable, *, num_epochs: int, num_minibatches: int):
  """``num_epochs`` shuffled passes over ``data`` (leading axis: samples), one update per
  minibatch; ``minibatch_grad(theta, minibatch) -> (loss, parts, grad)``."""
  samples = jax.tree.leaves(data)[0].shape[0]

  def epoch(carry, k):
    order = jax.random.permutation(k, samples).reshape(num_minibatches, -1)

    def update(carry, idx):
      theta, opt_state = carry
      loss, parts, grad = minibatch_grad(theta, jax.tree.map(lambda x: x[idx], data))
      updates, opt_state = optimizer.update(grad, opt_state, theta)
      return (optax.apply_updates(theta, updates), opt_state), (loss, parts)

    return jax.lax.scan(update, carry, order)

  return jax.lax.scan(epoch, (theta, opt_state), jax.random.split(key, num_epochs))


def record(inner: agent.AgentState, parts: dict, num_steps: int) -> agent.AgentState:
  """Adds the updates' mean entropy and value loss, per rollout step, to the running sums."""
  add = lambda total, x: total + jnp.mean(x).astype(total.dtype) * num_steps
  return inner._replace(entropy=add(inner.entropy, parts["entropy"]),
                        value_loss=add(inner.value_loss, parts["value_loss"]))
