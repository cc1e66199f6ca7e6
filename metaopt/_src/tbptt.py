"""Truncated and full backpropagation through time."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base


class TBPTTState(NamedTuple):
  """State of :func:`tbptt` and :func:`full_bptt`.

  Attributes:
    inner: the inner state at the start of the next window.
    count: inner steps taken in the current horizon (0 at a horizon start).
    init_key: key data (uint32) of the key that makes the current horizon's initial state.
  """
  inner: base.PyTree
  count: jax.Array
  init_key: jax.Array


def tbptt(system: base.UnrolledSystem, *, num_steps: int, remat: bool = False) -> base.Estimator:
  """Truncated backpropagation through time over windows of ``num_steps`` steps.

  Each window's gradient is reverse-mode ``jax.grad`` of the window's summed
  loss, with the incoming inner state held constant, except in the first
  window of a horizon, which differentiates through ``system.init`` too. With
  ``num_steps == horizon`` it is exact; with shorter windows it ignores every
  dependence that crosses a window boundary (biased, "short-horizon bias").

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    remat: rematerialise (``jax.checkpoint``) instead of storing every
      step's state and activations: the window is scanned in segments of
      about sqrt(num_steps) steps and only the segments' first states are
      kept; the backward pass recomputes one segment at a time. Memory grows
      like sqrt(num_steps) instead of num_steps, for about one more forward
      pass of compute.

  Returns:
    An :class:`~metaopt.Estimator`. ``metrics["loss"]`` is the window's summed loss.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2),
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.tbptt(system, num_steps=2)
    >>> state = est.init(jax.random.key(0), jnp.float32(0.1))
    >>> state, grad, metrics = est.unroll(state, jnp.float32(0.1), jax.random.key(1))
  """
  horizon = base.check_horizon(system)
  base.check_num_steps(num_steps, horizon)
  segment = _segment_length(num_steps) if remat else num_steps

  def init(key, theta):
    base.check_init_args(system, key, theta)
    return TBPTTState(system.init(key, theta), base.initial_count(),
                     base.key_data(key))

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)

    def window_loss(th):
      start = jax.lax.cond(state.count == 0,
                           lambda: system.init(base.as_key(state.init_key), th),
                           lambda: jax.lax.stop_gradient(state.inner))
      run = lambda s, ks: jax.lax.scan(lambda s, k: system.step(s, th, k), s, ks)
      if segment == num_steps:
        final, losses = run(start, keys.steps)
      else:  # keep only segment boundaries; recompute a segment's inside when differentiating
        final, losses = jax.lax.scan(jax.checkpoint(run), start,
                                     keys.steps.reshape((-1, segment) + keys.steps.shape[1:]))
      return jnp.sum(losses), final

    (loss, final), grad = jax.value_and_grad(window_loss, has_aux=True)(theta)
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    return TBPTTState(final, count, init_key), grad, {"loss": loss}

  return base.Estimator(init, unroll)


def _segment_length(num_steps: int) -> int:
  """The divisor of num_steps nearest to sqrt(num_steps)."""
  divisors = [d for d in range(1, num_steps + 1) if num_steps % d == 0]
  return min(divisors, key=lambda d: abs(d - num_steps ** 0.5))


def full_bptt(system: base.UnrolledSystem, *, remat: bool = False) -> base.Estimator:
  """Exact backpropagation through a whole horizon: the offline reference.

  One ``unroll`` call runs the whole horizon from ``system.init`` and returns
  ``jax.grad`` of its summed loss (through every step and through ``init``).
  Memory grows with the horizon; ``remat=True`` makes it grow like
  sqrt(horizon) at the cost of one more forward pass (see :func:`tbptt`).

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.full_bptt(system)
    >>> state = est.init(jax.random.key(0), jnp.float32(0.1))
    >>> _, grad, _ = est.unroll(state, jnp.float32(0.1), jax.random.key(1))
  """
  return tbptt(system, num_steps=base.check_horizon(system), remat=remat)
