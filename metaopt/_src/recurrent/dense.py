"""Online recurrent learning as an unrolled system, for a dense recurrent layer h' = f(W [h; x; 1])."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.recurrent.elementwise import RecurrentState

CELL_KEYS = ("W_h", "W_x", "b")


class DenseSystem(NamedTuple):
  """An :class:`UnrolledSystem` (same first three fields) that also exposes its preactivations.

  ``theta = {"cell": {"W_h": (N, N), "W_x": (N, D), "b": (N,)[, "h0": (N,)]},
  "readout": ...}``. One step reads ``(x, target)`` from the stream, forms the
  preactivations p = W_h h + W_x x + b = W a with a = [h; x; 1], and sets
  h' = activation(p); the loss is ``readout_loss(readout, h'[:, None], target)``.
  With ``"h0"`` in ``theta["cell"]`` the initial hidden state is learned
  (and depends on theta); otherwise it is zero. Generic estimators use
  ``init``/``step``/``horizon``; :func:`metaopt.uoro_preactivation` uses the rest.

  Attributes:
    init: ``init(key, theta) -> RecurrentState`` (hidden ``(N, 1)``).
    step: ``step(state, theta, key) -> (state, loss)``.
    horizon: inner steps before the network restarts from ``init``.
    activation: the element-wise nonlinearity f.
    stream_init, observe, readout_loss: as in :class:`metaopt.recurrent.ElementwiseSystem`.
  """
  init: Callable
  step: Callable
  horizon: int
  activation: Callable
  stream_init: Callable
  observe: Callable
  readout_loss: Callable


def preactivations(cell: Any, hidden: jax.Array, x: jax.Array) -> jax.Array:
  """p = W_h h + W_x x + b for hidden ``(N,)``."""
  return cell["W_h"] @ hidden + cell["W_x"] @ x.astype(cell["W_x"].dtype) + cell["b"]


def dense_system(*, stream_init: Callable, observe: Callable, readout_loss: Callable,
                 horizon: int, activation: Callable = jnp.tanh) -> DenseSystem:
  """Builds the unrolled system of one dense recurrent layer trained online.

  Args:
    stream_init: ``stream_init(key) -> stream``.
    observe: ``observe(stream, key) -> (stream, x, target)``; must not depend on theta.
    readout_loss: ``readout_loss(readout_params, hidden (N, 1), target) -> scalar``.
    horizon: inner steps before a restart (for an endless stream, a large number).
    activation: an element-wise function (default tanh).

  Returns:
    A :class:`DenseSystem`, usable by every estimator.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.recurrent.dense_system(
    ...     stream_init=lambda key: jnp.zeros((), jnp.int32),
    ...     observe=lambda s, key: (s + 1, jax.random.normal(key, (2,)), jnp.float32(1.0)),
    ...     readout_loss=lambda r, h, y: (r @ h[:, 0] - y) ** 2, horizon=10)
    >>> theta = {"cell": {"W_h": jnp.eye(3) * 0.5, "W_x": jnp.ones((3, 2)), "b": jnp.zeros(3)},
    ...          "readout": jnp.ones(3)}
    >>> state, loss = system.step(system.init(jax.random.key(0), theta), theta, jax.random.key(1))
    >>> state.hidden.shape
    (3, 1)
  """
  horizon = base.check_horizon(base.UnrolledSystem(None, None, horizon))
  if not callable(activation):
    raise ValueError(f"activation must be a function, got {base.describe(activation)}")

  def init(key, theta):
    cell = theta["cell"] if isinstance(theta, dict) else None
    check_theta_layout(theta)
    hidden = cell["h0"] if "h0" in cell else jnp.zeros_like(cell["b"])
    return RecurrentState(hidden[:, None], stream_init(key))

  def step(state, theta, key):
    stream, x, target = observe(state.stream, key)
    hidden = activation(preactivations(theta["cell"], state.hidden[:, 0], x))[:, None]
    return RecurrentState(hidden, stream), readout_loss(theta["readout"], hidden, target)

  return DenseSystem(init, step, horizon, activation, stream_init, observe, readout_loss)


def check_theta_layout(theta: Any) -> int:
  """Returns N; raises ValueError unless theta = {"cell": {W_h, W_x, b[, h0]}, "readout"}."""
  if not isinstance(theta, dict) or set(theta) != {"cell", "readout"}:
    got = sorted(theta) if isinstance(theta, dict) else type(theta).__name__
    raise ValueError('theta of a dense recurrent system must be a dict with keys "cell" and '
                     f'"readout", got {got}')
  cell = theta["cell"]
  keys = set(cell) if isinstance(cell, dict) else None
  if keys is None or not set(CELL_KEYS) <= keys <= set(CELL_KEYS) | {"h0"}:
    raise ValueError(f'theta["cell"] of a dense recurrent system needs the keys {CELL_KEYS} '
                     f'(and optionally "h0"), got {sorted(keys) if keys else cell!r}')
  n = jnp.shape(cell["b"])[0] if jnp.ndim(cell["b"]) == 1 else None
  shapes = {k: jnp.shape(v) for k, v in cell.items()}
  if (n is None or shapes["W_h"] != (n, n) or len(shapes["W_x"]) != 2
      or shapes["W_x"][0] != n or shapes.get("h0", (n,)) != (n,)):
    raise ValueError("theta['cell'] needs W_h (N, N), W_x (N, D), b (N,) and h0 (N,); "
                     f"got shapes {shapes}")
  return n
