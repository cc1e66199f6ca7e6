"""Learned optimizers, task families and meta-training: what each promises, checked."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import learned_optimizers as lo
from studies import meta_training
from unrolled import families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_mlp_lopt_update(theta, grads, momentum, count, params, *, decays, timescales,
                              exp_mult=1e-3, step_mult=1e-3):
  """lopt's MLPLOpt step written plainly, one tensor at a time, all 19 inputs through the MLP."""
  updates, new_momentum = {}, {}
  for name, p in params.items():
    g = grads[name]
    m = np.asarray(decays) * momentum[name] + (1 - np.asarray(decays)) * g[..., None]
    new_momentum[name] = m
    feats = jnp.concatenate([p.reshape(-1, 1), g.reshape(-1, 1), m.reshape(-1, len(decays))], 1)
    feats = feats / jnp.sqrt(1e-5 + jnp.mean(feats**2, axis=0, keepdims=True))
    time = jnp.tanh(count / jnp.asarray(timescales, jnp.float32) - 1.0)
    x = jnp.concatenate([feats, jnp.broadcast_to(time, (feats.shape[0], len(timescales)))], 1)
    for i, layer in enumerate(theta["layers"]):
      x = x @ layer["w"] + layer["b"]
      if i < len(theta["layers"]) - 1:
        x = jax.nn.relu(x)
    step = x[:, 0] * jnp.exp(x[:, 1] * exp_mult) * step_mult
    updates[name] = -step.reshape(p.shape)
  return updates, new_momentum


@pytest.mark.parametrize("rows", [6, 700])  # the small-matrix and the many-rows output paths
def test_mlp_lopt_is_lopts_mlp_optimizer(rows):
  lopt = lo.mlp_lopt()
  theta = lopt.init(jax.random.key(0))
  assert lo.num_weights(theta) == 1762  # learned_optimization's MLPLOpt()
  keys = jax.random.split(jax.random.key(1), 4)
  params = {"a": jax.random.normal(keys[0], (rows // 2,)),
            "b": jax.random.normal(keys[1], (rows // 2, 1))}
  opt = lopt.optimizer(theta)
  state = opt.init(params)
  momentum = jax.tree.map(lambda p: jnp.zeros(p.shape + (6,)), params)
  for step, key in enumerate(keys[2:]):
    grads = jax.tree.map(lambda p, k=key: jax.random.normal(k, p.shape), params)
    updates, state = opt.update(grads, state, params)
    expected, momentum = reference_mlp_lopt_update(
        theta, grads, momentum, jnp.float32(step), params, decays=lo.DEFAULT_DECAYS,
        timescales=lo.DEFAULT_TIMESCALES)
    chex.assert_trees_all_close(updates, expected, rtol=2e-4, atol=1e-7)
    params = optax.apply_updates(params, updates)
  assert int(state.count) == 2


@pytest.mark.parametrize("hidden", [(), (4,)])
def test_mlp_lopt_keeps_its_state_types_under_scan(hidden):
  # bfloat16 parameters, no hidden layer or one: a scan over steps needs fixed carry types.
  lopt = lo.mlp_lopt(hidden=hidden, second_moment_decays=(0.99,))
  opt = lopt.optimizer(lopt.init(jax.random.key(0)))
  params = jnp.ones((300,), jnp.bfloat16)  # the many-rows path too

  def step(carry, _):
    params, state = carry
    updates, state = opt.update(jnp.cos(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=3)
  assert params.dtype == jnp.bfloat16 and state.momentum.dtype == jnp.bfloat16
  assert int(state.count) == 3


def test_mlp_lopt_second_moment_features_and_bad_options():
  lopt = lo.mlp_lopt(second_moment_decays=(0.999,), hidden=(8,))
  theta = lopt.init(jax.random.key(0))
  assert theta["layers"][0]["w"].shape == (2 + 6 + (2 + 6) + 11, 8)
  params = jnp.ones(5)
  updates, _ = lopt.optimizer(theta).update(jnp.arange(5.0), lopt.optimizer(theta).init(params),
                                            params)
  assert updates.shape == (5,) and bool(jnp.all(jnp.isfinite(updates)))
  for bad in ({"decays": (1.0,)}, {"hidden": (0,)}, {"step_mult": 0.0}):
    with pytest.raises(ValueError):
      lo.mlp_lopt(**bad)
  with pytest.raises(ValueError, match="params"):
    lopt.optimizer(theta).update(params, lopt.optimizer(theta).init(params))


def test_learnable_adam_and_sgd_are_optax_adam_and_sgd_at_their_values():
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.1, -1.0])}
  adam = lo.learnable_adam(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6)
  expected = optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-12)
  sgd = lo.learnable_sgd(learning_rate=0.1)
  for learned, reference in ((adam, expected), (sgd, optax.sgd(0.1))):
    opt = learned.optimizer(learned.init(jax.random.key(0)))
    got, _ = opt.update(grads, opt.init(params), params)
    want, _ = reference.update(grads, reference.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match="b1"):
    lo.learnable_adam(b1=1.0)


FAMILIES = {"quadratic": lambda: families.quadratic(dim=5),
            "mnist1d_mlp": lambda: families.mnist1d_mlp(widths=(8, 16)),
            "digits_mlp": lambda: families.digits_mlp(widths=(8, 16))}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_samples_different_tasks_of_one_shape(name):
  family = FAMILIES[name]()
  tasks = [family.sample(jax.random.key(i)) for i in range(6)]
  chex.assert_trees_all_equal_shapes_and_dtypes(*tasks)
  flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in tasks]
  assert len({f.tobytes() for f in flat}) == 6  # six keys, six different tasks
  params = family.init_params(tasks[0], jax.random.key(9))
  loss = family.loss(params, tasks[0], jax.random.key(3))
  assert loss.shape == () and bool(jnp.isfinite(loss))
  assert "train_loss" in family.evaluate(params, tasks[0])


def test_a_classifier_tasks_masked_units_never_matter():
  family = families.mnist1d_mlp(widths=(4, 16))
  task = next(t for t in (family.sample(jax.random.key(i)) for i in range(20))
              if float(t["mask"].sum()) == 4)
  params = family.init_params(task, jax.random.key(0))
  grads = jax.grad(family.loss)(params, task, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(grads["hidden"]["w"])[:, 4:], 0.0)
  np.testing.assert_array_equal(np.asarray(grads["output"]["w"])[4:], 0.0)
  # Whatever the masked units' weights, the loss is the same.
  noisy = jax.tree.map(lambda x: x, params)
  noisy["hidden"]["w"] = params["hidden"]["w"].at[:, 4:].set(5.0)
  noisy["output"]["w"] = params["output"]["w"].at[4:].set(-3.0)
  np.testing.assert_allclose(family.loss(noisy, task, jax.random.key(1)),
                             family.loss(params, task, jax.random.key(1)), rtol=1e-6)


def linear_regression_family():
  """A user's own model (a linear regression), as families.own_model takes it."""
  w_true = jnp.array([1.0, -2.0, 0.5])

  def sample_batch(key):
    x = jax.random.normal(key, (16, 3))
    return x, x @ w_true

  return families.own_model(loss_fn=lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2),
                            sample_batch=sample_batch,
                            init_params=lambda key: 0.1 * jax.random.normal(key, (3,)))


@pytest.mark.parametrize("make, family", [
    (lambda: lo.mlp_lopt(hidden=(4,)), lambda: families.mnist1d_mlp(widths=(4, 8))),
    (lo.learnable_adam, lambda: families.mnist1d_mlp(widths=(4, 8))),
    (lambda: lo.mlp_lopt(hidden=(4,), second_moment_decays=(0.99,)), linear_regression_family)],
    ids=["mlp_lopt-mnist1d", "learnable_adam-mnist1d", "mlp_lopt_second_moments-own_model"])
def test_tbptt_over_a_whole_horizon_is_the_exact_meta_gradient(make, family):
  lopt = make()
  system = families.family_system(family(), lopt, horizon=6)
  theta = lopt.init(jax.random.key(0))
  est = metaopt.tbptt(system, num_steps=6)
  state = est.init(jax.random.key(1), theta)
  _, grad, _ = est.unroll(state, theta, jax.random.key(2))
  keys = metaopt.horizon.split_window_key(jax.random.key(2), 6)
  exact = jax.grad(lambda th: metaopt.full_unroll(system, th, jax.random.key(1),
                                                  keys.steps)[1].sum())(theta)
  chex.assert_trees_all_close(grad, exact, rtol=2e-3, atol=1e-6)
  assert float(sum(jnp.sum(x**2) for x in jax.tree.leaves(exact))) > 0


@pytest.mark.slow
def test_pes_on_a_family_is_unbiased():
  # Learnable SGD on quadratics: theta is one number and the loss is smooth in it, so at a small
  # sigma the Gaussian-smoothed gradient is the exact one. Paired on the same keys (the same
  # tasks and minibatches), PES minus jax.grad of the unroll averages to zero within a few
  # standard errors over many draws, two windows and a horizon reset each.
  lopt = lo.learnable_sgd(learning_rate=0.05)
  system = families.family_system(families.quadratic(dim=3), lopt, horizon=4)
  theta = lopt.init(jax.random.key(0))
  est = metaopt.pes(system, num_steps=2, num_particles=2, sigma=1e-3)

  def difference(key):
    estimate = metaopt.sum_window_grads(est, theta, key, num_windows=4)
    exact = metaopt.exact_grad(system, theta, key, num_steps=2, num_windows=4)
    return estimate["log_learning_rate"] - exact["log_learning_rate"], exact["log_learning_rate"]

  diffs, exact = jax.jit(jax.vmap(difference))(jax.random.split(jax.random.key(1), 4000))
  diffs = np.asarray(diffs, np.float64)
  se = diffs.std() / np.sqrt(len(diffs))
  assert abs(diffs.mean()) < 4 * se, (diffs.mean(), se)
  assert se < 0.1 * np.abs(np.asarray(exact)).mean()  # the test has power


def test_train_task_gives_every_optimizer_the_same_task_init_and_data():
  family = families.mnist1d_mlp(widths=(8,))
  key = jax.random.key(3)
  evals, losses = families.train_task(family, optax.sgd(0.0), key, num_steps=4)
  task = family.sample(jax.random.split(key, 3)[0])
  params = family.init_params(task, jax.random.split(key, 3)[1])
  np.testing.assert_allclose(evals["train_loss"], family.evaluate(params, task)["train_loss"],
                             rtol=1e-6)
  _, adam_losses = families.train_task(family, optax.adam(1e-2), key, num_steps=4)
  np.testing.assert_allclose(losses[0], adam_losses[0], rtol=1e-6)  # same first minibatch
  assert bool(adam_losses[-1] < losses[-1])


def test_compare_picks_each_baselines_best_rate_on_the_held_out_tasks(tmp_path):
  family = families.quadratic(dim=4)
  lopt = lo.learnable_sgd(learning_rate=0.1)
  result = meta_training.compare(family, lopt, lopt.init(jax.random.key(0)), num_tasks=5,
                                 num_steps=10, seed=0, adam_lrs=(1e-3, 1e-1), sgd_lrs=(1e-3, 0.1))
  assert result["best"] == {"adam": 0.1, "sgd": 0.1}
  # learnable SGD at 0.1 is SGD at 0.1: the same runs, the same losses.
  assert result["median_final_train_loss"]["learned"] == pytest.approx(
      result["median_final_train_loss"]["sgd_best"], rel=1e-5)
  paths = meta_training.write_comparison(str(tmp_path), result)
  assert [os.path.basename(p) for p in paths] == ["comparison.json", "comparison.md",
                                                   "comparison.png"]
  assert open(paths[2], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert "**sgd(lr=0.1)**" in open(paths[1]).read()


def _small_run(logdir, outer_steps=6, **overrides):
  lopt = lo.mlp_lopt(hidden=(4,))
  system = families.family_system(families.quadratic(dim=3), lopt, horizon=4)
  options = dict(estimator="pes", num_steps=2, num_particles=2, sigma=0.01, num_tasks=2,
                 meta_optimizer=optax.adam(1e-2), outer_steps=outer_steps, seed=0,
                 logdir=logdir, checkpoint_every=2, log_every=2, test_every=0, verbose=False,
                 config={"test": 1})
  options.update(overrides)
  return meta_training.meta_train(system, lopt.init(jax.random.key(0)), **options)


def test_meta_train_resumes_exactly_where_it_stopped(tmp_path):
  whole = _small_run(None, 6)
  _small_run(str(tmp_path), 4)
  resumed = _small_run(str(tmp_path), 6)
  assert resumed.summary["start_step"] == 4
  chex.assert_trees_all_close(resumed.theta, whole.theta, rtol=1e-6)
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["outer_steps"] == 6 and summary["final"]["meta_grad_norm"] > 0
  with pytest.raises(metaopt.files.RunFolderError, match="different configuration"):
    _small_run(str(tmp_path), 6, sigma=0.02)


def test_an_extended_run_keeps_its_tests_and_its_periods(tmp_path):
  test = lambda theta: {"norm": jnp.full((2,), sum(jnp.sum(x**2) for x in jax.tree.leaves(theta)))}
  _small_run(str(tmp_path), 5, test=test, test_every=2)
  extended = _small_run(str(tmp_path), 8, test=test, test_every=2)
  # From step 5 the calls end on multiples of 2 again; the first part's tests are kept.
  assert [r["step"] for r in extended.summary["tests"]] == [2, 4, 5, 6, 8]
  assert extended.summary["finished"] and extended.summary["start_step"] == 5


@pytest.mark.parametrize("bad, match", [
    ({"estimator": "rtrl"}, "meta-training takes one of"), ({"outer_steps": 0}, "outer_steps"),
    ({"num_tasks": 0}, "num_tasks"), ({"log_every": -1}, "log_every"),
    ({"test": "median"}, "test"), ({"num_particles": 3}, "num_particles")])
def test_meta_train_refuses_bad_arguments_in_one_line(bad, match, tmp_path):
  options = {"outer_steps": 2, **bad}
  with pytest.raises(ValueError, match=match) as error:
    _small_run(str(tmp_path / "run"), **options)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.fixture
def free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "launch.meta_train", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_two_processes_give_the_one_process_meta_gradient(tmp_path, free_port):
  """2 local processes (JAX's distributed runtime, gloo collectives) against 1, same keys.

  With SGD at rate 1, theta after one outer step is theta0 minus the meta-gradient:
  equal thetas are equal meta-gradients (up to the order of float additions).
  """
  common = ["--family=quadratic", "--family_option=dim=6",
            "--learned_optimizer_option=hidden=(8,)",
            "--horizon=4", "--num_steps=2", "--num_tasks=4", "--outer_steps=1",
            "--meta_optimizer=sgd", "--meta_lr=1", "--log_every=1", "--checkpoint_every=0",
            "--test_every=0", "--validate_every=0", "--nocompare"]
  one = _launch(common + [f"--logdir={tmp_path}/one"])
  assert one.wait(timeout=300) == 0, one.stdout.read()
  address = f"--coordinator_address=127.0.0.1:{free_port}"
  procs = [_launch(common + [f"--logdir={tmp_path}/two", "--num_processes=2",
                             f"--process_id={i}", address]) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  summary = json.load(open(tmp_path / "two" / "summary.json"))
  assert summary["num_processes"] == 2 and summary["num_devices"] == 2
  theta0 = lo.mlp_lopt(hidden=(8,)).init(jax.random.key(0))
  load = lambda name: metaopt.checkpoint.restore(str(tmp_path / name / "theta.npz"), theta0)
  grad_one = jax.tree.map(lambda a, b: a - b, theta0, load("one"))
  grad_two = jax.tree.map(lambda a, b: a - b, theta0, load("two"))
  assert float(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad_one))) > 0
  chex.assert_trees_all_close(grad_two, grad_one, rtol=1e-4, atol=1e-6)
  assert not os.path.exists(tmp_path / "two" / "comparison.json")
  # A run folder process 0 refuses (another configuration) is refused by both, promptly.
  changed = [a if not a.startswith("--horizon") else "--horizon=6" for a in common]
  procs = [_launch(changed + [f"--logdir={tmp_path}/two", "--num_processes=2",
                              f"--process_id={i}", address]) for i in range(2)]
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [1, 1], outputs
  assert "different configuration" in outputs[0].strip().splitlines()[-1], outputs[0]
  assert "process 0 refused the run folder" in outputs[1].strip().splitlines()[-1], outputs[1]


@pytest.mark.slow
def test_launch_meta_train_end_to_end_then_a_rerun_resumes(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  logdir = tmp_path / "run"
  args = ["--family=quadratic", "--family_option=dim=4", "--learned_optimizer_option=hidden=(4,)",
          "--horizon=4", "--num_steps=2", "--num_tasks=2", "--outer_steps=6", "--log_every=2",
          "--test_every=3", "--validate_every=2", "--checkpoint_every=3", "--num_test_tasks=5",
          "--num_validation_tasks=3", "--adam_lrs=0.01,0.1", "--sgd_lrs=0.1", f"--logdir={logdir}"]
  first = _launch(args)
  out = first.communicate(timeout=300)[0]
  assert first.returncode == 0, out
  assert "outer step 6/6" in out and "Median final training loss" in out
  summary = json.load(open(logdir / "summary.json"))
  assert summary["theta_is"] == "best validated" and [r["step"] for r in summary["tests"]] == [3, 6]
  comparison = json.load(open(logdir / "comparison.json"))
  assert set(comparison["best"]) == {"adam", "sgd"} and comparison["num_tasks"] == 5
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={
      event_accumulator.TENSORS: 0})
  acc.Reload()
  tags = set(acc.Tags()["tensors"])
  assert {"meta/meta_loss", "meta/meta_grad_norm", "meta/meta_grad_snr",
          "meta/best_validation_loss", "test/train_loss_median",
          "test/best_train_loss_median"} <= tags
  assert len(acc.Tensors("meta/meta_loss")) == 6
  again = _launch(args)
  out = again.communicate(timeout=300)[0]
  assert again.returncode == 0, out
  assert f"resuming {logdir} from outer step 6" in out
  assert json.load(open(logdir / "summary.json")) == summary  # a finished run's summary stands
  other = _launch([a if not a.startswith("--horizon") else "--horizon=8" for a in args])
  out = other.communicate(timeout=300)[0]
  assert other.returncode == 1 and "different configuration" in out.strip().splitlines()[-1], out
