"""A per-parameter MLP learned optimizer (Metz et al.; learned_optimization's ``MLPLOpt``).

Every element of every parameter tensor gets the same small MLP, applied to
its own features: the gradient, the parameter, momentum accumulators of the
gradient at several decays (and optionally second-moment features), each
normalised by its root mean square over the tensor, plus training-step
features ``tanh(t / s - 1)`` shared by every element. The MLP outputs a
direction d and a magnitude m; the step is ``d * exp(m * exp_mult) * step_mult``.

Cost: the step features are the same for every element, so their product
with the first layer's weights is computed once per step and added to its
bias (an identity, 11 of lopt's 19 inputs for free); all tensors go through
the MLP as one matrix.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt._src.core import base
from metaopt._src.learned_optimizers.base import LearnedOptimizer

# learned_optimization's defaults.
DEFAULT_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
DEFAULT_TIMESCALES = (1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5)
DEFAULT_HIDDEN = (32, 32)
# From this many rows (elements of all tensors) the output layer is computed as reductions.
_MANY_ROWS = 256


class MLPLOptState(NamedTuple):
  """State of an :func:`mlp_lopt` optimizer.

  Attributes:
    momentum: per parameter tensor, its momentum accumulators, shape
      ``param.shape + (len(decays),)``.
    second_moment: the same for the squared gradient (``second_moment_decays``;
      a trailing axis of size 0 when there are none).
    count: updates applied so far.
  """
  momentum: Any
  second_moment: Any
  count: jax.Array


def _normalise(x: jax.Array) -> jax.Array:
  """Each feature column divided by its root mean square over the tensor (lopt's normaliser)."""
  return x * jax.lax.rsqrt(1e-5 + jnp.mean(jnp.square(x), axis=0, keepdims=True))


def mlp_lopt(*, hidden: Sequence[int] = DEFAULT_HIDDEN,
             decays: Sequence[float] = DEFAULT_DECAYS,
             second_moment_decays: Sequence[float] = (),
             timescales: Sequence[float] = DEFAULT_TIMESCALES,
             exp_mult: float = 1e-3, step_mult: float = 1e-3) -> LearnedOptimizer:
  """The per-parameter MLP learned optimizer; theta is the MLP's weights.

  With the defaults it is learned_optimization's ``MLPLOpt``: 19 inputs (the
  parameter, the gradient, 6 momenta, 11 step features), 2 hidden layers of 32
  (relu), 1,762 weights. ``second_moment_decays`` adds, per decay, the root of
  an accumulator of the squared gradient, and the gradient and every momentum
  divided by it (RMSprop's and Adam's directions, as learned_optimization's
  Adafactor-MLP optimizer feeds its MLP), all normalised like the rest.

  Args:
    hidden: the hidden layers' widths (``()``: the inputs' linear map).
    decays: the momentum accumulators' decays, each in [0, 1).
    second_moment_decays: the squared-gradient accumulators' decays.
    timescales: the step features' timescales s, ``tanh(t / s - 1)``.
    exp_mult, step_mult: step = d * exp(m * exp_mult) * step_mult.

  Returns:
    A :class:`LearnedOptimizer`. Its ``init(key)`` draws the weights as haiku's
    default (truncated normal, std 1/sqrt(fan in); zero biases).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from metaopt import learned_optimizers as lo
    >>> lopt = lo.mlp_lopt()
    >>> theta = lopt.init(jax.random.key(0))
    >>> lo.num_weights(theta)
    1762
    >>> opt = lopt.optimizer(theta)
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> updates, state = opt.update(params, opt.init(params), params)
    >>> jax.tree.map(jnp.shape, updates)
    {'b': (2,), 'w': (3, 2)}
  """
  hidden = tuple(base.check_count(h, "hidden") for h in _sequence(hidden, "hidden"))
  decays = _check_decays(decays, "decays")
  second_moment_decays = _check_decays(second_moment_decays, "second_moment_decays")
  timescales = tuple(base.check_float(s, "timescales") for s in _sequence(timescales,
                                                                          "timescales"))
  exp_mult = base.check_float(exp_mult, "exp_mult")
  step_mult = base.check_float(step_mult, "step_mult")
  num_features = 2 + len(decays) + (2 + len(decays)) * len(second_moment_decays)
  sizes = (num_features + len(timescales),) + hidden + (2,)
  decay_arr = np.asarray(decays, np.float32)
  sm_decay_arr = np.asarray(second_moment_decays, np.float32)
  scales = np.asarray(timescales, np.float32)

  def init(key):
    layers = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
      w = jax.random.truncated_normal(k, -2.0, 2.0, (m, n), jnp.float32) / np.sqrt(m)
      layers.append({"w": w, "b": jnp.zeros((n,), jnp.float32)})
    return {"layers": layers}

  def optimizer(theta):
    layers = theta["layers"]

    def opt_init(params):
      accum = lambda n: jax.tree.map(
          lambda p: jnp.zeros(jnp.shape(p) + (n,), jnp.result_type(p)), params)
      return MLPLOptState(accum(len(decays)), accum(len(second_moment_decays)),
                          jnp.zeros((), jnp.int32))

    def opt_update(grads, state, params=None):
      if params is None:
        raise ValueError("mlp_lopt's update needs params (its features include them)")
      if not jax.tree.leaves(params):
        raise ValueError("mlp_lopt's update got params with no arrays")
      params = jax.tree.map(jnp.asarray, params)
      grads = jax.tree.map(jnp.asarray, grads)
      # In the accumulators' own dtype: a scan over training steps needs the state's types fixed.
      momentum = jax.tree.map(
          lambda m, g: (decay_arr * m + (1 - decay_arr) * g[..., None]).astype(m.dtype),
          state.momentum, grads)
      second = jax.tree.map(
          lambda v, g: (sm_decay_arr * v + (1 - sm_decay_arr) * jnp.square(g)[..., None]
                        ).astype(v.dtype), state.second_moment, grads)
      leaves, treedef = jax.tree.flatten(params)
      features = []
      for p, g, m, v in zip(leaves, treedef.flatten_up_to(grads), treedef.flatten_up_to(momentum),
                            treedef.flatten_up_to(second)):
        columns = [p.reshape(p.size, 1), g.reshape(p.size, 1), m.reshape(p.size, len(decays))]
        if second_moment_decays:
          # Per second-moment decay: its root, and the gradient and every momentum divided by
          # it (Adam's and RMSprop's directions are then linear in the inputs).
          # eps inside the root (Adam's eps_root): sqrt'(0) is infinite, and a unit that never
          # gets a gradient (a masked one) would make the meta-gradient NaN.
          v = v.reshape(p.size, len(second_moment_decays)) + 1e-12
          rms, inverse = jnp.sqrt(v), jax.lax.rsqrt(v)
          scaled = jnp.concatenate([g.reshape(p.size, 1), m.reshape(p.size, len(decays))], axis=1)
          columns += [rms, (scaled[:, :, None] * inverse[:, None, :]).reshape(p.size, -1)]
        features.append(_normalise(jnp.concatenate(columns, axis=1).astype(jnp.float32)))
      x = jnp.concatenate(features, axis=0) if len(features) > 1 else features[0]
      # The step features are one row shared by every element: fold them into the bias.
      t = state.count.astype(jnp.float32)
      time_row = jnp.tanh(t / scales - 1.0)
      first = layers[0]
      h = x @ first["w"][:num_features] + (first["b"] + time_row @ first["w"][num_features:])
      if len(layers) == 1:  # no hidden layer: the first layer is the output layer
        direction, magnitude = h[:, 0], h[:, 1]
      else:
        for layer in layers[1:-1]:
          h = jax.nn.relu(h) @ layer["w"] + layer["b"]
        h, last = jax.nn.relu(h), layers[-1]
        if x.shape[0] >= _MANY_ROWS:
          # Two outputs: as two multiply-reduce fusions XLA's CPU backend runs ~3x faster than
          # a (rows, hidden) x (hidden, 2) matmul (measured at 16 x 1,000 rows); slower for few.
          direction = jnp.sum(h * last["w"][:, 0], axis=-1) + last["b"][0]
          magnitude = jnp.sum(h * last["w"][:, 1], axis=-1) + last["b"][1]
        else:
          out = h @ last["w"] + last["b"]
          direction, magnitude = out[:, 0], out[:, 1]
      steps = direction * jnp.exp(magnitude * exp_mult) * step_mult
      updates, start = [], 0
      for p in leaves:
        updates.append((-steps[start:start + p.size]).reshape(p.shape).astype(p.dtype))
        start += p.size
      return (jax.tree.unflatten(treedef, updates),
              MLPLOptState(momentum, second, state.count + 1))

    return optax.GradientTransformation(opt_init, opt_update)

  return LearnedOptimizer(init, optimizer, "mlp_lopt")


def _sequence(values, name: str) -> tuple:
  """``values`` as a tuple, or a ValueError naming ``name`` (a lone number is a common slip)."""
  if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
    raise ValueError(f"{name} must be a sequence (e.g. a tuple), got {base.describe(values)}")
  return tuple(values)


def _check_decays(values: Sequence[float], name: str) -> tuple[float, ...]:
  out = []
  for value in _sequence(values, name):
    value = base.check_float(value, name, positive=False)
    if not 0 <= value < 1:
      raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    out.append(value)
  return tuple(out)
