"""Online tuning: alternate an estimator's window with an outer optax step on theta."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt._src.core import base
from metaopt._src.devices import sharding
from metaopt._src.tuning import validation as validation_lib
from metaopt._src.tuning.validation import check_validation
from metaopt._src.tuning.validation import DEFAULT_SIGNIFICANCE  # noqa: F401 (re-exported)
from metaopt._src.tuning.validation import DEFAULT_TRUST_RADIUS  # noqa: F401 (re-exported)
from metaopt._src.tuning.validation import Validation


class TunerState(NamedTuple):
  """State of :func:`tuner`; a pytree of arrays (checkpoint it with ``metaopt.checkpoint``).

  Attributes:
    theta: the current hyperparameters.
    outer_state: the meta-optimiser's state.
    estimator_state: the estimator's state, one per chain (leading axis ``num_chains``).
    key: key data for the next outer step.
    step: outer steps taken.
    num_skipped: outer steps whose update was skipped for non-finite values.
    grad_mean, grad_sq_mean: exponential moving averages over time of the
      (chain-averaged) hypergradient and of its square, flat (H,); divided by
      ``ema_weight`` they are bias-corrected, and their difference gives the variance.
    ema_weight: 1 - decay^(number of finite steps), for the bias correction.
    horizon_theta: theta when the current horizon started.
    horizon_loss: the current horizon's window losses so far (chains' mean), summed.
    best_theta, best_loss: the theta that started the horizon with the lowest mean
      loss so far, and that loss (inf before the first horizon ends).
    num_rollbacks: horizons (or rejected validations) after which theta was set
      back to ``best_theta``.
    step_scale: the factor on every meta-optimiser update (1; with a
      :class:`Validation`, multiplied by ``shrink`` after each rejection).
    validation_loss: the latest validated theta's score (its mean loss).
    num_validations: validations run after ``init``'s one of the initial theta.
    best_losses, initial_losses: the best and the initial theta's validation
      losses, flat (one entry for a scalar score), for the paired comparisons.

  With a :class:`Validation`, ``best_theta`` and ``best_loss`` are the best
  VALIDATED theta and its score (the initial theta's first), not a horizon's.
  """
  theta: Any
  outer_state: Any
  estimator_state: Any
  key: jax.Array
  step: jax.Array
  num_skipped: jax.Array
  grad_mean: jax.Array
  grad_sq_mean: jax.Array
  ema_weight: jax.Array
  horizon_theta: Any = None
  horizon_loss: jax.Array | None = None
  best_theta: Any = None
  best_loss: jax.Array | None = None
  num_rollbacks: jax.Array | None = None
  step_scale: jax.Array | None = None
  validation_loss: jax.Array | None = None
  num_validations: jax.Array | None = None
  best_losses: jax.Array | None = None
  initial_losses: jax.Array | None = None


class Tuner(NamedTuple):
  """``init(key, theta) -> state``; ``update(state) -> (state, info)``; ``run(state, n)``."""
  init: Callable[[jax.Array, Any], TunerState]
  update: Callable[[TunerState], tuple[TunerState, dict]]
  run: Callable[[TunerState, int], tuple[TunerState, dict]]


def tuner(estimator: base.Estimator, meta_optimizer: optax.GradientTransformation, *,
          num_chains: int = 1, max_grad_norm: float | None = None,
          ema_decay: float = 0.9, spread_chains: bool | None = None,
          horizon_windows: int | None = None, rollback_factor: float = 1.5,
          validation: Validation | None = None) -> Tuner:
  """Online hyperparameter tuning with any estimator and any optax meta-optimiser.

  Each outer step runs one window of every chain (``num_chains`` independent
  estimator states, vmapped, each with its own keys), averages their
  hypergradients and applies one meta-optimiser step to theta. Horizon resets
  happen inside the estimator. If any chain's hypergradient or loss is not
  finite, or the step would make theta or the meta-optimiser's state
  non-finite (a huge but finite hypergradient squared in Adam's second
  moment), theta and the meta-optimiser state are left unchanged, the step is counted in
  ``num_skipped``, and the chains that failed restart from a fresh horizon
  (their inner state may have diverged). The same key gives the same
  theta trajectory.

  Rollback (with ``horizon_windows``, the windows of one horizon): at the end
  of every horizon the tuner compares the horizon's mean window loss with the
  best so far; a horizon worse than ``rollback_factor`` times the best (or
  non-finite) sets theta back to the theta that started the best horizon
  (counted in ``num_rollbacks``; the meta-optimiser's state goes on). A
  tuner drifting into a region where the inner training degrades therefore
  never ends far from its best theta. It judges horizons, not theta: a slow
  drift of theta that keeps the horizons' losses level never sets it off.

  Validation (``validation``, a :class:`Validation`; it replaces the horizon
  rollback): the initial theta and then theta every ``validation.every`` outer
  steps are scored by a fixed validation run; a theta worse than the best
  validated one is sent back to it and the step size shrinks, and
  ``state.best_theta`` is the best validated theta, the tuner's product.
  ``metaopt.tune`` and the tuning study turn it on.

  ``init`` refuses a NaN or inf theta when theta is concrete. Under
  ``jax.jit(init)`` it cannot look at the values; every update is then
  non-finite, skipped and counted in ``num_skipped``. ``update`` refuses a
  ``state.theta`` whose structure, shapes or dtypes differ from ``init``'s
  (a static check, free under jit).

  Args:
    estimator: a :class:`~metaopt.Estimator`.
    meta_optimizer: the outer optimiser, e.g. ``optax.sgd(1e-4)``.
    num_chains: independent estimator chains whose hypergradients are averaged;
      their spread is the online variance estimate.
    max_grad_norm: if given, clip the averaged hypergradient to this global norm.
    ema_decay: decay of the moving mean and variance of the hypergradient over time.
    horizon_windows: windows per horizon, for the rollback (None: no rollback).
    rollback_factor: a horizon's mean loss above this multiple of the best
      horizon's sets theta back.
    validation: a :class:`Validation` (see above); None: none.
    spread_chains: lay the chains out over the local devices (default: when
      there are several devices and ``num_chains`` divides their number). One
      axis only should be spread: when the chains are, build the estimator
      with ``spread_copies=False`` (:func:`~metaopt.get_estimator` takes it
      too), or XLA moves data between devices every window.

  Returns:
    A :class:`Tuner`. ``info`` holds ``grad`` (flat, averaged), ``chain_grads``
    (num_chains, H), ``chain_variance`` (H,), ``loss`` (chains' mean window
    loss), ``finite``, every estimator metric averaged over chains, the
    post-update ``theta``, ``best_loss``, ``validation_loss``, ``step_scale``
    and ``num_rollbacks``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2),
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum((s - 1.0) ** 2)),
    ...     horizon=4)
    >>> t = metaopt.tuner(metaopt.rtrl(system, num_steps=2), optax.sgd(0.01))
    >>> state = t.init(jax.random.key(0), jnp.float32(0.0))
    >>> state, infos = jax.jit(t.run, static_argnums=1)(state, 10)
  """
  base.check_estimator(estimator)
  if not (callable(getattr(meta_optimizer, "init", None))
          and callable(getattr(meta_optimizer, "update", None))):
    raise ValueError("meta_optimizer must be an optax.GradientTransformation, e.g. "
                     f"optax.sgd(1e-3); got {base.describe(meta_optimizer)}")
  num_chains = base.check_count(num_chains, "num_chains")
  if max_grad_norm is not None:  # inf would be no clipping: say None
    max_grad_norm = base.check_float(max_grad_norm, "max_grad_norm")
  ema_decay = base.check_float(ema_decay, "ema_decay", positive=False)
  if not 0 <= ema_decay < 1:
    raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay!r}")
  if spread_chains is not None:
    spread_chains = base.check_flag(spread_chains, "spread_chains")
  if horizon_windows is not None:
    horizon_windows = base.check_count(horizon_windows, "horizon_windows")
  rollback_factor = base.check_float(rollback_factor, "rollback_factor")
  if rollback_factor < 1:
    raise ValueError(f"rollback_factor must be >= 1, got {rollback_factor!r}")
  if validation is not None:
    validation = check_validation(validation)
    horizon_windows = None  # the acceptance test replaces the horizon rollback
  if max_grad_norm is not None:
    meta_optimizer = optax.chain(optax.clip_by_global_norm(max_grad_norm), meta_optimizer)
  if spread_chains is None:
    spread_chains = sharding.spreads(num_chains)
  shard = lambda tree: sharding.shard_leading(tree, spread=spread_chains)
  init_chains = jax.vmap(estimator.init, in_axes=(0, None))
  unroll_chains = jax.vmap(estimator.unroll, in_axes=(0, None, 0))

  def init(key, theta):
    base.check_key(key)
    base.check_theta(theta)
    # Host-side, so only on a concrete theta; under jax.jit(init) a NaN theta makes every
    # update non-finite, and each is skipped and counted in num_skipped.
    base.check_finite_theta(theta)
    # A weakly typed theta (jnp.full(3, 0.1)) would come back strongly typed from update,
    # and a Python loop calling a jitted update would compile it twice.
    theta = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), theta)
    key_chains, key_next = jax.random.split(key)
    theta_vec, _ = base.ravel(theta)
    zeros = jnp.zeros_like(theta_vec)
    best_losses = (jnp.full((1,), jnp.inf, jnp.float32) if validation is None else
                   validation_lib.losses_of(validation, theta))
    best_loss = jnp.mean(best_losses)
    return TunerState(
        theta=theta, outer_state=meta_optimizer.init(theta),
        estimator_state=shard(
            init_chains(jax.random.split(key_chains, num_chains), theta)),
        key=base.key_data(key_next), step=jnp.zeros((), jnp.int32),
        num_skipped=jnp.zeros((), jnp.int32), grad_mean=zeros, grad_sq_mean=zeros,
        ema_weight=jnp.zeros((), theta_vec.dtype), horizon_theta=theta,
        horizon_loss=jnp.zeros((), jnp.float32), best_theta=theta,
        best_loss=best_loss, num_rollbacks=jnp.zeros((), jnp.int32),
        step_scale=jnp.ones((), jnp.float32), validation_loss=best_loss,
        num_validations=jnp.zeros((), jnp.int32), best_losses=best_losses,
        initial_losses=best_losses)

  def update(state):
    check_state(state)
    key_unroll, key_reset, key_next = jax.random.split(base.as_key(state.key), 3)
    est_state, grads, metrics = unroll_chains(
        shard(state.estimator_state), state.theta,
        jax.random.split(key_unroll, num_chains))
    est_state = shard(est_state)
    chain_grads = jax.vmap(lambda g: base.ravel(g)[0])(grads)
    chain_ok = jnp.all(jnp.isfinite(chain_grads), axis=1) & jnp.isfinite(metrics["loss"])
    finite = jnp.all(chain_ok)
    grad = jnp.mean(chain_grads, axis=0)
    _, unravel = base.ravel(state.theta)
    # Non-finite values must not reach theta: compute the update on zeros, then select.
    safe_grad = jnp.where(finite, grad, 0.0)
    updates, outer_state = meta_optimizer.update(unravel(safe_grad), state.outer_state,
                                                 state.theta)
    updates = jax.tree.map(lambda u: (u * state.step_scale).astype(u.dtype), updates)
    theta = optax.apply_updates(state.theta, updates)
    # A finite hypergradient can still overflow theta (a huge step) or the meta-optimiser's state
    # (|g| ~ 1e28 squares to inf in Adam's second moment, which would freeze theta for good):
    # either counts as non-finite too.
    finite = (finite & jnp.all(jnp.isfinite(base.ravel(theta)[0]))
              & _all_finite(outer_state))
    safe_grad = jnp.where(finite, grad, 0.0)
    theta = base.select_tree(finite, theta, state.theta)
    outer_state = base.select_tree(finite, outer_state, state.outer_state)
    est_state = jax.lax.cond(
        finite, lambda: est_state,
        lambda: _reset_failed(chain_ok, est_state,
                              init_chains(jax.random.split(key_reset, num_chains), theta)))
    # Exponential moving averages of g and g^2 (bias-corrected by ema_weight when read).
    weight = jnp.where(finite, ema_decay * state.ema_weight + (1 - ema_decay), state.ema_weight)
    grad_mean = jnp.where(finite, ema_decay * state.grad_mean + (1 - ema_decay) * safe_grad,
                          state.grad_mean)
    grad_sq_mean = jnp.where(finite,
                             ema_decay * state.grad_sq_mean + (1 - ema_decay) * safe_grad**2,
                             state.grad_sq_mean)
    if validation is None:
      rollback = _rollback(state, theta, jnp.mean(metrics["loss"]).astype(jnp.float32),
                           horizon_windows, rollback_factor)
    else:
      if validation.radius is not None:  # a trust region around the best validated theta
        r = validation.radius * state.step_scale
        theta = jax.tree.map(lambda t, b: b + jnp.clip(t - b, -r, r).astype(t.dtype), theta,
                             state.best_theta)
      rollback = validation_lib.accept(state, theta, validation)
    theta = rollback["theta"]
    new_state = TunerState(theta, outer_state, est_state, base.key_data(key_next),
                           state.step + 1, state.num_skipped + (~finite).astype(jnp.int32),
                           grad_mean, grad_sq_mean, weight, rollback["horizon_theta"],
                           rollback["horizon_loss"], rollback["best_theta"],
                           rollback["best_loss"], rollback["num_rollbacks"],
                           rollback.get("step_scale", state.step_scale),
                           rollback.get("validation_loss", state.validation_loss),
                           rollback.get("num_validations", state.num_validations),
                           rollback.get("best_losses", state.best_losses),
                           state.initial_losses)
    safe_weight = jnp.maximum(weight, 1e-12)
    ema_mean = grad_mean / safe_weight
    info = {name: jnp.mean(value) for name, value in metrics.items()}
    info.update(grad=grad, chain_grads=chain_grads,
                chain_variance=jnp.var(chain_grads, axis=0, ddof=1 if num_chains > 1 else 0),
                finite=finite, num_skipped=new_state.num_skipped, step=new_state.step,
                num_rollbacks=new_state.num_rollbacks,
                theta=base.ravel(theta)[0], best_loss=new_state.best_loss,
                validation_loss=new_state.validation_loss, step_scale=new_state.step_scale,
                grad_ema_mean=ema_mean,
                grad_ema_var=jnp.maximum(grad_sq_mean / safe_weight - ema_mean**2, 0.0))
    return new_state, info

  def run(state, num_updates):
    num_updates = base.check_count(num_updates, "num_updates", minimum=0)
    return jax.lax.scan(lambda s, _: update(s), state, None, length=num_updates)

  return Tuner(init, update, run)


def check_state(state: Any) -> None:
  """Static checks of an ``update``'s state: free at run time, fine under jit."""
  if not isinstance(state, TunerState):
    raise ValueError(f"state must be a TunerState from tuner.init, got {base.describe(state)}")
  base.check_theta(state.theta)
  size = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(state.theta))
  if (size,) != tuple(jnp.shape(state.grad_mean)):
    raise ValueError(f"state.theta has {size} coordinates, but the state was made (tuner.init) "
                     f"for {math.prod(jnp.shape(state.grad_mean))}: theta must keep its "
                     "structure, shapes and dtypes")


def _rollback(state, theta, loss, horizon_windows, factor):
  """The rollback's bookkeeping after one outer step (theta: the updated theta)."""
  keep = dict(theta=theta, horizon_theta=state.horizon_theta, horizon_loss=state.horizon_loss,
              best_theta=state.best_theta, best_loss=state.best_loss,
              num_rollbacks=state.num_rollbacks)
  if horizon_windows is None:
    return keep
  total = state.horizon_loss + loss
  ends = (state.step + 1) % horizon_windows == 0
  mean = total / horizon_windows
  better = ends & (mean <= state.best_loss)
  worse = ends & ~better & ~(mean <= factor * state.best_loss)  # NaN counts as worse
  best_theta = base.select_tree(better, state.horizon_theta, state.best_theta)
  theta = base.select_tree(worse, best_theta, theta)
  return dict(theta=theta,
              horizon_theta=base.select_tree(ends, theta, state.horizon_theta),
              horizon_loss=jnp.where(ends, 0.0, total).astype(jnp.float32),
              best_theta=best_theta,
              best_loss=jnp.where(better, mean, state.best_loss).astype(jnp.float32),
              num_rollbacks=state.num_rollbacks + worse.astype(jnp.int32))


def _all_finite(tree) -> jax.Array:
  """Whether every floating-point leaf of ``tree`` is finite (integer leaves always are)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if base.is_float(x)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def _reset_failed(chain_ok, est_state, fresh):
  """Per chain: keep the state where the chain was finite, else take the fresh one."""
  def pick(old, new):
    mask = chain_ok.reshape(chain_ok.shape + (1,) * (old.ndim - 1))
    return jnp.where(mask, old, new)
  return jax.tree.map(pick, est_state, fresh)
