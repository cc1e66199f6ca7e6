"""The inner problems: the facts the papers report, and every problem with every estimator."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
import unrolled




def sum_window_grads(est, problem, num_windows, key=jax.random.key(0)):
  state = est.init(key, problem.theta)

  def body(carry, k):
    state, total = carry
    state, grad, _ = est.unroll(state, problem.theta, k)
    return (state, jax.tree.map(jnp.add, total, grad)), None

  zeros = jax.tree.map(jnp.zeros_like, problem.theta)
  (_, total), _ = jax.jit(lambda s: jax.lax.scan(body, (s, zeros),
                                                 jax.random.split(key, num_windows)))(state)
  return total


def test_influence_balancing_long_horizon_optimum_is_minus_one_sixth():
  problem = unrolled.get("influence_balancing", horizon=20000)
  key = jax.random.key(0)
  steps = jax.random.split(key, problem.system.horizon)
  grad = jax.jit(jax.grad(lambda th: metaopt.full_unroll(problem.system, th, key, steps)[1].sum()))
  # The summed loss is quadratic in theta: one Newton step from 0 lands on its minimiser.
  g0, g1 = grad(jnp.float32(0.0)), grad(jnp.float32(0.5))
  theta_star = float(-g0 * 0.5 / (g1 - g0))
  print(f"\ninfluence balancing, horizon 20000: theta* = {theta_star:.5f} (-1/6 = {-1 / 6:.5f})")
  assert abs(theta_star + 1 / 6) < 2e-3


def test_influence_balancing_truncation_gets_the_sign_wrong():
  problem = unrolled.get("influence_balancing")
  windows = problem.system.horizon
  exact = sum_window_grads(metaopt.rtrl(problem.system, num_steps=1), problem, windows)
  truncated = sum_window_grads(metaopt.tbptt(problem.system, num_steps=1), problem, windows)
  print(f"\nat theta=0.5: rtrl {float(exact):.3f}, tbptt(1) {float(truncated):.3f}")
  assert exact > 0 > truncated


def test_toy_regression_short_horizon_bias():
  problem = unrolled.get("toy_regression")
  full = sum_window_grads(metaopt.full_bptt(problem.system), problem, 1)
  truncated = sum_window_grads(metaopt.tbptt(problem.system, num_steps=10), problem, 10)
  ratio = float(jnp.linalg.norm(full) / jnp.linalg.norm(truncated))
  print(f"\ntoy regression at (-4, -4): full horizon {full}, tbptt(10) {truncated}, "
        f"norm ratio {ratio:.1f}")
  assert ratio > 3


def test_digits_mlp_learns():
  problem = unrolled.get("digits_mlp", horizon=300)
  key = jax.random.key(0)
  final, _ = jax.jit(lambda th: metaopt.full_unroll(
      problem.system, th, key, jax.random.split(key, 300)))(problem.theta)
  metrics = problem.evaluate(final)
  print(f"\n{problem.description}\n  after 300 steps: {metrics}")
  assert metrics["validation_accuracy"] >= 0.90


@pytest.mark.parametrize("model, floor", [("mlp", 0.45), ("cnn", 0.6)])
def test_mnist1d_is_generated_locally_has_22_hyperparameters_and_learns(model, floor,
                                                                      monkeypatch):
  import socket  # pylint: disable=g-import-not-at-top
  from unrolled import mnist1d  # pylint: disable=g-import-not-at-top

  def no_network(*args, **kwargs):
    raise AssertionError("MNIST-1D must be generated locally, not downloaded")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  x_train, _, x_val, _, x_test, y_test = mnist1d.mnist1d_data.__wrapped__(0)
  assert (x_train.shape, x_val.shape, x_test.shape) == ((3200, 40), (800, 40), (1000, 40))
  assert sorted(set(y_test.tolist())) == list(range(10))
  problem = unrolled.get("mnist1d", model=model, horizon=300)
  assert sum(x.size for x in jax.tree.leaves(problem.theta)) == 22
  assert problem.hyperparameters(problem.theta)["learning_rate_curve"].shape == (3, 300)
  key = jax.random.key(0)
  # 300 steps of training, compiled as XLA does by default (conftest trades run time for compile
  # time, which here would cost 30 s).
  final, _ = jax.jit(lambda th: metaopt.full_unroll(
      problem.system, th, key, jax.random.split(key, 300)), compiler_options={
          "xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True})(problem.theta)
  metrics = problem.evaluate(final)
  print(f"\n{problem.description}\n  after 300 steps: {metrics}")
  assert metrics["test_accuracy"] >= floor


def test_mnist1d_validation_minibatches_and_the_cosine_baseline_schedule():
  full = unrolled.get("mnist1d", model="mlp", width=8, horizon=10)
  small = unrolled.get("mnist1d", model="mlp", width=8, horizon=10, validation_batch_size=16)
  key = jax.random.key(3)
  state = full.system.init(key, full.theta)
  (after_full, loss_full), (after_small, loss_small) = (
      p.system.step(state, p.theta, key) for p in (full, small))
  # The same training minibatch and update; the meta-loss reads 16 of the 800 validation examples.
  chex.assert_trees_all_close(after_full.params, after_small.params)
  assert float(loss_small) != float(loss_full)
  losses = jax.vmap(lambda k: small.system.step(state, small.theta, k)[1])(
      jax.random.split(key, 400))
  assert abs(float(jnp.mean(losses)) - float(loss_full)) < 4 * float(jnp.std(losses)) / 20
  with pytest.raises(ValueError, match="validation_batch_size must be a positive int"):
    unrolled.get("mnist1d", validation_batch_size=0)
  cosine = unrolled.get("mnist1d", model="mlp", width=8, horizon=100, schedule="cosine")
  curve = cosine.hyperparameters(cosine.theta)["learning_rate_curve"]
  np.testing.assert_allclose(curve[:, 0], 0.05, rtol=1e-5)  # the peak, then cosine decay
  np.testing.assert_allclose(curve[:, 50], 0.05 * (1e-3 + (1 - 1e-3) * 0.5 * (1 + np.cos(
      np.pi * 0.5))), rtol=1e-4)
  assert sum(x.size for x in jax.tree.leaves(cosine.theta)) == 13
  with pytest.raises(ValueError, match="schedule must be one of"):
    unrolled.get("mnist1d", schedule="step")


def test_digits_parameter_counts_span_the_benchmark_range():
  count = lambda **kw: unrolled.get("digits_mlp", **kw).num_params
  assert 4000 < count(width=64, depth=1) < 6000
  assert count(width=128, depth=2) == 26122
  assert count(width=700, depth=3) > 900_000


@pytest.mark.parametrize("name,trained", [
    ("digits_mlp", lambda state: state.params),  # not the momentum slots
    ("influence_balancing", lambda state: state),
    ("toy_regression", lambda state: state.x),  # not the step counter
])
def test_num_params_counts_what_the_inner_loop_trains(name, trained):
  problem = unrolled.get(name, **({"width": 16, "depth": 1} if name == "digits_mlp" else {}))
  state = problem.system.init(jax.random.key(0), problem.theta)
  assert problem.num_params == sum(x.size for x in jax.tree.leaves(trained(state)))


def test_registry_lists_and_refuses_clearly():
  # (a doctest registers one more)
  assert {"digits_mlp", "influence_balancing", "toy_regression"} <= set(unrolled.names())
  with pytest.raises(ValueError, match=r"problem 'mnist' is unknown.*digits_mlp"):
    unrolled.get("mnist")
  with pytest.raises(ValueError, match=r"unknown option.*'widht'.*width"):
    unrolled.get("digits_mlp", widht=3)


def _factory_returning(value):
  return lambda: value


def test_problems_by_import_path_and_by_registered_name():
  # an import path needs no registration; options are checked against the factory's signature
  assert unrolled.options("unrolled.toy_regression:toy_regression") == unrolled.options(
      "toy_regression")
  assert unrolled.get("unrolled:digits_mlp", width=4, depth=1, horizon=10).num_params == 310
  with pytest.raises(ValueError, match=r"unknown option.*'widht'"):
    unrolled.get("unrolled:digits_mlp", widht=4)
  unrolled.register("test_toy", unrolled.toy_regression)
  unrolled.register("test_toy", unrolled.toy_regression)  # the same factory again is fine
  assert "test_toy" in unrolled.names() and unrolled.get("test_toy").system.horizon == 100
  with pytest.raises(ValueError, match="registered already"):
    unrolled.register("test_toy", unrolled.digits_mlp)
  with pytest.raises(ValueError, match="a problem name is"):
    unrolled.register("a:b", unrolled.toy_regression)
  with pytest.raises(ValueError, match="must be a function"):
    unrolled.register("test_three", 3)


@pytest.mark.parametrize("name, reason", [
    ("no_such_module_xyz:make", ": no module named 'no_such_module_xyz' (is its folder on"),
    ("unrolled:no_such_factory", ": module 'unrolled' has no attribute 'no_such_factory'"),
    ("unrolled:__doc__", ": '__doc__' is str"),
    ("unrolled:a:b", ": an import path is 'package.module:factory'"),
    ("mnist", " is unknown; choose one of"),
    ("test_problems:_factory_returning", ": the factory returned"),
])
def test_a_bad_problem_path_is_a_problem_error_naming_it(name, reason):
  with pytest.raises(unrolled.ProblemError) as e:
    if name.endswith("_factory_returning"):  # a factory that returns the wrong thing
      unrolled.register("test_returns_dict", _factory_returning({"system": None}))
      unrolled.get("test_returns_dict")
    else:
      unrolled.get(name)
  if name.endswith("_factory_returning"):
    assert e.value.name == "test_returns_dict"
    assert "returned dict, not an unrolled.Problem" in str(e.value)
  else:
    assert e.value.name == name and e.value.reason.startswith(reason), e.value.reason
    assert str(e.value) == f"problem {name!r}{e.value.reason}"


SMALL = {
    "influence_balancing": (dict(horizon=20), 10),
    "toy_regression": (dict(horizon=20), 10),
    "digits_mlp": (dict(width=16, depth=1, horizon=20, schedule="piecewise_linear",
                        tune_momentum=True, weight_decay=1e-4, tune_init_scale=True), 10),
    "mnist1d": (dict(model="cnn", channels=4, horizon=20, num_knots=4), 10),
}
ESTIMATORS = {
    "full_bptt": lambda s, n: metaopt.full_bptt(s),
    "tbptt": lambda s, n: metaopt.tbptt(s, num_steps=n),
    "rtrl": lambda s, n: metaopt.rtrl(s, num_steps=n),
    "uoro": lambda s, n: metaopt.uoro(s, num_steps=n),
    "pes": lambda s, n: metaopt.pes(s, num_steps=n, num_particles=4, sigma=0.01),
    "truncated_es": lambda s, n: metaopt.truncated_es(s, num_steps=n, num_particles=4, sigma=0.01),
}


@pytest.mark.parametrize("problem_name", sorted(SMALL))
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_runs_a_window_on_every_problem(estimator, problem_name):
  options, num_steps = SMALL[problem_name]
  problem = unrolled.get(problem_name, **options)
  est = ESTIMATORS[estimator](problem.system, num_steps)
  state = est.init(jax.random.key(0), problem.theta)
  state, grad, metrics = jax.jit(est.unroll)(state, problem.theta, jax.random.key(1))
  assert jax.tree.structure(grad) == jax.tree.structure(problem.theta)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
  assert bool(jnp.isfinite(metrics["loss"]))
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grad))
