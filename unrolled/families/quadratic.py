"""Quadratics with a sampled target (learned_optimization's ``FixedDimQuadraticFamily``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from unrolled.families.base import TaskFamily


def quadratic(*, dim: int = 10) -> TaskFamily:
  """Tasks ``sum((target - params)^2)``: target and initial params ~ N(0, I) in ``dim`` dimensions.

  Examples:
    >>> import jax
    >>> from unrolled import families
    >>> family = families.quadratic(dim=3)
    >>> task = family.sample(jax.random.key(0))
    >>> float(family.loss(task, task, jax.random.key(1)))
    0.0
  """
  dim = base.check_count(dim, "dim")

  def loss(params, task, key):
    del key
    return jnp.sum(jnp.square(task - params))

  return TaskFamily(
      sample=lambda key: jax.random.normal(key, (dim,)),
      init_params=lambda task, key: jax.random.normal(key, (dim,)),
      loss=loss,
      evaluate=lambda params, task: {"train_loss": loss(params, task, None)},
      name="quadratic",
      description=f"Quadratics in {dim} dimensions, sum((target - p)^2), target and initial p "
                  "~ N(0, I) (learned_optimization's FixedDimQuadraticFamily).")
