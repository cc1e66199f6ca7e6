"""The 2-D toy regression with a learning-rate schedule: short-horizon bias."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

import metaopt
from unrolled import schedules
from unrolled.problem import Problem


class ToyState(NamedTuple):
  x: jax.Array
  step: jax.Array


def toy_objective(x: jax.Array) -> jax.Array:
  """f(x) = sqrt(x0^2 + 5) - sqrt(5) + sin^2(x1) exp(-5 x0^2) + 0.25 |x1 - 100|."""
  return (jnp.sqrt(x[0] ** 2 + 5.0) - jnp.sqrt(5.0) + jnp.sin(x[1]) ** 2 * jnp.exp(-5.0 * x[0] ** 2)
          + 0.25 * jnp.abs(x[1] - 100.0))


def toy_regression(*, horizon: int = 100, theta: tuple[float, float] = (-4.0, -4.0)) -> Problem:
  """Inner SGD on a 2-D function whose greedy learning rate is too small (Wu et al. 2018).

  SGD starts from x = (1, 1); the learning rate interpolates linearly over the
  horizon from exp(theta0) to exp(theta1); the meta-objective is the sum of
  f over the horizon's steps (f after each step). Short truncations prefer
  small rates that settle into the sin^2 ripples; the whole horizon rewards
  rates large enough to travel towards x1 = 100 (Vicol et al. 2021, Fig. 4).

  Args:
    horizon: inner steps T.
    theta: initial (log lr at step 0, log lr at step T).

  Returns:
    A :class:`Problem` whose ``num_params`` is 2: the point x that SGD trains
    (the step counter is not a parameter).
  """
  schedule = schedules.linear_interpolation(1.0, 1.0, horizon=horizon)
  grad_f = jax.grad(toy_objective)

  def init(key, th):
    del key
    return ToyState(jnp.ones(2, jnp.result_type(th)), jnp.zeros((), jnp.int32))

  def step(state, th, key):
    del key
    lr = schedule(th, state.step)
    x = state.x - lr * grad_f(state.x)
    return ToyState(x, state.step + 1), toy_objective(x)

  return Problem(
      system=metaopt.UnrolledSystem(init, step, horizon),
      theta=jnp.asarray(theta, jnp.float32),
      description=(f"Toy regression (Wu et al. 2018; Vicol et al. 2021): SGD from (1, 1) for "
                   f"{horizon} steps, lr linear from exp(theta0) to exp(theta1)."),
      hyperparameters=lambda th: {"learning_rate_start": jnp.exp(th[0]),
                                  "learning_rate_end": jnp.exp(th[1]),
                                  "learning_rate_curve": schedule.curve(th, horizon)},
      evaluate=lambda state: {"f": toy_objective(state.x)}, num_params=2)
