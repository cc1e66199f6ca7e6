"""Learning-rate schedules whose parameters are hyperparameters: pure jnp, differentiable under jit.

optax's own ``exponential_decay`` and ``warmup_cosine_decay_schedule`` branch
in Python on their arguments and fail when those are traced; these never do.
Each schedule maps unconstrained parameters (part of theta) and the inner step
count to a learning rate.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Schedule(NamedTuple):
  """A parameterised schedule.

  Attributes:
    params: the initial (unconstrained) parameters, a float32 array.
    fn: ``fn(params, step) -> value``; pure jnp, ``step`` an int scalar.
    name: what kind of schedule it is.
    knots: for knot-based schedules, the steps at which each parameter sits.
  """
  params: jax.Array
  fn: Callable[[jax.Array, jax.Array], jax.Array]
  name: str
  knots: np.ndarray | None = None

  def __call__(self, params: jax.Array, step: jax.Array) -> jax.Array:
    return self.fn(params, step)

  def curve(self, params: jax.Array, horizon: int) -> jax.Array:
    """The schedule's value at every step 0..horizon-1."""
    return jax.vmap(lambda t: self.fn(params, t))(jnp.arange(horizon))


def _positive(name, value):
  if not np.all(np.asarray(value) > 0):
    raise ValueError(f"{name} must be positive, got {value!r}")
  return np.log(np.asarray(value, np.float32))


def _check_horizon(horizon):
  if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
    raise ValueError(f"horizon must be a positive int, got {horizon!r}")


def constant(value: float) -> Schedule:
  """lr = exp(p)."""
  return Schedule(jnp.asarray(_positive("value", value)), lambda p, t: jnp.exp(p), "constant")


def exponential_decay(init_value: float, decay_rate: float) -> Schedule:
  """lr_t = init_value * decay_rate**t, with params (log init_value, logit decay_rate)."""
  if not 0 < decay_rate < 1:
    raise ValueError(f"decay_rate must lie in (0, 1), got {decay_rate!r}")
  log_init = _positive("init_value", init_value)
  params = jnp.array([log_init, np.log(decay_rate) - np.log1p(-decay_rate)], jnp.float32)

  def fn(p, t):
    return jnp.exp(p[0] + t * jax.nn.log_sigmoid(p[1]))

  return Schedule(params, fn, "exponential_decay")


def linear_interpolation(init_value: float, end_value: float, *, horizon: int) -> Schedule:
  """lr_t interpolates linearly from exp(p0) at step 0 to exp(p1) at step ``horizon``.

  The schedule of the short-horizon-bias toy problem (Wu et al. 2018; Vicol et al. 2021).
  """
  _check_horizon(horizon)
  params = jnp.asarray(_positive("values", [init_value, end_value]))

  def fn(p, t):
    u = jnp.clip(t / horizon, 0.0, 1.0)
    return (1.0 - u) * jnp.exp(p[0]) + u * jnp.exp(p[1])

  return Schedule(params, fn, "linear_interpolation")


def warmup_cosine(peak_value: float, end_value: float, *, warmup_steps: int,
                  horizon: int) -> Schedule:
  """Linear warm-up from 0 to the peak over ``warmup_steps``, then cosine decay to the end value.

  params = (log peak_value, log end_value), both learnable.
  """
  _check_horizon(horizon)
  if not 0 <= warmup_steps < horizon:
    raise ValueError(f"warmup_steps must lie in [0, horizon={horizon}), got {warmup_steps!r}")
  params = jnp.asarray(_positive("values", [peak_value, end_value]))
  decay_steps = horizon - warmup_steps

  def fn(p, t):
    peak, end = jnp.exp(p[0]), jnp.exp(p[1])
    warm = peak * (t + 1) / (warmup_steps + 1)
    u = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * u))
    return jnp.where(t < warmup_steps, warm, cosine)

  return Schedule(params, fn, "warmup_cosine")


def piecewise_linear_log(init_value: float, *, num_knots: int, horizon: int) -> Schedule:
  """log lr is piecewise linear between ``num_knots`` learnable knots spread evenly over the horizon.

  Knot k sits at step round(k * (horizon - 1) / (num_knots - 1)); params are
  the log learning rates at the knots. The main "tune a schedule online" case.
  """
  _check_horizon(horizon)
  if isinstance(num_knots, bool) or not isinstance(num_knots, int) or num_knots < 2:
    raise ValueError(f"num_knots must be an int >= 2, got {num_knots!r}")
  knots = np.linspace(0, horizon - 1, num_knots).astype(np.float32)
  params = jnp.full((num_knots,), _positive("init_value", init_value), jnp.float32)
  knots_j = jnp.asarray(knots)

  def fn(p, t):
    return jnp.exp(jnp.interp(jnp.asarray(t, jnp.float32), knots_j, p))

  return Schedule(params, fn, "piecewise_linear_log", knots)


def per_step(init_value: float, *, horizon: int) -> Schedule:
  """A free learning rate per inner step: params = log lr of each step 0..horizon-1."""
  _check_horizon(horizon)
  params = jnp.full((horizon,), _positive("init_value", init_value), jnp.float32)

  def fn(p, t):
    return jnp.exp(p[jnp.clip(t, 0, horizon - 1)])

  return Schedule(params, fn, "per_step", np.arange(horizon))
