"""Learnable Adam: theta is Adam's log learning rate, logit b1 and b2 and log eps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from metaopt._src.core import base
from metaopt._src.learned_optimizers.base import LearnedOptimizer


def _logit(p: float) -> float:
  return math.log(p) - math.log1p(-p)


def learnable_adam(*, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> LearnedOptimizer:
  """Adam whose hyperparameters are the weights: the simple learned baseline.

  theta holds ``log_learning_rate``, ``logit_b1``, ``logit_b2`` and ``log_eps``
  (scalars shared by every parameter, so the optimizer applies to any model,
  as learned_optimization's ``LearnableAdam``). Adam's ``eps_root`` is 1e-12
  so its derivative stays finite at a zero gradient.

  Args:
    learning_rate, b1, b2, eps: the initial hyperparameters.

  Returns:
    A :class:`LearnedOptimizer`.

  Examples:
    >>> import jax
    >>> from metaopt import learned_optimizers as lo
    >>> sorted(lo.learnable_adam().init(jax.random.key(0)))
    ['log_eps', 'log_learning_rate', 'logit_b1', 'logit_b2']
  """
  learning_rate = base.check_float(learning_rate, "learning_rate")
  eps = base.check_float(eps, "eps")
  for name, value in (("b1", b1), ("b2", b2)):
    if not 0 < base.check_float(value, name) < 1:
      raise ValueError(f"{name} must lie in (0, 1), got {value!r}")

  def init(key):
    del key
    return {"log_learning_rate": jnp.float32(math.log(learning_rate)),
            "logit_b1": jnp.float32(_logit(b1)), "logit_b2": jnp.float32(_logit(b2)),
            "log_eps": jnp.float32(math.log(eps))}

  def optimizer(theta):
    return optax.adam(jnp.exp(theta["log_learning_rate"]), b1=jax.nn.sigmoid(theta["logit_b1"]),
                      b2=jax.nn.sigmoid(theta["logit_b2"]), eps=jnp.exp(theta["log_eps"]),
                      eps_root=1e-12)

  return LearnedOptimizer(init, optimizer, "learnable_adam")
