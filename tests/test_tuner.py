"""The online tuner: deterministic, robust to non-finite values, and right on influence balancing."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typing import NamedTuple

import metaopt
import unrolled


def run_tuner(est, theta, outer_steps, lr, *, seed=0, num_chains=1, meta=optax.sgd):
  t = metaopt.tuner(est, meta(lr), num_chains=num_chains)
  state = t.init(jax.random.key(seed), theta)
  return jax.jit(t.run, static_argnums=1)(state, outer_steps)


@pytest.mark.parametrize("estimator, expected", [
    ("tbptt", 3.26), ("rtrl", -1 / 6), ("pes", -1 / 6)])
def test_influence_balancing_with_the_papers_settings(estimator, expected):
  """Outer SGD, lr 1e-4, 3,000 outer steps of one inner step (Vicol et al. 2021)."""
  problem = unrolled.get("influence_balancing", horizon=3000)
  est = metaopt.get_estimator(estimator, problem.system, num_steps=1, num_particles=100, sigma=0.1)
  state, _ = run_tuner(est, problem.theta, 3000, 1e-4)
  print(f"\n{estimator}: theta after 3000 outer steps = {float(state.theta):.4f}")
  assert float(state.theta) == pytest.approx(expected, abs=0.01)


@pytest.mark.slow
def test_same_seed_same_trajectory_and_chains_average():
  problem = unrolled.get("digits_mlp", width=8, depth=1, horizon=20, schedule="piecewise_linear",
                         num_knots=3)
  t = metaopt.tuner(metaopt.uoro(problem.system, num_steps=5), optax.adam(0.05), num_chains=3)
  run = jax.jit(t.run, static_argnums=1)
  (_, i1), (_, i2), (_, i3) = [run(t.init(jax.random.key(seed), problem.theta), 12)
                               for seed in (0, 0, 1)]
  np.testing.assert_array_equal(i1["theta"], i2["theta"])
  assert i1["chain_grads"].shape == (12, 3, 3)
  np.testing.assert_allclose(i1["grad"], i1["chain_grads"].mean(1), rtol=1e-5, atol=1e-7)
  assert np.all(i1["chain_variance"][-1] > 0)  # knots late in the horizon start at 0
  assert not np.array_equal(i1["theta"], i3["theta"])


@pytest.mark.slow
def test_diverging_learning_rate_never_reaches_theta():
  problem = unrolled.get("digits_mlp", width=8, depth=1, horizon=20, learning_rate=1e4)
  est = metaopt.rtrl(problem.system, num_steps=5)
  state, infos = run_tuner(est, problem.theta, 20, 0.1, num_chains=2)
  assert not np.all(infos["finite"]), "the inner loss should blow up at this learning rate"
  assert int(state.num_skipped) == int(np.sum(~infos["finite"])) > 0
  assert np.all(np.isfinite(infos["theta"]))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.outer_state))
  # A skipped step leaves theta where it was.
  theta0 = jax.flatten_util.ravel_pytree(problem.theta)[0]
  theta = np.concatenate([np.asarray(theta0)[None], infos["theta"]])
  skipped = ~infos["finite"]
  np.testing.assert_array_equal(theta[1:][skipped], theta[:-1][skipped])


def test_non_finite_chain_restarts_from_a_fresh_horizon():
  def init(key, th):
    del key, th
    return jnp.zeros(())

  def step(s, th, key):
    bad = jax.random.uniform(key) < 0.2
    s = s + th
    return s, jnp.where(bad, jnp.nan, (s - 1.0) ** 2)

  system = metaopt.UnrolledSystem(init, step, horizon=1000)
  t = metaopt.tuner(metaopt.rtrl(system, num_steps=2), optax.sgd(1e-3), num_chains=2)
  state = t.init(jax.random.key(0), jnp.float32(0.0))
  update = jax.jit(t.update)
  skipped = 0
  for _ in range(60):
    previous = state
    state, info = update(state)
    counts = np.asarray(state.estimator_state.count)
    if bool(info["finite"]):
      assert np.all(counts == (np.asarray(previous.estimator_state.count) + 2) % 1000)
      assert float(state.theta) != float(previous.theta)
    else:
      skipped += 1
      assert float(state.theta) == float(previous.theta)
      # The chain that produced NaN starts a fresh horizon; the other one goes on.
      assert 0 in counts
  assert 0 < skipped == int(state.num_skipped) < 60


def test_bad_tuner_options():
  system = unrolled.get("influence_balancing").system
  with pytest.raises(ValueError, match="num_chains"):
    metaopt.tuner(metaopt.rtrl(system, num_steps=1), optax.sgd(0.1), num_chains=0)
  with pytest.raises(ValueError, match="max_grad_norm"):
    metaopt.tuner(metaopt.rtrl(system, num_steps=1), optax.sgd(0.1), max_grad_norm=-1.0)


def test_an_update_that_would_overflow_theta_is_skipped():
  problem = unrolled.get("influence_balancing", horizon=20)
  state, infos = run_tuner(metaopt.rtrl(problem.system, num_steps=5), problem.theta, 3, 1e38)
  assert np.all(np.isfinite(infos["theta"])) and int(state.num_skipped) == 3


def test_a_step_that_poisons_the_meta_optimizer_state_is_skipped_and_counted():
  """|g| ~ 1e28 is finite but g^2 overflows float32: Adam's second moment would become inf and
  freeze theta for good. That step must be skipped like a non-finite gradient."""
  def unroll(count, theta, key):
    grad = jnp.where(count == 0, 1e28, 1.0) * jnp.ones_like(theta)
    return count + 1, grad, {"loss": jnp.zeros((), jnp.float32)}

  stub = metaopt.Estimator(init=lambda key, theta: jnp.zeros((), jnp.int32), unroll=unroll)
  t = metaopt.tuner(stub, optax.adam(0.1))
  state, infos = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(0), jnp.float32(1.0)), 5)
  assert int(state.num_skipped) == 1
  np.testing.assert_array_equal(np.asarray(infos["finite"]), [False, True, True, True, True])
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.outer_state))
  np.testing.assert_allclose(float(state.theta), 1.0 - 4 * 0.1, rtol=1e-3)  # 4 Adam steps of lr


def test_running_variance_of_a_constant_hypergradient_is_zero():
  system = metaopt.UnrolledSystem(init=lambda k, th: jnp.zeros(()),
                                  step=lambda s, th, k: (s, th), horizon=4)
  _, infos = run_tuner(metaopt.rtrl(system, num_steps=2), jnp.float32(0.5), 5, 0.0)
  np.testing.assert_allclose(infos["grad_ema_mean"][-1], [2.0], rtol=1e-6)
  np.testing.assert_allclose(infos["grad_ema_var"], 0.0, atol=1e-5)


def test_outer_steps_are_not_retraced():
  """A tuner loop that calls update once per outer step traces it once: no Python per step."""
  system, theta = unrolled.toy_regression(horizon=20).system, jnp.full((2,), -1.0)  # weakly typed
  t = metaopt.tuner(metaopt.uoro(system, num_steps=5), optax.adam(1e-3), num_chains=2)

  @chex.assert_max_traces(n=1)  # a second trace raises
  def update(state):
    return t.update(state)

  update = jax.jit(update)
  state = t.init(jax.random.key(0), theta)
  for _ in range(6):  # crosses a horizon reset
    state, _ = update(state)
  assert int(state.step) == 6


def test_a_horizon_much_worse_than_the_best_sets_theta_back():
  """theta is pushed (by an sgd step on a constant hypergradient) into a region whose loss grows;
  with the rollback, theta returns to the start of the best horizon instead of drifting on."""
  system = metaopt.UnrolledSystem(  # loss = theta^2 at every step, whatever the state
      init=lambda key, th: jnp.zeros(()), horizon=4,
      step=lambda s, th, key: (s, jnp.square(th) + 1.0))
  est = metaopt.rtrl(system, num_steps=2)
  push = optax.sgd(-1.0)  # ascends: the hypergradient of a window is 4 theta: 1 -> 5 -> 25 ...
  for windows, expected in ((None, 0), (2, 1)):
    t = metaopt.tuner(est, push, horizon_windows=windows, rollback_factor=1.5)
    state, info = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(0), jnp.float32(1.0)), 4)
    if windows is None:
      assert float(state.theta) > 10 and int(state.num_rollbacks) == 0
    else:
      # Horizon 1 (theta 1, then 5; window losses 4 and 52): mean 28, the best. Horizon 2
      # (theta 25, then 125): mean (1252 + 31252) / 2 > 1.5 x 28, so theta goes back to 1.
      assert int(state.num_rollbacks) == expected
      np.testing.assert_allclose(float(state.theta), 1.0)
      np.testing.assert_allclose(float(state.best_loss), 28.0)
      np.testing.assert_allclose(info["num_rollbacks"], [0, 0, 0, 1])
  with pytest.raises(ValueError, match="rollback_factor must be >= 1"):
    metaopt.tuner(est, push, horizon_windows=2, rollback_factor=0.5)


class _Stub(NamedTuple):
  inner: jax.Array


def _wrong_way_estimator(rate):
  """A stub estimator whose every window says 'increase theta' (gradient -rate) while its window
  losses stay level: a slow drift that no horizon's loss reveals."""
  return metaopt.Estimator(
      init=lambda key, th: _Stub(jnp.zeros(())),
      unroll=lambda s, th, key: (s, jax.tree.map(lambda x: -rate * jnp.ones_like(x), th),
                                 {"loss": jnp.ones(())}))


# The system the validation trains: its final loss is (theta - 0.3)^2 per "example", 8 examples
# with a little spread, so the paired test has a standard error.
_OFFSETS = jnp.linspace(-0.05, 0.05, 8)
_VALIDATED = metaopt.UnrolledSystem(
    init=lambda key, th: jnp.zeros(()), horizon=4,
    step=lambda s, th, key: (s + 1, jnp.square(th - 0.3)))


def _per_example(final, losses, theta_of=None):
  del final
  return losses[-1] + _OFFSETS * jnp.sqrt(losses[-1])


def test_a_slow_drift_the_wrong_way_is_caught_by_validation():
  """The stub pushes theta up by 0.05 per outer step, away from the optimum 0.3 once past it.
  The horizon rollback never fires (the window losses are level); the validation sends theta
  back every time it is worse than the best by more than the noise, shrinks the step, and the
  tuned (best validated) theta is the best theta it saw."""
  est = _wrong_way_estimator(1.0)
  drift = metaopt.tuner(est, optax.sgd(0.05), horizon_windows=4)
  state, _ = jax.jit(drift.run, static_argnums=1)(drift.init(jax.random.key(0), 0.0), 200)
  assert float(state.theta) == pytest.approx(10.0, abs=1e-3)  # 200 x 0.05: drifted, unseen
  assert int(state.num_rollbacks) == 0
  check = metaopt.validation(_VALIDATED, every=4, score=_per_example)
  guarded = metaopt.tuner(est, optax.sgd(0.05), validation=check)
  state, info = jax.jit(guarded.run, static_argnums=1)(guarded.init(jax.random.key(0), 0.0), 200)
  assert int(state.num_validations) == 50 and int(state.num_rollbacks) >= 3
  # Never far from the best: the current theta stays within the steps of one period (4 x 0.05)
  # plus the noise band around the best.
  assert np.max(np.abs(np.asarray(info["theta"]) - 0.3)) < 0.45
  assert float(state.best_theta) == pytest.approx(0.2, abs=0.11)  # the closest theta to 0.3 seen
  assert float(state.step_scale) < 0.2  # the trust region narrowed with each rejection
  np.testing.assert_array_less(np.diff(np.asarray(info["best_loss"])), 1e-7)  # never worse


def test_validation_keeps_theta0_when_every_step_is_worse():
  """Pushed away from its optimum from the start, the tuner's product stays the initial theta."""
  est = _wrong_way_estimator(1.0)
  check = metaopt.validation(_VALIDATED, every=2, score=_per_example)
  t = metaopt.tuner(est, optax.sgd(0.1), validation=check)
  state, info = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(0), 0.3), 40)
  assert float(state.best_theta) == pytest.approx(0.3)
  np.testing.assert_allclose(np.asarray(info["best_loss"]), 0.0, atol=1e-7)
  # Sent back while the drift exceeds the noise band (3 standard errors of the spread), with a
  # step half as long each time; within the band, tuning goes on from the drifted theta.
  rollbacks = int(state.num_rollbacks)
  assert rollbacks >= 3 and float(state.step_scale) == pytest.approx(0.5**rollbacks)
  assert np.max(np.asarray(info["theta"]) - 0.3) <= 0.2 + 1e-6  # one period's push at most


def test_the_paired_test_accepts_only_beyond_the_noise():
  """A theta that scores better by less than `significance` standard errors neither becomes the
  best nor is sent back; with significance 0 the same theta becomes the best."""
  signs = 0.1 * jnp.array([1.0, -1.0] * 4)
  # theta 0 scores 0.09 + signs, theta 0.05 scores 0.0625 - signs: better by 0.0275 on average,
  # with a paired standard error of about 0.076.
  noisy = lambda final, losses: losses[-1] + jnp.where(losses[-1] < 0.08, -signs, signs)
  est = _wrong_way_estimator(1.0)  # up, towards 0.3 from below
  for significance, becomes_best in ((3.0, False), (0.0, True)):
    check = metaopt.validation(_VALIDATED, every=1, score=noisy, significance=significance)
    t = metaopt.tuner(est, optax.sgd(0.05), validation=check)
    state, _ = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(0), 0.0), 1)
    assert int(state.num_rollbacks) == 0
    assert (float(state.best_theta) == pytest.approx(0.05)) is becomes_best
    assert float(state.theta) == pytest.approx(0.05)  # tuning goes on from it either way


@pytest.mark.parametrize("kwargs, message", [
    (dict(every=0), "every must be a positive int"),
    (dict(every=2, significance=-1.0), "significance must be >= 0"),
    (dict(every=2, tolerance=float("nan")), "tolerance must be"),
    (dict(every=2, shrink=0.0), "shrink must be a positive float"),
    (dict(every=2, shrink=1.5), "shrink must lie in"),
    (dict(every=2, score="validation_loss"), "score must be a function"),
    (dict(every=2, seed=-1), "seed must be an int"),
])
def test_bad_validation_options_are_refused_in_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message):
    metaopt.validation(_VALIDATED, **kwargs)


def test_a_validation_without_every_or_of_the_wrong_type_is_refused_by_the_tuner():
  est = _wrong_way_estimator(1.0)
  with pytest.raises(ValueError, match="Validation.every is None"):
    metaopt.tuner(est, optax.sgd(0.1), validation=metaopt.validation(_VALIDATED, every=None))
  with pytest.raises(ValueError, match="validation must be a metaopt.Validation"):
    metaopt.tuner(est, optax.sgd(0.1), validation=lambda th: th)


def test_once_beyond_the_noise_of_theta0_the_lowest_validation_loss_is_the_best():
  """Selection as black-box search selects (lowest validation loss) among the thetas that beat
  the initial one by more than the noise: a last step better than the best by less than 3
  standard errors still becomes the best, because it beats theta0 by more."""
  k = jnp.arange(1, 9)
  score = lambda final, losses: losses[-1] + 0.05 * jnp.sin(1000 * losses[-1] * k)  # spread
  check = metaopt.validation(_VALIDATED, every=1, score=score)
  t = metaopt.tuner(_wrong_way_estimator(1.0), optax.sgd(0.05), validation=check)  # 0 -> 0.3
  state, info = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(0), 0.0), 6)
  assert float(state.best_theta) == pytest.approx(0.3)
  losses = {th: np.asarray(check.validate(jnp.float32(th))) for th in (0.0, 0.2, 0.3)}
  paired = lambda a, b: ((losses[a] - losses[b]).mean(),
                         (losses[a] - losses[b]).std(ddof=1) / np.sqrt(8))
  mean, se = paired(0.3, 0.2)  # the previous best (theta 0.25 lost to it)
  assert float(info["best_loss"][3]) == pytest.approx(losses[0.2].mean())
  assert -3 * se < mean < 0  # better than the best, but within the noise
  mean, se = paired(0.3, 0.0)
  assert mean < -3 * se  # beyond the noise of theta0


def test_a_trust_region_keeps_theta_within_its_radius_of_the_best_validated_theta():
  """With radius r, no coordinate of theta is ever further than r x step_scale from the best
  validated theta: the stub's push stops at the edge until a validation moves the best."""
  check = metaopt.validation(_VALIDATED, every=10, score=_per_example, radius=0.12)
  t = metaopt.tuner(_wrong_way_estimator(1.0), optax.sgd(0.05), validation=check)
  state, info = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(0), 0.0), 10)
  theta = np.asarray(info["theta"]).ravel()
  # Before the first validation the best is theta0 = 0: theta stops at 0.12.
  np.testing.assert_allclose(theta[:9], np.minimum(0.05 * np.arange(1, 10), 0.12), rtol=1e-5)
  assert float(state.best_theta) == pytest.approx(0.12)  # validated at step 10: better
  state, info = jax.jit(t.run, static_argnums=1)(state, 9)
  np.testing.assert_allclose(np.asarray(info["theta"]).ravel()[-1], 0.24, rtol=1e-5)
  with pytest.raises(ValueError, match="radius must be a positive float"):
    metaopt.validation(_VALIDATED, every=2, radius=0.0)
