"""The optax adapter: hypergradients of every spec entry against central finite differences (float64)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
import systems
import unrolled

HORIZON = 6


def tiny_problem(optimizer, spec):
  """A 3-4-2 MLP regression on random data; returns (system, theta in float64)."""
  x_val = jax.random.normal(jax.random.key(10), (16, 3))
  y_val = jnp.stack([jnp.sin(x_val[:, 0]), x_val[:, 1] * x_val[:, 2]], -1)

  def loss_fn(params, batch):
    (w1, b1), (w2, b2) = params
    x, y = batch
    return jnp.mean((jnp.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2)

  def sample_batch(key):
    x = jax.random.normal(key, (8, 3))
    return x, jnp.stack([jnp.sin(x[:, 0]), x[:, 1] * x[:, 2]], -1)

  def init_params(key):
    k1, k2 = jax.random.split(key)
    return [(jax.random.normal(k1, (3, 4)) / 2, jnp.zeros(4)),
            (jax.random.normal(k2, (4, 2)) / 2, jnp.zeros(2))]

  system = unrolled.optax_system(
      loss_fn=loss_fn, sample_batch=sample_batch, init_params=init_params, optimizer=optimizer,
      hyperparams=spec, horizon=HORIZON, validation_batch=(x_val, y_val))
  theta = unrolled.initial_theta(spec, unrolled.num_groups(init_params))
  return system, jax.tree.map(lambda t: jnp.asarray(t, jnp.float64), theta)


CASES = {
    "sgd": (lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
            lambda: {"learning_rate": unrolled.log(0.3), "weight_decay": unrolled.log(1e-2),
                     "init_scale": unrolled.log(1.2)}),
    "sgd_per_layer": (lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                      lambda: {"learning_rate": unrolled.log(0.3, per_group=True),
                               "weight_decay": unrolled.log(1e-2, per_group=True),
                               "init_scale": unrolled.log(1.2, per_group=True)}),
    "momentum": (lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
                 lambda: {"learning_rate": unrolled.scheduled(
                              unrolled.schedules.piecewise_linear_log(0.2, num_knots=3,
                                                                      horizon=HORIZON)),
                          "momentum": unrolled.logit(0.8, per_group=True),
                          "weight_decay": unrolled.log(1e-3)}),
    "adam": (lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.1, eps_root=1e-16),
             lambda: {"learning_rate": unrolled.scheduled(
                          unrolled.schedules.warmup_cosine(0.05, 0.01, warmup_steps=2,
                                                           horizon=HORIZON), per_group=True),
                      "b1": unrolled.logit(0.9), "b2": unrolled.logit(0.99),
                      "eps": unrolled.log(1e-3), "init_scale": unrolled.log(0.8)}),
    "adamw": (lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=0.05, eps_root=1e-16),
              lambda: {"learning_rate": unrolled.log(0.05), "weight_decay": unrolled.log(1e-2)}),
}


# `-m "not slow"` runs two: per-group entries with SGD, and Adam with scheduled rates.
@pytest.mark.parametrize("case", systems.slow_unless(sorted(CASES), {"sgd_per_layer", "adam"}))
def test_hypergradient_of_every_entry_matches_finite_differences(case):
  with jax.enable_x64(True):
    make_opt, make_spec = CASES[case]
    system, theta = tiny_problem(make_opt(), make_spec())
    key = jax.random.key(0)
    est = metaopt.rtrl(system, num_steps=3)
    total = jax.jit(lambda th: metaopt.sum_window_grads(est, th, key,
                                                        num_windows=HORIZON // 3))(theta)
    # The loss of the same trajectory: the keys sum_window_grads gives the estimator.
    init_key, window_keys = metaopt.horizon.window_keys(key, HORIZON // 3)
    steps = jnp.concatenate([metaopt.horizon.split_window_key(k, 3).steps for k in window_keys])
    flat, unravel = jax.flatten_util.ravel_pytree(theta)
    loss = jax.jit(lambda v: jnp.sum(metaopt.full_unroll(system, unravel(v), init_key, steps)[1]))
    h = 1e-6
    fd = np.array([(loss(flat.at[i].add(h)) - loss(flat.at[i].add(-h))) / (2 * h)
                   for i in range(flat.size)])
    ours = np.asarray(jax.flatten_util.ravel_pytree(total)[0])
    print(f"\n{case}: rtrl {ours}\n  finite differences {fd}")
    assert np.all(np.abs(fd) > 0), "every spec entry should affect the loss"
    np.testing.assert_allclose(ours, fd, rtol=1e-6, atol=1e-9)


def test_adapter_refuses_bad_specs():
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  kw = dict(loss_fn=lambda p, b: jnp.sum(p ** 2), sample_batch=lambda k: None,
            init_params=lambda k: jnp.ones(2), horizon=4, validation_batch=0)
  with pytest.raises(ValueError, match="'b1' is neither"):
    unrolled.optax_system(optimizer=opt, hyperparams={"b1": unrolled.logit(0.9)}, **kw)
  with pytest.raises(ValueError, match="inject_hyperparams"):
    unrolled.optax_system(optimizer=optax.sgd(0.1), hyperparams={"learning_rate": unrolled.log(0.1)},
                          **kw)
  with pytest.raises(ValueError, match="meta_loss"):
    unrolled.optax_system(optimizer=opt, hyperparams={"learning_rate": unrolled.log(0.1)},
                          meta_loss="test", **kw)
  with pytest.raises(ValueError, match="in \\(0, 1\\)"):
    unrolled.logit(1.5)


@pytest.mark.parametrize("optimizer, spec, message", [
    # optax recomputes a schedule given to inject_hyperparams: theta would do nothing
    (optax.inject_hyperparams(optax.sgd)(learning_rate=optax.cosine_decay_schedule(0.1, 10)),
     {"learning_rate": unrolled.log(0.1)}, "are optax schedules inside inject_hyperparams"),
    (optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9, nesterov=True),
     {"nesterov": unrolled.log(0.5)}, "'nesterov' is neither one of the optimiser's"),
    # optax schedules that branch in Python on a traced value
    (optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
     {"learning_rate": unrolled.scheduled(unrolled.schedules.Schedule(
         jnp.array([0.1, 0.9]), lambda p, t: optax.exponential_decay(p[0], 10, p[1])(t),
         "optax_exponential_decay"))}, "branches in Python on the value of its parameters"),
    (optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
     {"learning_rate": unrolled.scheduled(unrolled.schedules.Schedule(
         jnp.array([0.1]), lambda p, t: optax.warmup_cosine_decay_schedule(0.0, p[0], 2, 6)(t),
         "optax_warmup_cosine"))}, "TracerBoolConversionError"),
    (optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
     {"learning_rate": unrolled.scheduled(unrolled.schedules.Schedule(
         jnp.ones(2), lambda p, t: jnp.exp(p), "vector"))}, "must give a float scalar"),
])
def test_what_cannot_be_tuned_is_refused_when_the_system_is_built(optimizer, spec, message):
  kw = dict(loss_fn=lambda p, b: jnp.sum(p ** 2), sample_batch=lambda k: None,
            init_params=lambda k: jnp.ones(2), horizon=HORIZON, meta_loss="train")
  with pytest.raises(ValueError, match=message):
    unrolled.optax_system(optimizer=optimizer, hyperparams=spec, **kw)


def test_an_optax_schedule_whose_traced_argument_is_not_branched_on_is_tuned():
  schedule = unrolled.schedules.Schedule(
      jnp.array([np.log(0.1)], jnp.float32),
      lambda p, t: optax.cosine_decay_schedule(jnp.exp(p[0]), HORIZON)(t), "optax_cosine")
  problem = unrolled.optax_problem(
      loss_fn=lambda p, b: jnp.sum((p - b) ** 2), sample_batch=lambda k: jax.random.normal(k, (2,)),
      init_params=lambda k: jnp.ones(2), horizon=HORIZON, meta_loss="train",
      optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.0),
      hyperparams={"learning_rate": unrolled.scheduled(schedule)})
  grad = metaopt.exact_grad(problem.system, problem.theta, jax.random.key(0), num_steps=HORIZON,
                            num_windows=1)
  assert np.all(np.isfinite(grad["learning_rate"])) and np.all(grad["learning_rate"] != 0)
  values = problem.hyperparameters(problem.theta)
  assert values["learning_rate_curve"].shape == (HORIZON,) and "learning_rate_knots" not in values
  np.testing.assert_allclose(values["learning_rate"], 0.1, rtol=1e-6)


def test_optax_problem_evaluates_validation_loss_and_the_users_metrics():
  problem = unrolled.optax_problem(
      loss_fn=lambda p, b: jnp.sum((p - b) ** 2), sample_batch=lambda k: jnp.zeros(2),
      init_params=lambda k: jnp.ones(2), horizon=HORIZON, validation_batch=jnp.full(2, 3.0),
      optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
      hyperparams={"learning_rate": unrolled.log(0.1, per_group=True)},
      metrics=lambda p: {"norm": jnp.linalg.norm(p)})
  state = problem.system.init(jax.random.key(0), problem.theta)
  out = problem.evaluate(state)
  assert set(out) == {"train_loss", "validation_loss", "norm"} and problem.num_params == 2
  np.testing.assert_allclose(out["validation_loss"], 8.0)
  assert problem.theta["learning_rate"].shape == (1,)
  assert "tuning learning_rate" in problem.description


def test_train_meta_loss_is_the_minibatch_loss_before_the_step():
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  system = unrolled.optax_system(
      loss_fn=lambda p, b: jnp.sum((p - b) ** 2), sample_batch=lambda k: jnp.ones(2),
      init_params=lambda k: jnp.zeros(2), optimizer=opt,
      hyperparams={"learning_rate": unrolled.log(0.25)}, horizon=2, meta_loss="train")
  theta = unrolled.initial_theta({"learning_rate": unrolled.log(0.25)})
  state, loss = system.step(system.init(jax.random.key(0), theta), theta, jax.random.key(1))
  assert float(loss) == pytest.approx(2.0)
  np.testing.assert_allclose(state.params, [0.5, 0.5], rtol=1e-6)
