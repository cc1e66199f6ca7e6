"""A user's own model as a one-task family: a learned optimizer trains (and meta-trains on) it."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from unrolled.families.base import TaskFamily


def own_model(*, loss_fn: Callable[[Any, Any], Any], sample_batch: Callable[[Any], Any],
              init_params: Callable[[Any], Any],
              metrics: Callable[[Any], Mapping[str, Any]] | None = None,
              name: str = "own_model") -> TaskFamily:
  """Any optax-style training loop (the arguments of ``unrolled.optax_system``) as a family.

  Every task is the same model; ``init_params(key)`` still draws fresh
  initial parameters and ``sample_batch(key)`` the minibatches, so each
  horizon is a new training run of it. With
  :func:`~unrolled.families.family_system` a learned optimizer drives it and
  its weights are meta-trained on it.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    sample_batch: ``sample_batch(key) -> batch``.
    init_params: ``init_params(key) -> params``.
    metrics: ``metrics(params) -> dict`` of scalars of trained parameters; its
      ``"train_loss"``, if any, is what comparisons report (default: the loss
      of one batch drawn with a fixed key).
    name: the family's name.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> from metaopt import learned_optimizers as lo
    >>> from unrolled import families
    >>> family = families.own_model(
    ...     loss_fn=lambda p, batch: jnp.mean((batch @ p - 1.0) ** 2),
    ...     sample_batch=lambda key: jax.random.normal(key, (16, 3)),
    ...     init_params=lambda key: jnp.zeros(3))
    >>> lopt = lo.mlp_lopt()
    >>> system = families.family_system(family, lopt, horizon=10)
    >>> theta = lopt.init(jax.random.key(0))
    >>> final, losses = metaopt.full_unroll(system, theta, jax.random.key(1),
    ...                                     jax.random.split(jax.random.key(2), 10))
    >>> losses.shape
    (10,)
  """
  for arg, f in (("loss_fn", loss_fn), ("sample_batch", sample_batch),
                 ("init_params", init_params)):
    if not callable(f):
      raise ValueError(f"{arg} must be a function, got {type(f).__name__}")
  if metrics is not None and not callable(metrics):
    raise ValueError(f"metrics must be a function of the parameters, got {type(metrics).__name__}")

  def evaluate(params, task):
    del task
    out = {"train_loss": loss_fn(params, sample_batch(jax.random.key(0)))}
    out.update(metrics(params) if metrics is not None else {})
    return out

  return TaskFamily(
      sample=lambda key: jnp.zeros(()),  # one task: nothing varies
      init_params=lambda task, key: init_params(key),
      loss=lambda params, task, key: loss_fn(params, sample_batch(key)),
      evaluate=evaluate, name=name,
      description=f"{name}: one model, fresh initial parameters and minibatches every run.")
