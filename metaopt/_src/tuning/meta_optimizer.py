"""The outer optimiser of theta: a named optax rule with the guards online tuning needs."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

from metaopt._src.core import base

# Meta-optimisers by name (``meta_optimizer="adam"`` with ``meta_lr``).
META_OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd, "adam": optax.adam, "rmsprop": optax.rmsprop,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9)}
# The defaults of metaopt.tune, launch.tune and the tuning study (README: "A tuner you can trust").
DEFAULT_META_LR = 0.05
DEFAULT_MAX_UPDATE: float | None = None
DEFAULT_WARMUP_STEPS = 0
DEFAULT_DECAY_STEPS: int | None = 100


class MetaOptimizer(optax.GradientTransformation):
  """What :func:`meta_optimizer` returns: an ``optax.GradientTransformation``
  that also keeps the options it was built with (``options``: name,
  learning_rate, max_grad_norm, max_update, warmup_steps, decay_steps), so that
  :func:`~metaopt.tune` writes them to the run's configuration."""
  options: dict



def meta_optimizer(name: str = "adam", learning_rate: float = DEFAULT_META_LR, *,
                   max_grad_norm: float | None = None,
                   max_update: float | None = DEFAULT_MAX_UPDATE,
                   warmup_steps: int = DEFAULT_WARMUP_STEPS,
                   decay_steps: int | None = DEFAULT_DECAY_STEPS) -> MetaOptimizer:
  """A named meta-optimiser wrapped in the guards online tuning uses by default.

  ``optax.chain`` of, in order: ``clip_by_global_norm(max_grad_norm)`` on the
  hypergradient, the named rule with a learning rate that warms up linearly
  from 0 over ``warmup_steps`` outer steps and then decays as
  ``1 / sqrt(1 + t / decay_steps)`` (``t`` outer steps after the warm-up; a
  Robbins-Monro rate: a noisy or biased hypergradient's drift grows as
  ``sqrt(t)``, not ``t``), and ``clip(max_update)``: no coordinate of theta
  moves more than ``max_update`` in one outer step.

  Args:
    name: a key of :data:`META_OPTIMIZERS`.
    learning_rate: the rule's learning rate (after warm-up).
    max_grad_norm: clip the hypergradient's global norm (None: no clipping).
    max_update: bound on each coordinate's change per outer step (None: none).
    warmup_steps: outer steps of linear learning-rate warm-up (0: none).
    decay_steps: time scale of the inverse-square-root decay (None: none).

  Returns:
    A :class:`MetaOptimizer` (an ``optax.GradientTransformation``); pass it
    whole as :func:`~metaopt.tune`'s ``meta_optimizer``.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> opt = metaopt.meta_optimizer("sgd", 1.0, max_update=0.1)
    >>> updates, _ = opt.update(jnp.array([5.0, -0.01]), opt.init(jnp.zeros(2)))
    >>> [round(float(u), 3) for u in updates]
    [-0.1, 0.01]
    >>> opt.options["max_update"]
    0.1
  """
  if name not in META_OPTIMIZERS:
    raise ValueError(f"meta_optimizer={name!r} is unknown; choose one of "
                     f"{sorted(META_OPTIMIZERS)} or pass an optax.GradientTransformation")
  learning_rate = base.check_float(learning_rate, "meta_lr")
  warmup_steps = base.check_count(warmup_steps, "warmup_steps", minimum=0)
  if decay_steps is not None:
    decay_steps = base.check_count(decay_steps, "decay_steps")

  def rate(count):
    value = learning_rate * jnp.minimum(1.0, (count + 1.0) / (warmup_steps + 1.0))
    if decay_steps is not None:
      value = value / jnp.sqrt(1.0 + jnp.maximum(count - warmup_steps, 0) / decay_steps)
    return value
  parts = []
  if max_grad_norm is not None:
    max_grad_norm = base.check_float(max_grad_norm, "max_grad_norm")
    parts.append(optax.clip_by_global_norm(max_grad_norm))
  parts.append(META_OPTIMIZERS[name](rate))
  if max_update is not None:
    max_update = base.check_float(max_update, "max_update")
    parts.append(optax.clip(max_update))
  chained = optax.chain(*parts) if len(parts) > 1 else parts[0]
  opt = MetaOptimizer(chained.init, chained.update)
  opt.options = {"name": name, "learning_rate": learning_rate, "max_grad_norm": max_grad_norm,
                 "max_update": max_update, "warmup_steps": warmup_steps,
                 "decay_steps": decay_steps}
  return opt
