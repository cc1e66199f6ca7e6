"""The tuner's validation: theta scored on fresh horizons, accepted only when it wins by more
than the noise (the drift guard of online tuning and the product it returns)."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.core import base


# Standard errors a validated theta must win (lose) by to become the best (to be rejected).
DEFAULT_SIGNIFICANCE = 3.0
# The trust region's radius around the best validated theta, per coordinate, for theta in log or
# logit units (as unrolled's problems parameterise it): e^0.5 = a factor 1.65 per validation.
DEFAULT_TRUST_RADIUS = 0.5


class Validation(NamedTuple):
  """How :func:`tuner` judges theta itself: an acceptance test on a fixed validation run.

  Every ``every`` outer steps the tuner calls ``validate(theta)`` (pure,
  jit-able, deterministic), e.g. one fresh training run with theta held fixed
  scored on validation data (:func:`validation` builds that one). It returns
  a float scalar, or a vector of per-example losses (the same examples every
  time), lower is better; ``init`` validates the initial theta first.
  Comparisons are paired, example by example: for two thetas, d is the
  per-example differences and se their standard error (0 for a scalar). A
  validated theta

  - becomes the best if its mean loss is below the best's AND it beats the
    INITIAL theta by ``mean(d) <= -significance * se``: a model handed on is
    better than the defaults beyond the validation's noise, and among such
    models the lowest validation loss wins, as black-box search chooses;
  - is rejected if it loses to the best by ``mean(d) > significance * se +
    tolerance * |best|``, or is not finite: theta goes back to the best, and
    every later meta-optimiser update is multiplied by ``shrink`` once more (a
    trust region that narrows where the hypergradient misleads);
  - otherwise tuning goes on from it.

  With ``radius``, every coordinate of theta stays within ``radius *
  step_scale`` of the best validated theta (a trust region, in theta's own
  units): a tuner cannot walk far past the last theta it knows to be good
  between two validations (on MNIST-1D, online RTRL's early learning rates
  otherwise cross the edge of stability, where a fresh run diverges, within
  one validation period).

  The tuner's product is the best validated theta, so a tuner left running
  never ends worse than the initial theta on its validation.

  Attributes:
    validate: ``validate(theta) -> scalar or (n,) losses``.
    every: outer steps between validations.
    significance: standard errors of the paired difference a theta must beat
      the initial theta by to become the best, and lose to the best by to be
      rejected; ignored for a scalar score.
    tolerance: relative slack, on top of the noise, before a worse theta is
      rejected (0: reject any theta worse than the best).
    shrink: factor on the step size (and the radius) after each rejection, in
      (0, 1].
    radius: the trust region's radius per coordinate (None: none);
      :data:`DEFAULT_TRUST_RADIUS` suits theta in log or logit units.
  """
  validate: Callable[[Any], jax.Array]
  every: int
  significance: float = DEFAULT_SIGNIFICANCE
  tolerance: float = 0.0
  shrink: float = 0.5
  radius: float | None = None


def validation(system: base.UnrolledSystem, *, every: int | None,
               score: Callable[[Any, jax.Array], jax.Array] | None = None, seed: int = 0,
               significance: float = DEFAULT_SIGNIFICANCE, tolerance: float = 0.0,
               shrink: float = 0.5, radius: float | None = None) -> Validation:
  """A :class:`Validation` that trains one fresh horizon of ``system`` with theta held fixed.

  The run starts from ``jax.random.key(seed)`` with the step keys
  ``jax.random.split(key, horizon)``, the keys of
  :func:`~metaopt.horizon.evaluate_horizon`, so each validation is the very model a
  retrain with that key gives.

  Args:
    system: the inner loop.
    every: outer steps between validations (None: one horizon's windows,
      filled in by :func:`~metaopt.tune`, which knows the window).
    score: ``score(final_state, losses)`` of the run: a scalar or per-example
      losses, lower is better (e.g. a problem's per-example validation losses
      of the final model, ``unrolled.Problem.validation_losses``); default:
      the mean meta-loss of the horizon's last tenth (at least one step), the
      final model's loss for a per-step validation meta-loss.
    seed: the validation run's key.
    significance, tolerance, shrink, radius: see :class:`Validation`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2),
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum((s - 1.0) ** 2)), horizon=4)
    >>> check = metaopt.validation(system, every=2)
    >>> t = metaopt.tuner(metaopt.rtrl(system, num_steps=2), optax.sgd(0.01), validation=check)
    >>> state, infos = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(0), 0.0), 10)
    >>> bool(state.best_loss <= check.validate(0.0))  # never worse than the initial theta
    True
  """
  horizon = base.check_system(system)
  if every is not None:
    every = base.check_count(every, "every")
  if score is not None and not callable(score):
    raise ValueError(f"score must be a function (final_state, losses) -> scalar, got "
                     f"{base.describe(score)}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
  last = max(1, horizon // 10)
  score = score or (lambda final, losses: jnp.mean(losses[-last:]))

  def validate(theta):
    key = jax.random.key(seed)
    final, losses = base.full_unroll(system, theta, key, jax.random.split(key, horizon))
    return jnp.asarray(score(final, losses), jnp.float32)

  return check_validation(Validation(validate, every, significance, tolerance, shrink, radius),
                          every_unset=True)


def check_validation(check: Any, *, every_unset: bool = False) -> Validation:
  """``check`` with its numbers checked, or a ValueError naming the bad one."""
  if not isinstance(check, Validation):
    raise ValueError(f"validation must be a metaopt.Validation (metaopt.validation builds one), "
                     f"got {base.describe(check)}")
  if not callable(check.validate):
    raise ValueError(f"Validation.validate must be a function of theta, got "
                     f"{base.describe(check.validate)}")
  if check.every is None and not every_unset:
    raise ValueError("Validation.every is None: give the outer steps between validations "
                     "(metaopt.tune fills in one horizon)")
  if check.every is not None:
    base.check_count(check.every, "every")
  significance = base.check_float(check.significance, "significance", positive=False)
  if significance < 0:
    raise ValueError(f"significance must be >= 0, got {significance!r}")
  tolerance = base.check_float(check.tolerance, "tolerance", positive=False)
  if tolerance < 0:
    raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
  shrink = base.check_float(check.shrink, "shrink")
  if not 0 < shrink <= 1:
    raise ValueError(f"shrink must lie in (0, 1], got {shrink!r}")
  radius = None if check.radius is None else base.check_float(check.radius, "radius")
  return check._replace(every=None if check.every is None else int(check.every),
                        significance=significance, tolerance=tolerance, shrink=shrink,
                        radius=radius)


def losses_of(check, theta):
  """The validation's losses of theta, flat and float32."""
  return jnp.ravel(jnp.asarray(check.validate(theta), jnp.float32))


def paired(losses, reference):
  """Mean and standard error of the per-example differences ``losses - reference``."""
  diff = losses - reference
  se = jnp.std(diff, ddof=1) / math.sqrt(diff.size) if diff.size > 1 else jnp.zeros(())
  return jnp.mean(diff), se


def accept(state, theta, check):
  """The acceptance test after one outer step (theta: the updated theta)."""
  due = (state.step + 1) % check.every == 0
  losses = jax.lax.cond(due, lambda: losses_of(check, theta), lambda: state.best_losses)
  to_best, se_best = paired(losses, state.best_losses)
  to_initial, se_initial = paired(losses, state.initial_losses)
  # NaN is never better and always worse.
  better = due & (to_best < 0) & (to_initial <= -check.significance * se_initial)
  worse = due & ~better & ~(to_best <= check.significance * se_best
                            + check.tolerance * jnp.abs(jnp.mean(state.best_losses)))
  return dict(theta=base.select_tree(worse, state.best_theta, theta),
              horizon_theta=state.horizon_theta, horizon_loss=state.horizon_loss,
              best_theta=base.select_tree(better, theta, state.best_theta),
              best_loss=jnp.where(better, jnp.mean(losses), state.best_loss),
              best_losses=jnp.where(better, losses, state.best_losses),
              num_rollbacks=state.num_rollbacks + worse.astype(jnp.int32),
              step_scale=jnp.where(worse, state.step_scale * check.shrink, state.step_scale),
              validation_loss=jnp.where(due, jnp.mean(losses), state.validation_loss),
              num_validations=state.num_validations + due.astype(jnp.int32))
