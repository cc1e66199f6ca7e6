"""The unrolled-system contract, the estimator contract and the helpers they share."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any
Metrics = dict[str, jax.Array]


class UnrolledSystem(NamedTuple):
  """An inner training loop, seen as an unrolled computation graph.

  Attributes:
    init: ``init(key, theta) -> state``, the inner state at the start of a
      horizon (any pytree). It may depend on ``theta``; every estimator
      differentiates through it.
    step: ``step(state, theta, key) -> (state, loss)``, one inner step.
      ``loss`` is a float scalar, this step's term of the meta-objective.
      ``key`` is the step's randomness; side-by-side copies of a step (ES
      particles) get the same key.
    horizon: number of inner steps after which the inner problem restarts
      from ``init``.

  Examples:
    >>> import jax.numpy as jnp
    >>> system = UnrolledSystem(
    ...     init=lambda key, theta: jnp.ones(3),
    ...     step=lambda s, theta, key: (0.9 * s + theta, jnp.sum(s**2)),
    ...     horizon=10)
  """
  init: Callable[[jax.Array, PyTree], PyTree]
  step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]
  horizon: int


class Estimator(NamedTuple):
  """A hypergradient estimator: a pair of pure, jit- and vmap-able functions.

  Attributes:
    init: ``init(key, theta) -> state``. ``key`` makes the first horizon's
      initial inner state.
    unroll: ``unroll(state, theta, key) -> (state, grad, metrics)``. Advances
      one window of ``num_steps`` inner steps. ``grad`` has the structure of
      ``theta`` and estimates the derivative of the SUM of this window's
      losses; ``metrics["loss"]`` is that sum (averaged over particles for
      ES methods). ``key`` is split by :func:`split_window_key`.

  Every metaopt estimator is built by :func:`~metaopt.windowed`, so its state
  is a NamedTuple whose first field ``inner`` is the inner state the next
  window starts from (for estimators with particles, see
  :class:`~metaopt.EstimatorInfo` ``particles``, one per particle stacked on a
  leading axis), followed by the estimator's own carry, ``count`` and
  ``init_key``.
  """
  init: Callable[[jax.Array, PyTree], NamedTuple]
  unroll: Callable[[NamedTuple, PyTree, jax.Array], tuple[NamedTuple, PyTree, Metrics]]


def full_unroll(system: UnrolledSystem, theta: PyTree, init_key: jax.Array,
                step_keys: jax.Array) -> tuple[PyTree, jax.Array]:
  """Runs ``init`` and then one ``step`` per key; returns the final state and the losses.

  ``jax.grad(lambda th: full_unroll(system, th, k, ks)[1].sum())(theta)`` is
  the exact hypergradient that the exact estimators reproduce.
  """
  state = system.init(init_key, theta)

  def body(s, k):
    return system.step(s, theta, k)

  return jax.lax.scan(body, state, step_keys)


# ----------------------------------------------------------------------------
# Validation: bad input fails before any compute, with the option's name.


def check_horizon(system: UnrolledSystem) -> int:
  horizon = system.horizon
  if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
    raise ValueError(f"system.horizon must be a positive int, got {horizon!r}")
  return horizon


def check_num_particles(num_particles: Any) -> int:
  if (isinstance(num_particles, bool) or not isinstance(num_particles, int)
      or num_particles < 2 or num_particles % 2):
    raise ValueError(
        "num_particles must be a positive even int (antithetic pairs), "
        f"got {num_particles!r}")
  return num_particles


def check_sigma(sigma: Any) -> float:
  try:
    value = float(sigma)
  except (TypeError, ValueError):
    raise ValueError(f"sigma must be a positive float, got {sigma!r}") from None
  if not value > 0 or value == float("inf"):
    raise ValueError(f"sigma must be a positive finite float, got {sigma!r}")
  return value


def check_theta(theta: PyTree) -> None:
  """Raises ValueError unless every leaf of ``theta`` is a floating-point array."""
  leaves = jax.tree_util.tree_leaves_with_path(theta)
  if not leaves:
    raise ValueError("theta must have at least one floating-point leaf, got an empty pytree")
  for path, leaf in leaves:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"theta must contain only floating-point arrays; leaf "
          f"theta{jax.tree_util.keystr(path)} has dtype {dtype}")


def check_system_shapes(system: UnrolledSystem, key: jax.Array, theta: PyTree) -> None:
  """Abstractly evaluates init and step (no FLOPs) and checks they fit the contract."""
  state = jax.eval_shape(system.init, key, theta)
  step_key = jax.eval_shape(lambda k: jax.random.split(k, 2)[0], key)
  out = jax.eval_shape(system.step, state, theta, step_key)
  if not (isinstance(out, tuple) and len(out) == 2):
    raise ValueError("system.step must return a pair (state, loss)")
  new_state, loss = out
  if loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
    raise ValueError(
        f"system.step must return a float scalar loss, got shape {loss.shape} dtype {loss.dtype}")
  in_struct = jax.tree_util.tree_structure(state)
  out_struct = jax.tree_util.tree_structure(new_state)
  if in_struct != out_struct:
    raise ValueError(
        "system.step must return a state with the same structure as system.init's:\n"
        f"  init: {in_struct}\n  step: {out_struct}")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state),
                          jax.tree_util.tree_leaves(new_state)):
    if a.shape != b.shape or a.dtype != b.dtype:
      raise ValueError(
          f"system.step changes state{jax.tree_util.keystr(path)} from "
          f"{a.shape} {a.dtype} to {b.shape} {b.dtype}")


def check_key(key: jax.Array) -> None:
  """Estimator states keep keys as raw data of JAX's default PRNG implementation."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    impl, default = str(jax.random.key_impl(key)), str(jax.config.jax_default_prng_impl)
    if impl != default:
      raise ValueError(f"key: metaopt stores keys as raw data of the default PRNG implementation "
                       f"({default}); got a {impl} key. Use jax.random.key(seed).")


def check_init_args(system: UnrolledSystem, key: jax.Array, theta: PyTree) -> None:
  check_key(key)
  check_theta(theta)
  check_system_shapes(system, key, theta)


# ----------------------------------------------------------------------------
# Pieces every estimator uses.


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
