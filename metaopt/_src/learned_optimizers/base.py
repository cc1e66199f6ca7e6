"""The learned-optimizer contract: weights theta, and the optax transformation they define."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax


class LearnedOptimizer(NamedTuple):
  """An optimizer whose weights are theta: what meta-training learns.

  Attributes:
    init: ``init(key) -> theta``, the initial weights (a pytree of float arrays).
    optimizer: ``optimizer(theta) -> optax.GradientTransformation``: an optax
      transformation like any other (``init(params)``, ``update(grads, state,
      params)``; it needs ``params``), pure in theta, so that an inner loop
      driven by it is an :class:`~metaopt.UnrolledSystem` with this theta.
    name: a short name for logs.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from metaopt import learned_optimizers as lo
    >>> lopt = lo.learnable_sgd(learning_rate=0.1)
    >>> opt = lopt.optimizer(lopt.init(jax.random.key(0)))
    >>> params = jnp.ones(3)
    >>> updates, _ = opt.update(jnp.ones(3), opt.init(params), params)
    >>> [round(float(u), 3) for u in optax.apply_updates(params, updates)]
    [0.9, 0.9, 0.9]
  """
  init: Callable[[jax.Array], Any]
  optimizer: Callable[[Any], optax.GradientTransformation]
  name: str


def num_weights(theta: Any) -> int:
  """How many numbers theta holds (the meta-parameters)."""
  return sum(int(x.size) for x in jax.tree.leaves(theta))
