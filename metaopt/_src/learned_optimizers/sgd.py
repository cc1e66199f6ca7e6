"""Learnable SGD: theta is the log learning rate (learned_optimization's ``LearnableSGD``)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from metaopt._src.core import base
from metaopt._src.learned_optimizers.base import LearnedOptimizer


def learnable_sgd(*, learning_rate: float = 1e-3) -> LearnedOptimizer:
  """SGD whose one weight is its log learning rate; the simplest baseline.

  Args:
    learning_rate: the initial learning rate.

  Returns:
    A :class:`LearnedOptimizer`; theta is ``{"log_learning_rate": scalar}``.

  Examples:
    >>> import jax
    >>> from metaopt import learned_optimizers as lo
    >>> lo.learnable_sgd(learning_rate=0.01).init(jax.random.key(0))["log_learning_rate"].shape
    ()
  """
  learning_rate = base.check_float(learning_rate, "learning_rate")

  def init(key):
    del key
    return {"log_learning_rate": jnp.float32(math.log(learning_rate))}

  def optimizer(theta):
    return optax.sgd(jnp.exp(theta["log_learning_rate"]))

  return LearnedOptimizer(init, optimizer, "learnable_sgd")
