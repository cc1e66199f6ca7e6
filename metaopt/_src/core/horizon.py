"""Whole-horizon helpers: an estimator's summed window grads, the exact gradient on the same keys,
and the metrics of one fresh horizon at a fixed theta."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.core import window


def window_keys(key: jax.Array, num_windows: int) -> tuple[jax.Array, jax.Array]:
  """``(init_key, keys)``: the key for ``est.init`` and one key per ``unroll`` call.

  :func:`sum_window_grads` and :func:`exact_grad` split ``key`` this way, so
  both see the same inner trajectory.
  """
  base.check_key(key)
  num_windows = base.check_count(num_windows, "num_windows")
  init_key, rest = jax.random.split(key)
  return init_key, jax.random.split(rest, num_windows)


def sum_window_grads(estimator: base.Estimator, theta: base.PyTree, key: jax.Array, *,
                     num_windows: int) -> base.PyTree:
  """The sum of ``num_windows`` window grads of a fresh estimator state at a fixed theta.

  Over whole horizons this estimates the gradient of the summed loss; compare
  it with :func:`exact_grad` on the same ``key``. Pure and jit-able (a
  ``lax.scan`` over windows).

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.rtrl(system, num_steps=2)
    >>> g = metaopt.sum_window_grads(est, 0.1, jax.random.key(0), num_windows=2)
    >>> exact = metaopt.exact_grad(system, 0.1, jax.random.key(0), num_steps=2, num_windows=2)
    >>> bool(jnp.allclose(g, exact))
    True
  """
  base.check_estimator(estimator)
  base.check_theta(theta)
  theta = jax.tree.map(jnp.asarray, theta)
  init_key, keys = window_keys(key, num_windows)

  def body(carry, k):
    state, total = carry
    state, grad, _ = estimator.unroll(state, theta, k)
    return (state, jax.tree.map(lambda t, g: t + g.astype(t.dtype), total, grad)), None

  zeros = jax.tree.map(jnp.zeros_like, theta)
  (_, total), _ = jax.lax.scan(body, (estimator.init(init_key, theta), zeros), keys)
  return total


def exact_grad(system: base.UnrolledSystem, theta: base.PyTree, key: jax.Array, *,
               num_steps: int, num_windows: int) -> base.PyTree:
  """``jax.grad`` of the summed loss of the inner steps an estimator's windows cover.

  Replays the keys :func:`sum_window_grads` gives an estimator with windows of
  ``num_steps`` steps (horizon resets included: horizon ``h + 1`` starts from
  the ``next_init`` key of horizon ``h``'s last window), so both see the same
  initial states and minibatches.
  """
  horizon = base.check_system(system)
  num_steps = window.check_num_steps(num_steps, horizon)
  base.check_theta(theta)
  theta = jax.tree.map(jnp.asarray, theta)
  init_key, keys = window_keys(key, num_windows)
  split = jax.vmap(lambda k: window.split_window_key(k, num_steps))(keys)
  per_horizon = horizon // num_steps
  starts = range(0, num_windows, per_horizon)

  def total_loss(th):
    total, k = 0.0, init_key
    for w in starts:  # one full unroll per horizon, from that horizon's init key
      steps = split.steps[w:w + per_horizon].reshape((-1,) + split.steps.shape[2:])
      total = total + jnp.sum(base.full_unroll(system, th, k, steps)[1])
      k = split.next_init[min(w + per_horizon, num_windows) - 1]
    return total

  return jax.grad(total_loss)(theta)


def evaluate_horizon(system: base.UnrolledSystem, theta: base.PyTree, key: jax.Array, *,
                     evaluate: Callable[[base.PyTree], dict] | None = None) -> dict:
  """Trains one fresh horizon at a fixed theta; its mean and last meta-loss plus ``evaluate(final)``.

  The initial state comes from ``key`` and step ``t`` uses
  ``jax.random.split(key, horizon)[t]``: the same key evaluates different thetas
  on the same data.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2),
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum((s - 1.0) ** 2)),
    ...     horizon=8)
    >>> out = metaopt.horizon.evaluate_horizon(system, 0.5, jax.random.key(0),
    ...                                evaluate=lambda s: {"distance": jnp.sum(s)})
    >>> sorted(out)
    ['distance', 'meta_loss_last', 'meta_loss_mean']
  """
  horizon = base.check_system(system)
  base.check_key(key)
  base.check_theta(theta)
  if evaluate is not None and not callable(evaluate):
    raise ValueError(f"evaluate must be a function of the final state, got "
                     f"{base.describe(evaluate)}")
  keys = jax.random.split(key, horizon)
  final, losses = base.full_unroll(system, theta, key, keys)
  out = {"meta_loss_mean": jnp.mean(losses), "meta_loss_last": losses[-1]}
  if evaluate is not None:
    out.update(evaluate(final))
  return out
