"""Recurrent cells for online learning: eLSTM, RTUs and LRUs (element-wise), a dense tanh RNN.

Each cell is a :class:`RecurrentLayer`: per-unit functions (a
:class:`metaopt.recurrent.ElementwiseCell`) plus a parameter initialiser that returns
one row per unit. The dense tanh RNN is here for comparison: its recurrence
mixes units, so only generic estimators apply to it.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

import metaopt


class RecurrentLayer(NamedTuple):
  """A recurrent layer.

  Attributes:
    cell: per-unit functions, or None for a dense recurrence.
    init_params: ``init_params(key, input_size, num_units) -> params`` (leading unit axis).
    num_channels: C, the state size per unit.
    num_outputs: O, the output size per unit.
    dense_step: for a dense recurrence, ``dense_step(hidden (N, C), params, x) -> hidden``.
  """
  cell: metaopt.recurrent.ElementwiseCell | None
  init_params: Callable
  num_channels: int
  num_outputs: int
  dense_step: Callable | None = None


def _normal(key, shape, fan_in):
  return jax.random.normal(key, shape) / math.sqrt(fan_in)


def _check_ring(r_min, r_max, max_phase):
  if not 0.0 <= r_min < r_max <= 1.0:
    raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
  if not max_phase > 0:
    raise ValueError(f"max_phase must be > 0, got {max_phase!r}")


def _ring(k_modulus, k_phase, num_units, r_min, r_max, max_phase):
  """Diagonal complex weights drawn on a ring: (nu_log, theta_log, r^2), r = exp(-exp(nu_log)).

  r^2 ~ U(r_min^2, r_max^2), kept in [1e-6, 1 - 1e-6]; phases exp(theta_log) ~ U(0, max_phase).
  """
  u = jax.random.uniform(k_modulus, (num_units,))
  r_sq = jnp.clip(u * (r_max**2 - r_min**2) + r_min**2, 1e-6, 1.0 - 1e-6)
  phase = jnp.maximum(jax.random.uniform(k_phase, (num_units,)), 1e-3) * max_phase
  return jnp.log(-0.5 * jnp.log(r_sq)), jnp.log(phase), r_sq


def _rotate(h, p):
  """lambda h in real form, lambda = exp(-exp(nu_log) + i exp(theta_log)); and |lambda|."""
  r = jnp.exp(-jnp.exp(p["nu_log"]))
  phase = jnp.exp(p["theta_log"])
  re, im = r * jnp.cos(phase), r * jnp.sin(phase)
  return jnp.stack([re * h[0] - im * h[1], re * h[1] + im * h[0]]), r


def elstm(forget_bias: float = 1.0, *, output_gate: str = "cell") -> RecurrentLayer:
  """Element-wise LSTM ("quasi-LSTM", Irie et al. 2023): diagonal recurrent weights.

  Per unit, with input rows W_z, W_f, W_o and recurrent scalars w_z, w_f::

    z = tanh(W_z x + w_z c + b_z),  f = sigmoid(W_f x + w_f c + b_f)
    c' = f c + (1 - f) z,           output = sigmoid(W_o x + b_o) c'

  Args:
    forget_bias: initial b_f (a positive value starts with some memory).
    output_gate: "cell", the per-unit gate above, inside the layer; or
      "readout", as the reference code (IDSIA/rtrl-elstm): the layer outputs
      c' and the gate, a dense sigmoid(W [x; c'] + b) over all units, belongs
      to the readout (``unrolled.online_rl`` builds it). The gate has no
      recurrent influence, so "readout" also drops W_o and b_o from the exact
      traces (a third of an eLSTM's trace memory and work).
  """
  if output_gate not in ("cell", "readout"):
    raise ValueError(f'output_gate must be "cell" or "readout", got {output_gate!r}')
  gated = output_gate == "cell"

  def initial(p):
    return jnp.zeros((1,), p["b_z"].dtype)

  def step(c, p, x):
    x = x.astype(p["W_z"].dtype)
    z = jnp.tanh(p["W_z"] @ x + p["w_z"] * c[0] + p["b_z"])
    f = jax.nn.sigmoid(p["W_f"] @ x + p["w_f"] * c[0] + p["b_f"])
    return (f * c[0] + (1.0 - f) * z)[None]

  def output(c, p, x):
    if not gated:
      return c
    return jax.nn.sigmoid(p["W_o"] @ x.astype(p["W_o"].dtype) + p["b_o"]) * c

  def init_params(key, input_size, num_units):
    k = jax.random.split(key, 5)
    n = num_units
    params = {"W_z": _normal(k[0], (n, input_size), input_size),
              "W_f": _normal(k[1], (n, input_size), input_size),
              "w_z": jax.random.uniform(k[3], (n,), minval=-0.5, maxval=0.5),
              "w_f": jax.random.uniform(k[4], (n,), minval=-0.5, maxval=0.5),
              "b_z": jnp.zeros(n), "b_f": jnp.full(n, forget_bias)}
    if gated:
      params.update(W_o=_normal(k[2], (n, input_size), input_size), b_o=jnp.zeros(n))
    return params

  return RecurrentLayer(metaopt.recurrent.ElementwiseCell(initial, step, output), init_params, 1, 1)


def rtu(*, linear: bool = True, activation: str = "tanh", r_min: float = 0.5,
        r_max: float = 0.99, max_phase: float = 2 * math.pi) -> RecurrentLayer:
  """Recurrent Trace Units (Elelimy et al. 2024): a complex-diagonal recurrence in real form.

  Per unit, with modulus r = exp(-exp(nu_log)) (always in (0, 1): stable) and
  phase = exp(theta_log), g = r cos(phase), phi = r sin(phase),
  norm = sqrt(1 - r^2)::

    a1 = g h1 - phi h2 + norm W1 x,   a2 = g h2 + phi h1 + norm W2 x

  Linear RTU: h = (a1, a2), output act(h). Non-linear RTU: h = act(a1, a2),
  output h.

  Args:
    linear: linear recurrence with the activation on the output (True) or
      inside the recurrence (False).
    activation: "tanh" or "relu".
    r_min, r_max: initial moduli are drawn so that r^2 ~ U(r_min^2, r_max^2)
      (0 <= r_min < r_max <= 1; r^2 is kept in [1e-6, 1 - 1e-6]).
    max_phase: initial phases ~ U(0, max_phase).

  The defaults (tanh, r^2 ~ U(0.25, 0.98)) are ours; the reference code
  (esraaelelimy/rtus) uses relu and r^2 ~ U(0, 1): ``rtu_reference()``. That
  code differentiates its phase w.r.t. the phase itself where the parameter is
  its log (its theta_log gradient is the exact one divided by exp(theta_log));
  here every gradient is w.r.t. the parameters as stored, and exact.
  """
  acts = {"tanh": jnp.tanh, "relu": jax.nn.relu}
  if activation not in acts:
    raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
  _check_ring(r_min, r_max, max_phase)
  act = acts[activation]

  def initial(p):
    return jnp.zeros((2,), p["nu_log"].dtype)

  def step(h, p, x):
    x = x.astype(p["W1"].dtype)
    rotated, r = _rotate(h, p)
    a = rotated + jnp.sqrt(1.0 - r**2) * jnp.stack([p["W1"] @ x, p["W2"] @ x])
    return a if linear else act(a)

  def output(h, p, x):
    del p, x
    return act(h) if linear else h

  def init_params(key, input_size, num_units):
    k = jax.random.split(key, 4)
    nu_log, theta_log, _ = _ring(k[0], k[1], num_units, r_min, r_max, max_phase)
    return {"nu_log": nu_log, "theta_log": theta_log,
            "W1": _normal(k[2], (num_units, input_size), input_size),
            "W2": _normal(k[3], (num_units, input_size), input_size)}

  return RecurrentLayer(metaopt.recurrent.ElementwiseCell(initial, step, output), init_params, 2, 2)


def rtu_reference(*, linear: bool = True) -> RecurrentLayer:
  """RTUs with the reference code's choices (esraaelelimy/rtus): relu, r^2 ~ U(0, 1)."""
  return rtu(linear=linear, activation="relu", r_min=0.0, r_max=1.0)


def lru(*, r_min: float = 0.9, r_max: float = 0.999, max_phase: float = 2 * math.pi
        ) -> RecurrentLayer:
  """Linear Recurrent Units (Orvieto et al. 2023), one complex unit per channel pair.

  Per unit, with the exponential parameterisation lambda = exp(-exp(nu_log) +
  i exp(theta_log)) (|lambda| < 1: stable), a learned input normalisation
  gamma = exp(gamma_log) (initialised to sqrt(1 - |lambda|^2)) and complex
  input weights B = B_re + i B_im::

    h' = lambda h + gamma (B x)

  in real form over (Re h, Im h). The output is h itself: the LRU's output
  map Re(C h) is a dense linear map over all units, the readout's. Unlike a
  linear RTU, gamma is a parameter of its own (an RTU ties its normaliser to
  |lambda|) and there is no activation on the output.

  Args:
    r_min, r_max: initial moduli |lambda|, drawn uniformly on the ring
      (|lambda|^2 ~ U(r_min^2, r_max^2); the paper's 0.9 and 0.999 by default).
    max_phase: initial phases ~ U(0, max_phase).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from unrolled import cells
    >>> layer = cells.lru()
    >>> params = layer.init_params(jax.random.key(0), 3, 4)
    >>> p0 = jax.tree.map(lambda x: x[0], params)
    >>> h = layer.cell.step(layer.cell.initial(p0), p0, jnp.ones(3))
    >>> h.shape, bool(jnp.all(jnp.exp(-jnp.exp(params["nu_log"])) < 1))
    ((2,), True)
  """
  _check_ring(r_min, r_max, max_phase)

  def initial(p):
    return jnp.zeros((2,), p["nu_log"].dtype)

  def step(h, p, x):
    x = x.astype(p["B_re"].dtype)
    rotated, _ = _rotate(h, p)
    return rotated + jnp.exp(p["gamma_log"]) * jnp.stack([p["B_re"] @ x, p["B_im"] @ x])

  def output(h, p, x):
    del p, x
    return h

  def init_params(key, input_size, num_units):
    k = jax.random.split(key, 4)
    nu_log, theta_log, r_sq = _ring(k[0], k[1], num_units, r_min, r_max, max_phase)
    return {"nu_log": nu_log, "theta_log": theta_log, "gamma_log": 0.5 * jnp.log(1.0 - r_sq),
            "B_re": _normal(k[2], (num_units, input_size), 2 * input_size),
            "B_im": _normal(k[3], (num_units, input_size), 2 * input_size)}

  return RecurrentLayer(metaopt.recurrent.ElementwiseCell(initial, step, output), init_params, 2, 2)


def dense_tanh() -> RecurrentLayer:
  """A dense tanh RNN, h' = tanh(W_h h + W_x x + b): every unit reads every unit."""

  def dense_step(h, p, x):
    x = x.astype(p["W_x"].dtype)
    return jnp.tanh(p["W_h"] @ h[:, 0] + p["W_x"] @ x + p["b"])[:, None]

  def init_params(key, input_size, num_units):
    k1, k2 = jax.random.split(key)
    return {"W_h": _normal(k1, (num_units, num_units), num_units) * 0.9,
            "W_x": _normal(k2, (num_units, input_size), input_size),
            "b": jnp.zeros(num_units)}

  return RecurrentLayer(None, init_params, 1, 1, dense_step)


def gru() -> RecurrentLayer:
  """A GRU layer (Cho et al. 2014; the gate convention of PyTorch and flax), dense recurrence::

    r = sigmoid(W_r x + U_r h + b_r),  z = sigmoid(W_z x + U_z h + b_z)
    n = tanh(W_n x + b_n + r * (U_n h + c_n)),  h' = (1 - z) n + z h

  The RL comparator of the RTU paper, trained with truncated BPTT; on it
  ``metaopt.rtrl_elementwise`` (one block of all units) is plain exact RTRL.
  """

  def dense_step(h, p, x):
    h = h[:, 0]
    gx = p["W_x"] @ x.astype(p["W_x"].dtype) + p["b_x"]
    gh = p["W_h"] @ h
    n_units = h.shape[0]
    r = jax.nn.sigmoid(gx[:n_units] + gh[:n_units])
    z = jax.nn.sigmoid(gx[n_units:2 * n_units] + gh[n_units:2 * n_units])
    n = jnp.tanh(gx[2 * n_units:] + r * (gh[2 * n_units:] + p["b_hn"]))
    return ((1.0 - z) * n + z * h)[:, None]

  def init_params(key, input_size, num_units):
    k1, k2 = jax.random.split(key)
    return {"W_x": _normal(k1, (3 * num_units, input_size), input_size),
            "W_h": _normal(k2, (3 * num_units, num_units), num_units),
            "b_x": jnp.zeros(3 * num_units), "b_hn": jnp.zeros(num_units)}

  return RecurrentLayer(None, init_params, 1, 1, dense_step)


def lstm(forget_bias: float = 1.0) -> RecurrentLayer:
  """An LSTM layer (Hochreiter & Schmidhuber 1997, forget gate of Gers et al. 2000), dense::

    i, f, g, o = W x + U h + b (four blocks of units)
    c' = sigmoid(f) c + sigmoid(i) tanh(g),  h' = sigmoid(o) tanh(c')

  State per unit (h, c), output h. The RTU paper's other truncated-BPTT comparator.

  Args:
    forget_bias: initial bias of f (1, as Jozefowicz et al. 2015 and most libraries).
  """

  def dense_step(state, p, x):
    h, c = state[:, 0], state[:, 1]
    n_units = h.shape[0]
    gates = p["W_x"] @ x.astype(p["W_x"].dtype) + p["W_h"] @ h + p["b"]
    i, f, g, o = (gates[k * n_units:(k + 1) * n_units] for k in range(4))
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jnp.stack([jax.nn.sigmoid(o) * jnp.tanh(c), c], axis=1)

  def init_params(key, input_size, num_units):
    k1, k2 = jax.random.split(key)
    b = jnp.zeros(4 * num_units).at[num_units:2 * num_units].set(forget_bias)
    return {"W_x": _normal(k1, (4 * num_units, input_size), input_size),
            "W_h": _normal(k2, (4 * num_units, num_units), num_units), "b": b}

  return RecurrentLayer(None, init_params, 2, 1, dense_step)


# The dense layers that only the RL agent builds (launch.online_rnn's dense path is the tanh RNN of
# metaopt.recurrent.dense_system).
DENSE_CELLS = {"dense_tanh": dense_tanh, "gru": gru, "lstm": lstm}

CELLS = {
    "elstm": elstm,
    "rtu_linear": lambda: rtu(linear=True),
    "rtu_nonlinear": lambda: rtu(linear=False),
    "rtu_linear_reference": lambda: rtu_reference(linear=True),
    "rtu_nonlinear_reference": lambda: rtu_reference(linear=False),
    "lru": lru,
    "dense_tanh": dense_tanh,
}
