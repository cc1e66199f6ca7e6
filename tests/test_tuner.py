"""The online tuner: deterministic, robust to non-finite values, and right on influence balancing."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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
