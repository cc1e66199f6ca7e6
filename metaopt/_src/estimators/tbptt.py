"""Truncated and full backpropagation through time."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.core import window


class TBPTTState(NamedTuple):
  """State of :func:`tbptt` and :func:`full_bptt` (the window mechanism's fields alone).

  Attributes:
    inner: the inner state at the start of the next window.
    count: inner steps taken in the current horizon (see :func:`~metaopt.windowed`).
    init_key: key data of the current horizon's initial-state key.
    theta_spec: theta's structure, shapes and dtypes at ``init``, as zero-size arrays
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def tbptt(system: base.UnrolledSystem, *, num_steps: int, remat: bool = False,
          unroll: int | bool = 1) -> base.Estimator:
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
    unroll: steps per iteration of the window's ``lax.scan`` (``True``: the
      whole window, straight-line code). Unrolling removes the loop's
      per-step bookkeeping (stacking each step's residuals for the backward
      pass, copying the carry) at the price of compile time: on the digits
      MLP of 1M parameters (2-core CPU, ``num_steps=20``) ``unroll=True``
      took the cost from 4.02 to 3.41 plain steps (its FLOPs: 2.96) and the
      first call's compile from 3.1 s to 9.4 s (``python -m launch.benchmark``).

  Returns:
    An :class:`~metaopt.Estimator`. ``metrics["loss"]`` is the window's summed loss.

  Examples:
    Truncation ignores the first window's effect on the second: a one-step
    window sees only the direct effect of theta on each loss.

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.float32(0.0),
    ...     step=lambda s, th, key: (s + th, s + th), horizon=4)
    >>> est = metaopt.tbptt(system, num_steps=1)
    >>> g = metaopt.sum_window_grads(est, jnp.float32(1.0), jax.random.key(0), num_windows=4)
    >>> float(g), float(metaopt.exact_grad(system, 1.0, jax.random.key(0), num_steps=1,
    ...                                    num_windows=4))
    (4.0, 10.0)
  """
  num_steps = window.check_num_steps(num_steps, base.check_system(system))
  remat = base.check_flag(remat, "remat")
  if isinstance(unroll, bool):
    unroll = num_steps if unroll else 1
  unroll = base.check_count(unroll, "unroll")

  def window_loss(begin, theta, keys):
    segment = _segment_length(num_steps) if remat else num_steps
    run = lambda s, ks: jax.lax.scan(lambda s, k: system.step(s, theta, k), s, ks,
                                     unroll=min(unroll, len(ks)))
    if segment == num_steps:
      final, losses = run(begin(theta), keys.steps)
    else:  # keep only segment boundaries; recompute a segment's inside when differentiating
      final, losses = jax.lax.scan(jax.checkpoint(run), begin(theta),
                                   keys.steps.reshape((-1, segment) + keys.steps.shape[1:]))
    return jnp.sum(losses), final

  def backprop(begin, theta, keys):
    (loss, final), grad = jax.value_and_grad(window_loss, argnums=1, has_aux=True)(
        begin, theta, keys)
    return (final,), grad, {"loss": loss}

  return window.windowed(system, TBPTTState, num_steps=num_steps, window=backprop,
                         start=lambda theta, keys, init_key: system.init(init_key, theta),
                         resume=lambda fields: fields[0])


def _segment_length(num_steps: int) -> int:
  """The divisor of num_steps nearest to sqrt(num_steps)."""
  divisors = [d for d in range(1, num_steps + 1) if num_steps % d == 0]
  return min(divisors, key=lambda d: abs(d - num_steps ** 0.5))


def full_bptt(system: base.UnrolledSystem, *, remat: bool = False,
              unroll: int | bool = 1) -> base.Estimator:
  """Exact backpropagation through a whole horizon: the offline reference.

  One ``unroll`` call runs the whole horizon from ``system.init`` and returns
  ``jax.grad`` of its summed loss (through every step and through ``init``).
  Memory grows with the horizon; ``remat=True`` makes it grow like
  sqrt(horizon) at the cost of one more forward pass (see :func:`tbptt`).

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.float32(0.0),
    ...     step=lambda s, th, key: (s + th, s + th), horizon=4)
    >>> est = metaopt.full_bptt(system)
    >>> state = est.init(jax.random.key(0), jnp.float32(1.0))
    >>> _, grad, metrics = est.unroll(state, jnp.float32(1.0), jax.random.key(1))
    >>> float(grad), float(metrics["loss"])  # loss 1 + 2 + 3 + 4 = 10 theta
    (10.0, 10.0)
  """
  return tbptt(system, num_steps=base.check_system(system), remat=remat, unroll=unroll)
