"""The unrolled-system contract, the estimator contract and the helpers they share."""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.core.flat import is_float  # noqa: F401 (re-exported)
from metaopt._src.core.flat import StateSplit  # noqa: F401 (re-exported)
from metaopt._src.core.flat import flat_step  # noqa: F401 (re-exported)
from metaopt._src.core.flat import loss_by_one_pass  # noqa: F401 (re-exported)
from metaopt._src.core.flat import flat_transition  # noqa: F401 (re-exported)
from metaopt._src.core.flat import flat_init  # noqa: F401 (re-exported)
from metaopt._src.core.flat import tree_sq_norm  # noqa: F401 (re-exported)
from metaopt._src.core.flat import select_tree  # noqa: F401 (re-exported)
from metaopt._src.core.flat import ravel  # noqa: F401 (re-exported)
from metaopt._src.core.flat import key_data  # noqa: F401 (re-exported)
from metaopt._src.core.flat import as_key  # noqa: F401 (re-exported)

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
    meta_loss: optional ``meta_loss(new_state, theta, key) -> loss`` for a
      step whose loss is read off the state it returns (a validation loss
      after the update): ``step`` must then return exactly
      ``meta_loss(new_state, theta, key)``. It changes cost, not results:
      the forward-mode estimators (``rtrl``, ``uoro``) differentiate the loss
      by one reverse pass per step instead of one tangent per direction.
      :func:`~metaopt.optax_system` sets it for its validation meta-loss.

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
  meta_loss: Callable[[PyTree, PyTree, jax.Array], jax.Array] | None = None


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
  leading axis), followed by the estimator's own carry, ``count``,
  ``init_key`` and ``theta_spec`` (theta's layout at ``init``, against which
  ``unroll`` checks its theta).
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


def describe(value: Any) -> str:
  """A short description of a bad value for an error message (type and a clipped repr)."""
  text = repr(value)
  text = text if len(text) <= 60 and "\n" not in text else text.splitlines()[0][:57] + "..."
  return f"{type(value).__name__} {text}"


def check_count(value: Any, name: str, *, minimum: int = 1) -> int:
  """``value`` as a Python int, or a ValueError naming ``name``.

  Python and numpy integers pass (a config or ``np.arange`` gives ``np.int64``);
  bools and floats do not, even ``2.0``: a count that is not an integer is a mistake.
  """
  kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
  if isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) == np.bool_:
    raise ValueError(f"{name} must be {kind}, got {describe(value)}")
  try:
    count = operator.index(value)
  except TypeError:  # floats, strings, None, abstract (traced) values
    raise ValueError(f"{name} must be {kind}, got {describe(value)}") from None
  if count < minimum:
    raise ValueError(f"{name} must be {kind}, got {count}")
  return count


def check_float(value: Any, name: str, *, positive: bool = True, finite: bool = True) -> float:
  """``value`` as a Python float, or a ValueError naming ``name``.

  Python and numpy numbers pass; bools, strings and None do not (``float("0.1")``
  would silently parse a string).
  """
  if (isinstance(value, (bool, np.bool_, str, bytes)) or value is None
      or getattr(value, "dtype", None) == np.bool_):
    raise ValueError(f"{name} must be a float, got {describe(value)}")
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a float, got {describe(value)}") from None
  if finite and not math.isfinite(number):
    raise ValueError(f"{name} must be a finite float, got {value!r}")
  if positive and not number > 0:
    raise ValueError(f"{name} must be a positive float, got {value!r}")
  return number


def check_flag(value: Any, name: str) -> bool:
  """``value`` as a bool, or a ValueError naming ``name`` (``"no"`` would be truthy)."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {describe(value)}")
  return bool(value)


def check_horizon(system: UnrolledSystem) -> int:
  horizon = system.horizon
  if isinstance(horizon, (bool, np.bool_)):
    raise ValueError(f"system.horizon must be a positive int, got {horizon!r}")
  try:
    horizon = operator.index(horizon)
  except TypeError:
    raise ValueError(f"system.horizon must be a positive int, got {describe(horizon)}") from None
  if horizon < 1:
    raise ValueError(f"system.horizon must be a positive int, got {horizon!r}")
  return horizon


def check_system(system: Any) -> int:
  """Raises ValueError unless ``system`` looks like an :class:`UnrolledSystem`; returns its horizon."""
  if not (callable(getattr(system, "init", None)) and callable(getattr(system, "step", None))
          and hasattr(system, "horizon")):
    raise ValueError("system must be a metaopt.UnrolledSystem(init, step, horizon), got "
                     f"{describe(system)}")
  meta_loss = getattr(system, "meta_loss", None)
  if meta_loss is not None and not callable(meta_loss):
    raise ValueError(f"system.meta_loss must be a function or None, got {describe(meta_loss)}")
  return check_horizon(system)


def check_estimator(estimator: Any) -> None:
  if not (callable(getattr(estimator, "init", None))
          and callable(getattr(estimator, "unroll", None))):
    raise ValueError("estimator must be a metaopt.Estimator(init, unroll), got "
                     f"{describe(estimator)}")


def check_num_particles(num_particles: Any) -> int:
  message = "num_particles must be a positive even int (antithetic pairs), got "
  try:
    num_particles = check_count(num_particles, "num_particles")
  except ValueError:
    raise ValueError(message + describe(num_particles)) from None
  if num_particles < 2 or num_particles % 2:
    raise ValueError(message + repr(num_particles))
  return num_particles


def check_sigma(sigma: Any) -> float:
  return check_float(sigma, "sigma")


def check_theta(theta: PyTree) -> None:
  """Raises ValueError unless every leaf of ``theta`` is a floating-point array."""
  leaves = jax.tree_util.tree_leaves_with_path(theta)
  if not leaves:
    raise ValueError("theta must have at least one floating-point leaf, got an empty pytree")
  for path, leaf in leaves:
    try:
      dtype = jnp.result_type(leaf)
    except TypeError:  # a string, an object
      raise ValueError(f"theta must contain only floating-point arrays; leaf "
                       f"theta{jax.tree_util.keystr(path)} is a {describe(leaf)}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"theta must contain only floating-point arrays; leaf "
          f"theta{jax.tree_util.keystr(path)} has dtype {dtype}")


def check_finite_theta(theta: PyTree) -> None:
  """Raises ValueError if a concrete leaf of ``theta`` holds NaN or inf.

  A host-side check, for ``init``: leaves that are abstract (``init`` under
  ``jit``) cannot be looked at and pass; a tuner then skips (and counts) every
  step, since their hypergradients are not finite.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
    if isinstance(leaf, jax.core.Tracer):
      continue
    values = np.asarray(leaf)
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
      raise ValueError(f"theta{jax.tree_util.keystr(path)} has {bad} non-finite (NaN or inf) "
                       f"value(s): theta must start finite")


def theta_spec(theta: PyTree) -> PyTree:
  """Theta's structure, shapes and dtypes as zero-size arrays ``(0, *shape)``: a record kept in
  an estimator state at no memory cost, that survives jit, vmap and checkpoints."""
  return jax.tree.map(lambda x: jnp.zeros((0,) + jnp.shape(x), jnp.result_type(x)), theta)


def check_theta_like(theta: PyTree, spec: PyTree, *, made_by: str = "est.init") -> None:
  """Raises ValueError unless ``theta`` has the structure, shapes and dtypes ``spec`` recorded.

  Uses only static information (tree structure, shapes, dtypes), so it costs
  nothing at run time and works on tracers under jit and vmap. A weakly typed
  leaf (a Python float) matches any float dtype, as JAX would convert it.
  """
  got, want = jax.tree.structure(theta), jax.tree.structure(spec)
  if got != want:
    raise ValueError(f"theta has structure {got}, but the state was made ({made_by}) for {want}")
  for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(theta), jax.tree.leaves(spec)):
    aval, where = jax.typeof(leaf), f"theta{jax.tree_util.keystr(path)}"
    shape = tuple(ref.shape[1:])
    if tuple(aval.shape) != shape:
      raise ValueError(f"{where} has shape {tuple(aval.shape)}, but the state was made "
                       f"({made_by}) with shape {shape}")
    if aval.dtype != ref.dtype and not aval.weak_type:
      raise ValueError(f"{where} has dtype {aval.dtype}, but the state was made ({made_by}) "
                       f"with dtype {ref.dtype}")


def check_system_shapes(system: UnrolledSystem, key: jax.Array, theta: PyTree) -> None:
  """Abstractly evaluates init and step (no FLOPs) and checks they fit the contract."""
  state = _eval_on_theta("system.init(key, theta)", system.init, key, theta)
  step_key = jax.eval_shape(lambda k: jax.random.split(k, 2)[0], key)
  out = _eval_on_theta("system.step(state, theta, key)", system.step, state, theta, step_key)
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
  meta_loss = getattr(system, "meta_loss", None)
  if meta_loss is not None:
    read = _eval_on_theta("system.meta_loss(state, theta, key)", meta_loss, new_state, theta,
                          step_key)
    if getattr(read, "shape", None) != () or not jnp.issubdtype(read.dtype, jnp.floating):
      raise ValueError("system.meta_loss must return a float scalar loss, got "
                       f"{describe(read)}")


def _eval_on_theta(call: str, f: Callable, *args) -> Any:
  """``jax.eval_shape(f, *args)``; a theta the system cannot take (a missing key, a wrong shape)
  becomes one line naming theta instead of a deep JAX traceback (kept as the cause)."""
  try:
    return jax.eval_shape(f, *args)
  except ValueError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"theta does not fit the system: {call} raised "
                     f"{type(e).__name__}: {first}") from e


@functools.lru_cache(maxsize=None)
def _raw_key_shape(impl: str) -> tuple[int, ...]:
  return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def check_key(key: Any, name: str = "key") -> None:
  """Raises ValueError unless ``key`` is one key of JAX's default PRNG implementation.

  Typed keys (``jax.random.key(seed)``) and their raw uint32 data (the old
  ``jax.random.PRNGKey(seed)``) both pass; estimator states keep the raw data.
  Only shapes and dtypes are read, so the check works on tracers.
  """
  dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
  if dtype is None or shape is None:
    raise ValueError(f"{name} must be a JAX PRNG key (jax.random.key(seed)), got {describe(key)}")
  shape = tuple(shape)
  default = str(jax.config.jax_default_prng_impl)
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    impl = str(jax.random.key_impl(key))
    if impl != default:
      raise ValueError(f"{name}: metaopt stores keys as raw data of the default PRNG "
                       f"implementation ({default}); got a {impl} key. Use jax.random.key(seed).")
    if shape:
      raise ValueError(f"{name} must be a single key, got an array of keys of shape {shape} "
                       "(jax.vmap over them, or pick one)")
    return
  raw = _raw_key_shape(default)
  if dtype != np.uint32 or shape != raw:
    raise ValueError(f"{name} must be a JAX PRNG key (jax.random.key(seed)) or its raw uint32 "
                     f"data of shape {raw}, got a {dtype} array of shape {shape}")


def check_init_args(system: UnrolledSystem, key: jax.Array, theta: PyTree) -> None:
  check_key(key)
  check_theta(theta)
  check_finite_theta(theta)
  check_system_shapes(system, key, theta)


# ----------------------------------------------------------------------------
# Pieces every estimator uses.
