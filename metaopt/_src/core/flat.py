"""Flat views of an inner state: its float leaves as one vector, the transition on them, keys as data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

if TYPE_CHECKING:
  from metaopt._src.core.base import UnrolledSystem

PyTree = Any


def is_float(x: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class StateSplit(NamedTuple):
  """Separates a state pytree into its differentiable (float) and other leaves.

  Forward-mode estimators carry tangents for the float leaves only; integer
  leaves (an optimiser's step count) have no tangent.
  """
  treedef: Any
  float_mask: tuple[bool, ...]

  @classmethod
  def of(cls, tree: PyTree) -> "StateSplit":
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return cls(treedef, tuple(is_float(x) for x in leaves))

  def split(self, tree: PyTree) -> tuple[list[jax.Array], list[jax.Array]]:
    leaves = self.treedef.flatten_up_to(tree)
    floats = [x for x, m in zip(leaves, self.float_mask) if m]
    others = [x for x, m in zip(leaves, self.float_mask) if not m]
    return floats, others

  def merge(self, floats: list[jax.Array], others: list[jax.Array]) -> PyTree:
    floats, others = iter(floats), iter(others)
    leaves = [next(floats) if m else next(others) for m in self.float_mask]
    return self.treedef.unflatten(leaves)


def flat_step(system: UnrolledSystem, split: StateSplit, unravel: Callable,
              others: list[jax.Array], key: jax.Array) -> Callable:
  """``step`` as a function of (float state leaves, flat theta) -> ((float leaves, loss), other leaves)."""

  def f(floats, theta_vec):
    new_state, loss = system.step(split.merge(floats, others), unravel(theta_vec), key)
    new_floats, new_others = split.split(new_state)
    return (new_floats, loss), new_others

  return f


def loss_by_one_pass(system: UnrolledSystem, floats: list[jax.Array]) -> bool:
  """Whether a forward-mode estimator may take the loss's derivative by one reverse pass.

  It may where the system has ``meta_loss`` and every float state leaf is
  real: the estimators pair the loss's cotangent with tangents by real dot
  products, which would drop a conjugate on complex leaves.
  """
  return (getattr(system, "meta_loss", None) is not None
          and not any(jnp.iscomplexobj(x) for x in floats))


def flat_transition(system: UnrolledSystem, split: StateSplit, unravel: Callable,
                    others: list[jax.Array], key: jax.Array) -> tuple[Callable, Callable]:
  """For a system with ``meta_loss``: ``step`` split into its transition and its loss.

  Returns ``(transition, loss)``: ``transition(floats, theta_vec) -> (new
  float leaves, new other leaves)`` (step's own loss unused, so XLA drops it)
  and ``loss(new_others)`` -> ``f(new floats, theta_vec) -> loss``.
  """
  step = flat_step(system, split, unravel, others, key)

  def transition(floats, theta_vec):
    (new_floats, _), new_others = step(floats, theta_vec)
    return new_floats, new_others

  def loss(new_others):
    return lambda new_floats, theta_vec: system.meta_loss(
        split.merge(new_floats, new_others), unravel(theta_vec), key)

  return transition, loss


def flat_init(system: UnrolledSystem, theta: PyTree, init_key: jax.Array
              ) -> tuple[Callable, jax.Array, StateSplit]:
  """``init`` as ``f(flat theta) -> (float state leaves, other leaves)``, for forward-mode starts.

  Returns ``(f, theta_vec, split)``: differentiate ``f`` at ``theta_vec`` and
  rebuild the state with ``split.merge``.
  """
  theta_vec, unravel = ravel(theta)
  split = StateSplit.of(jax.eval_shape(system.init, init_key, theta))

  def f(theta_vec):
    return split.split(system.init(init_key, unravel(theta_vec)))

  return f, theta_vec, split


def tree_sq_norm(tree: PyTree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree))


def select_tree(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def ravel(theta: PyTree) -> tuple[jax.Array, Callable]:
  return ravel_pytree(theta)


def key_data(key: jax.Array) -> jax.Array:
  """A key as plain uint32 data, so estimator states convert to numpy (checkpoints)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return key


def as_key(data: jax.Array) -> jax.Array:
  """The typed key behind :func:`key_data`'s output."""
  return jax.random.wrap_key_data(data)
