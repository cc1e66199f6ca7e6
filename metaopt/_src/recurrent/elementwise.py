"""Online recurrent learning as an unrolled system, for cells with element-wise recurrence."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from metaopt._src.core import base


class ElementwiseCell(NamedTuple):
  """One unit of a recurrent layer whose recurrence is element-wise (diagonal).

  Every function sees ONE unit: its hidden channels ``h_i`` (shape ``(C,)``:
  1 for an eLSTM's cell value, 2 for an RTU's cosine/sine pair) and its own
  parameters ``p_i`` (a pytree, one row of the layer's parameters). Units
  share only the input ``x``. This is the structure that makes exact RTRL
  cost O(number of weights) per step.

  Attributes:
    initial: ``initial(p_i) -> h_i``, the unit's state at the start of a horizon.
    step: ``step(h_i, p_i, x) -> h_i``, the recurrence.
    output: ``output(h_i, p_i, x) -> o_i`` (shape ``(O,)``), what the readout sees.
      It does not feed back into the recurrence.
  """
  initial: Callable[[Any], jax.Array]
  step: Callable[[jax.Array, Any, jax.Array], jax.Array]
  output: Callable[[jax.Array, Any, jax.Array], jax.Array]


class RecurrentState(NamedTuple):
  """Inner state of an online recurrent network.

  Attributes:
    hidden: ``(num_units, C)`` recurrent state.
    stream: the data stream's own state (theta-free: a phase counter, a cue).
  """
  hidden: jax.Array
  stream: Any


class ElementwiseSystem(NamedTuple):
  """An :class:`UnrolledSystem` (same first three fields) that also exposes its structure.

  ``theta = {"cell": ..., "readout": ...}``: every leaf of ``theta["cell"]``
  has a leading axis of size ``num_units`` (row i belongs to unit i).
  Generic estimators use ``init``/``step``/``horizon``;
  :func:`metaopt.rtrl_elementwise` uses the other fields.

  Attributes:
    init: ``init(key, theta) -> RecurrentState``.
    step: ``step(state, theta, key) -> (state, loss)``.
    horizon: inner steps before the network restarts from ``init``.
    cell: the :class:`ElementwiseCell`.
    stream_init: ``stream_init(key) -> stream``.
    observe: ``observe(stream, key) -> (stream, x, target)``: the next input and
      what the readout should predict from the hidden state after reading it.
    readout_loss: ``readout_loss(readout, outputs, target) -> loss``, where
      ``outputs`` stacks the units' outputs, ``(num_units, O)``.
  """
  init: Callable
  step: Callable
  horizon: int
  cell: ElementwiseCell
  stream_init: Callable
  observe: Callable
  readout_loss: Callable


def cell_outputs(cell: ElementwiseCell, hidden: jax.Array, cell_params: Any,
                 x: jax.Array) -> jax.Array:
  return jax.vmap(cell.output, (0, 0, None))(hidden, cell_params, x)


def elementwise_system(cell: ElementwiseCell, *, stream_init: Callable, observe: Callable,
                       readout_loss: Callable, horizon: int) -> ElementwiseSystem:
  """Builds the unrolled system of a single element-wise recurrent layer trained online.

  One inner step reads the next input of the stream, advances every unit and
  scores the readout of the new hidden state:
  ``h_t[i] = cell.step(h_{t-1}[i], theta["cell"][i], x_t)``,
  ``L_t = readout_loss(theta["readout"], [cell.output(h_t[i], ...)]_i, target_t)``.

  Args:
    cell: the per-unit cell.
    stream_init: ``stream_init(key) -> stream``.
    observe: ``observe(stream, key) -> (stream, x, target)``; must not depend on theta.
    readout_loss: ``readout_loss(readout_params, outputs, target) -> scalar``.
    horizon: inner steps before a restart (for an endless stream, a large number).

  Returns:
    An :class:`ElementwiseSystem`, usable by every estimator.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> cell = metaopt.recurrent.ElementwiseCell(
    ...     initial=lambda p: jnp.zeros(1),
    ...     step=lambda h, p, x: jnp.tanh(p["w"] * h + p["u"] @ x),
    ...     output=lambda h, p, x: h)
    >>> system = metaopt.recurrent.elementwise_system(
    ...     cell, stream_init=lambda key: jnp.zeros((), jnp.int32),
    ...     observe=lambda s, key: (s + 1, jax.random.normal(key, (3,)), jnp.float32(1.0)),
    ...     readout_loss=lambda r, o, y: (r @ o[:, 0] - y) ** 2, horizon=10)
    >>> theta = {"cell": {"w": jnp.full(4, 0.5), "u": jnp.ones((4, 3))}, "readout": jnp.ones(4)}
    >>> state, loss = system.step(system.init(jax.random.key(0), theta), theta, jax.random.key(1))
  """
  horizon = base.check_horizon(
      base.UnrolledSystem(None, None, horizon))  # same validation as any system

  def init(key, theta):
    check_theta_layout(theta)
    return RecurrentState(jax.vmap(cell.initial)(theta["cell"]), stream_init(key))

  def step(state, theta, key):
    stream, x, target = observe(state.stream, key)
    hidden = jax.vmap(cell.step, (0, 0, None))(state.hidden, theta["cell"], x)
    loss = readout_loss(theta["readout"], cell_outputs(cell, hidden, theta["cell"], x), target)
    return RecurrentState(hidden, stream), loss

  return ElementwiseSystem(init, step, horizon, cell, stream_init, observe, readout_loss)


def check_theta_layout(theta: Any) -> int:
  """Returns the number of units; raises ValueError unless theta = {"cell", "readout"} with unit rows."""
  if not isinstance(theta, dict) or set(theta) != {"cell", "readout"}:
    got = sorted(theta) if isinstance(theta, dict) else type(theta).__name__
    raise ValueError(f'theta of an element-wise recurrent system must be a dict with keys '
                     f'"cell" and "readout", got {got}')
  leaves = jax.tree_util.tree_leaves_with_path(theta["cell"])
  if not leaves:
    raise ValueError('theta["cell"] has no parameters')
  sizes = {leaf.shape[0] if leaf.ndim else None for _, leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    shapes = {jax.tree_util.keystr(p): leaf.shape for p, leaf in leaves}
    raise ValueError('every leaf of theta["cell"] needs the same leading (unit) axis; '
                     f"got shapes {shapes}")
  return sizes.pop()
