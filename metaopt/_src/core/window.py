"""The window mechanism every estimator is built on.

An estimator's own math is what happens inside one window; :func:`windowed`
owns the rest: validation, the key split every estimator shares (so a user
can replay the inner trajectory), the lazy start of a horizon with the
current theta, the reset at the horizon's end and the step count.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base


class WindowKeys(NamedTuple):
  """How an estimator uses the key given to one ``unroll`` call.

  Attributes:
    next_init: makes the initial state of the next horizon, if this window
      ends the current one.
    noise: the estimator's own randomness (UORO signs, ES perturbations).
    steps: ``(num_steps,)`` keys, one per inner step, shared by all particles.
  """
  next_init: jax.Array
  noise: jax.Array
  steps: jax.Array


def split_window_key(key: jax.Array, num_steps: int) -> WindowKeys:
  """Splits an ``unroll`` key the way every metaopt estimator does.

  With it, a user can replay exactly the inner trajectory an estimator saw:
  horizon ``h`` starts from ``system.init(k_h, theta)``, where ``k_0`` is the
  key given to ``est.init`` and ``k_{h+1}`` is ``next_init`` of the last
  window of horizon ``h``; inner step ``j`` of a window uses ``steps[j]``.

  Examples:
    >>> import jax, metaopt
    >>> keys = metaopt.horizon.split_window_key(jax.random.key(0), 5)
    >>> keys.steps.shape
    (5,)
  """
  base.check_key(key)
  num_steps = base.check_count(num_steps, "num_steps")
  keys = jax.random.split(key, num_steps + 2)
  return WindowKeys(next_init=keys[0], noise=keys[1], steps=keys[2:])


Fields = tuple
Begin = Callable[[base.PyTree], Any]
# The trailing fields windowed owns; "theta_spec" is optional in a state type.
OWNED = ("count", "init_key")
SPEC = "theta_spec"


def windowed(system: base.UnrolledSystem, state_type: type, *, num_steps: int,
             start: Callable[[base.PyTree, WindowKeys, jax.Array], Any],
             window: Callable[[Begin, base.PyTree, WindowKeys], tuple[Fields, base.PyTree, dict]],
             resume: Callable[[Fields], Any] | None = None,
             check_theta: Callable[[base.PyTree], None] | None = None,
             start_sees_previous: bool = False) -> base.Estimator:
  """Builds an :class:`~metaopt.Estimator` from one window's math.

  The estimator's state is a ``state_type`` NamedTuple whose fields are
  ``inner`` (the inner state(s) the next window starts from), the
  estimator's own carry, then ``count`` (inner steps taken in the current
  horizon, 0 at a horizon start), ``init_key`` (key data of the key that
  makes the current horizon's initial state) and, optionally, ``theta_spec``
  (theta's structure, shapes and dtypes at ``init``, as zero-size arrays
  ``(0, *shape)``: no memory). This function owns ``count``, ``init_key``
  and ``theta_spec``; the estimator owns the fields before them ("fields").
  With ``theta_spec`` (every metaopt estimator has it), ``unroll`` refuses a
  theta whose structure, shapes or dtypes differ from ``init``'s with a
  ValueError naming the leaf, before tracing the window: a static check, free
  at run time and valid under jit and vmap.

  Each ``unroll(state, theta, key)`` splits ``key`` with
  :func:`split_window_key` and calls ``window(begin, theta, keys)``, which
  returns ``(fields, grad, metrics)``. ``begin(theta)`` is where the window
  starts: at a horizon start, ``start(theta, keys, init_key)`` (a fresh
  horizon made with the theta passed to ``begin``, so an estimator that
  differentiates ``begin`` differentiates through ``system.init``); otherwise
  ``resume(fields)`` of the state (by default the fields themselves). Both
  must return the same structure. Under ``jax.vmap`` (the tuner's chains), a
  horizon start is computed only in windows where some copy starts one
  (:func:`any_copy`), not in every window. A window never straddles a horizon:
  ``num_steps`` must divide ``system.horizon``.

  ``init(key, theta)`` validates its arguments (plus ``check_theta``, if
  given; a NaN or inf theta is refused when theta is concrete, not under
  jit) and the system's shapes without FLOPs; its fields are zeros shaped
  like a window's output, except ``inner``, which holds ``system.init(key,
  theta)`` (broadcast over particles). The first ``unroll`` starts a horizon
  from ``key`` with its own theta.

  Args:
    system: the unrolled inner problem.
    state_type: the estimator's state NamedTuple, fields as above.
    num_steps: inner steps per window.
    start: ``start(theta, keys, init_key) -> carry`` at a horizon start;
      ``init_key`` is a typed key.
    window: ``window(begin, theta, keys) -> (fields, grad, metrics)``; ``grad``
      estimates d(sum of this window's losses)/d theta with theta's structure
      and ``metrics["loss"]`` is that sum.
    resume: ``resume(fields) -> carry`` away from a horizon start.
    check_theta: extra validation of theta at ``init`` (raises ValueError).
    start_sees_previous: call ``start(theta, keys, init_key, previous)`` with
      the fields the previous horizon ended with (``None`` at ``init``), for an
      estimator that learns across horizons (UORO's online noise shaping).

  Returns:
    An :class:`~metaopt.Estimator`.

  Examples:
    Forward-mode sensitivity of a one-dimensional state, in a few lines:

    >>> import typing, jax, jax.numpy as jnp, metaopt
    >>> class SensitivityState(typing.NamedTuple):
    ...   inner: jax.Array
    ...   ds_dtheta: jax.Array
    ...   count: jax.Array
    ...   init_key: jax.Array
    ...   theta_spec: jax.Array  # optional: lets unroll check theta against init's
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.float32(1.0),
    ...     step=lambda s, th, key: (th * s, s ** 2), horizon=6)
    >>> def window(begin, theta, keys):
    ...   s, z = begin(theta)
    ...   grad = loss = 0.0
    ...   for _ in range(len(keys.steps)):  # s' = theta s, L = s^2
    ...     grad, loss, s, z = grad + 2 * s * z, loss + s ** 2, theta * s, theta * z + s
    ...   return (s, z), grad, {"loss": loss}
    >>> est = metaopt.windowed(system, SensitivityState, num_steps=3, window=window,
    ...                        start=lambda th, keys, k: (system.init(k, th), 0.0 * th))
    >>> state = est.init(jax.random.key(0), jnp.float32(0.9))
    >>> state, grad, _ = est.unroll(state, jnp.float32(0.9), jax.random.key(1))
    >>> round(float(grad), 4)  # d/dtheta (1 + theta^2 + theta^4) at 0.9
    4.716
  """
  horizon = base.check_system(system)
  num_steps = check_num_steps(num_steps, horizon)
  owned = check_state_type(state_type)
  for name, f, optional in (("start", start, False), ("window", window, False),
                            ("resume", resume, True), ("check_theta", check_theta, True)):
    if not (callable(f) or (optional and f is None)):
      raise ValueError(f"{name} must be a function, got {base.describe(f)}")
  resume = resume or (lambda fields: fields)
  has_spec = owned[-1] == SPEC

  def init(key, theta):
    base.check_key(key)
    base.check_theta(theta)
    if check_theta is not None:
      check_theta(theta)
    base.check_finite_theta(theta)
    base.check_system_shapes(system, key, theta)
    key = base.as_key(base.key_data(key))
    keys = split_window_key(key, num_steps)
    first = (lambda t: start(t, keys, key, None)) if start_sees_previous else (
        lambda t: start(t, keys, key))
    shapes = jax.eval_shape(lambda th: window(first, th, keys)[0], theta)
    inner = system.init(key, theta)
    fields = [jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), f) for f in shapes]
    fields[0] = jax.tree.map(lambda x, s: jnp.broadcast_to(x, s.shape).astype(s.dtype),
                             inner, shapes[0])
    spec = (base.theta_spec(theta),) if has_spec else ()
    return state_type(*fields, jnp.zeros((), jnp.int32), base.key_data(key), *spec)

  def unroll(state, theta, key):
    # Static checks only (types, structures, shapes, dtypes): free at run time, fine on tracers.
    check_state(state, state_type)
    base.check_key(key)
    base.check_theta(theta)
    if has_spec:
      base.check_theta_like(theta, state.theta_spec)
    keys = split_window_key(key, num_steps)
    fresh = state.count == 0
    fields = tuple(state)[:-len(owned)]

    def begin(th):
      previous = (fields,) if start_sees_previous else ()
      restart = lambda: base.select_tree(
          fresh, start(th, keys, base.as_key(state.init_key), *previous), resume(fields))
      return jax.lax.cond(any_copy(fresh), restart, lambda: resume(fields))

    fields, grad, metrics = window(begin, theta, keys)
    count = state.count + num_steps
    done = count >= horizon
    spec = (state.theta_spec,) if has_spec else ()
    return (state_type(*fields, jnp.where(done, 0, count).astype(jnp.int32),
                       jnp.where(done, base.key_data(keys.next_init), state.init_key), *spec),
            grad, metrics)

  return base.Estimator(init, unroll)


@jax.custom_batching.custom_vmap
def any_copy(flag: jax.Array) -> jax.Array:
  """``flag`` itself; under ``jax.vmap``, whether any copy's flag is set, unbatched.

  A ``lax.cond`` on a batched predicate runs both branches for every copy
  (vmap turns it into a select): ``lax.cond(any_copy(flag), ...)`` keeps a
  real conditional, whose taken branch then selects per copy with ``flag``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from metaopt._src.core.window import any_copy
    >>> jax.vmap(any_copy)(jnp.array([False, True, False]))  # one value, seen by every copy
    Array([ True,  True,  True], dtype=bool)
  """
  return flag


@any_copy.def_vmap
def _any_copy_batched(axis_size, in_batched, flag):
  del axis_size
  return (jnp.any(flag) if in_batched[0] else flag), False


def check_num_steps(num_steps: Any, horizon: int) -> int:
  """``num_steps`` as an int; raises ValueError unless it is a positive int dividing the horizon."""
  num_steps = base.check_count(num_steps, "num_steps")
  if horizon % num_steps:
    raise ValueError(
        f"num_steps={num_steps} must divide the system's horizon={horizon} "
        "(windows must not straddle a horizon reset)")
  return num_steps


def check_state_type(state_type: Any) -> tuple[str, ...]:
  """The trailing fields of ``state_type`` that :func:`windowed` owns; ValueError if it has none."""
  fields = getattr(state_type, "_fields", None)
  if not (isinstance(state_type, type) and issubclass(state_type, tuple) and fields):
    raise ValueError(f"state_type must be a NamedTuple class, got {base.describe(state_type)}")
  for owned in (OWNED + (SPEC,), OWNED):
    if tuple(fields[-len(owned):]) == owned and len(fields) > len(owned):
      return owned
  raise ValueError(f"state_type {state_type.__name__} must have the fields inner, ..., "
                   f"count, init_key[, theta_spec]; got {fields}")


def check_state(state: Any, state_type: type) -> None:
  """Raises ValueError unless ``state`` is one (unbatched) state of ``state_type``."""
  if not isinstance(state, state_type):
    raise ValueError(f"state must be a {state_type.__name__} made by this estimator's init, "
                     f"got {base.describe(state)}")
  count_shape = tuple(getattr(state.count, "shape", ()))
  if count_shape:
    raise ValueError(f"state holds a batch of states (count has shape {count_shape}); "
                     "unroll them with jax.vmap(est.unroll)")
