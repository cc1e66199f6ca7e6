"""Action distributions of an agent's policy head: categorical (discrete) and Gaussian (continuous)."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Policy(NamedTuple):
  """How the policy head's output becomes actions; pure functions of ONE environment's output.

  Attributes:
    sample: ``sample(key, params) -> action``.
    log_prob: ``log_prob(params, action) -> scalar``.
    entropy: ``entropy(params) -> scalar``.
    name: "categorical" or "gaussian".
  """
  sample: Callable
  log_prob: Callable
  entropy: Callable
  name: str


def categorical() -> Policy:
  """Discrete actions: the head's output is the logits; actions are int32 indices.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> policy = metaopt.rl.categorical()
    >>> round(float(policy.log_prob(jnp.zeros(4), 2)), 4), round(float(policy.entropy(jnp.zeros(4))), 4)
    (-1.3863, 1.3863)
  """

  def log_prob(logits, action):
    return jax.nn.log_softmax(logits)[action]

  def entropy(logits):
    log_p = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_p) * log_p)

  return Policy(jax.random.categorical, log_prob, entropy, "categorical")


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian() -> Policy:
  """Continuous actions: a diagonal Gaussian; the head's output is ``(mean, log_std)``.

  Actions are sampled unbounded (the environment clips them, as in PPO's
  reference implementations); ``log_prob`` is that of the unclipped action.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> policy = metaopt.rl.gaussian()
    >>> params = (jnp.zeros(2), jnp.zeros(2))
    >>> round(float(policy.log_prob(params, jnp.zeros(2))), 4)  # 2 log N(0; 0, 1)
    -1.8379
    >>> policy.sample(jax.random.key(0), params).shape
    (2,)
  """

  def sample(key, params):
    mean, log_std = params
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

  def log_prob(params, action):
    mean, log_std = params
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z ** 2 - log_std - _LOG_SQRT_2PI)

  def entropy(params):
    _, log_std = params
    return jnp.sum(log_std + 0.5 + _LOG_SQRT_2PI)

  return Policy(sample, log_prob, entropy, "gaussian")
