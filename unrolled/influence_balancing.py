"""Influence balancing (Tallec & Ollivier 2017; the PES paper's first experiment)."""

from __future__ import annotations

import jax.numpy as jnp

import metaopt
from unrolled.problem import Problem


def influence_balancing(*, n: int = 23, p: int = 10, horizon: int = 100,
                        theta: float = 0.5) -> Problem:
  """A linear system whose long-horizon optimum truncation gets wrong.

  State s of ``n`` units, s_0 = ones, s_{t+1} = A s_t + theta * v with
  A = 0.5 I + 0.5 superdiagonal and v = (1 x p, -1 x (n - p)); the loss of a
  step is 0.5 (s_{t+1}[0] - 1)^2. Unit 0 sums the drive of every unit with a
  delay, so theta's short-term effect (through the positive units) and its
  long-term effect (through all units) have opposite signs: truncated
  gradients push theta the wrong way. The long-horizon optimum is
  theta* = 1 / (2 (2p - n)), -1/6 for the defaults.

  Args:
    n: number of units.
    p: number of "positive" units (the first p).
    horizon: inner steps before the state restarts from ones.
    theta: initial theta.

  Returns:
    A :class:`Problem` whose ``num_params`` is ``n``: the units the inner loop
    updates (its state; there are no separate weights).
  """
  if not 0 < p < n:
    raise ValueError(f"p must lie in (0, n={n}), got {p!r}")
  a = 0.5 * jnp.eye(n) + 0.5 * jnp.eye(n, k=1)
  v = jnp.concatenate([jnp.ones(p), -jnp.ones(n - p)])

  def init(key, th):
    del key
    return jnp.ones(n, jnp.result_type(th))

  def step(s, th, key):
    del key
    s = a @ s + th * v
    return s, 0.5 * (s[0] - 1.0) ** 2

  return Problem(
      system=metaopt.UnrolledSystem(init, step, horizon),
      theta=jnp.float32(theta),
      description=(f"Influence balancing (Tallec & Ollivier 2017): n={n} units, p={p} positive, "
                   f"horizon {horizon}; long-horizon optimum theta* = {1 / (2 * (2 * p - n)):.4f}."),
      hyperparameters=lambda th: {"theta": th}, num_params=n)
