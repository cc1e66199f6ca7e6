"""metaopt.tune, the front-door job from Python: same θ as launch.tune, resume, refusals, logs."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

import metaopt
import unrolled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = metaopt.UnrolledSystem(
    init=lambda key, th: jnp.ones(2) * jnp.exp(th), horizon=4,
    step=lambda s, th, key: (0.5 * s + th + 0.01 * jax.random.normal(key, (2,)),
                             jnp.sum((s - 1.0) ** 2)))
QUIET = dict(num_steps=2, meta_optimizer=metaopt.meta_optimizer("sgd", 0.01), verbose=False)
RunOutput = metaopt.tuning.RunOutput


def tags(logdir):
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


@pytest.mark.slow
@pytest.mark.parametrize("estimator, extra", [
    ("uoro", ["--num_chains=2"]), ("pes", ["--num_particles=4", "--sigma=0.1"])])
def test_launch_tune_and_metaopt_tune_give_bit_identical_theta(estimator, extra, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "launch.tune", "--problem=influence_balancing",
       "--problem_option=horizon=20", f"--estimator={estimator}", "--num_steps=5",
       "--outer_steps=6", "--checkpoint_every=3", "--seed=3", "--meta_lr=0.003",
       f"--logdir={tmp_path / 'launch'}", *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  launched = json.load(open(tmp_path / "launch" / "summary.json"))

  problem = unrolled.get("influence_balancing", horizon=20)
  options = dict(a.lstrip("-").split("=") for a in extra)
  result = metaopt.tune(problem.system, problem.theta, estimator=estimator, num_steps=5,
                        outer_steps=6, seed=3, meta_optimizer=metaopt.meta_optimizer("adam", 0.003),
                        output=RunOutput(tmp_path / "python", checkpoint_every=3), num_chains=int(options.get("num_chains", 1)),
                        num_particles=int(options.get("num_particles", 8)),
                        sigma=float(options.get("sigma", 0.01)), verbose=False)
  flat = np.asarray(jax.flatten_util.ravel_pytree(result.theta)[0]).tolist()
  assert flat == launched["theta"] and result.summary["theta"] == launched["theta"]
  assert flat != problem.theta.tolist()  # it moved
  assert result.summary["tuned"] == launched["tuned"]


@pytest.mark.parametrize("estimator", ["full_bptt", "tbptt", "rtrl", "uoro", "pes",
                                       "truncated_es"])
def test_every_estimator_tunes_and_logs(estimator, tmp_path):
  problem = unrolled.get("influence_balancing", horizon=20)
  result = unrolled.tune_problem(problem, estimator=estimator, num_steps=5, num_particles=4,
                                 sigma=0.1, outer_steps=8,
                                 meta_optimizer=metaopt.meta_optimizer("sgd", 1e-4),
                                 output=RunOutput(tmp_path, checkpoint_every=4),
                                 verbose=False)
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["outer_steps"] == 8 and np.isfinite(summary["theta"]).all()
  assert summary["theta"] == [float(result.theta)] and set(summary["tuned"]) >= {"meta_loss_mean"}
  tensors = set(tags(str(tmp_path)).Tags()["tensors"])
  assert {"loss/per_inner_step", "hyperparameters/theta", "hypergrad/theta",
          "hypergrad_horizon/mean/theta", "eval/meta_loss_mean"} <= tensors
  if estimator == "uoro":
    assert {"estimator/rho0", "estimator/rho1", "estimator/s_tilde_norm",
            "estimator/theta_tilde_norm"} <= tensors
  if estimator == "pes":
    assert "estimator/accumulator_norm" in tensors


def test_without_logdir_nothing_is_written_and_a_summary_comes_back(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  result = metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=10, **QUIET)
  assert os.listdir(tmp_path) == [] and result.logdir is None
  assert int(result.state.step) == 10 and result.summary["outer_steps"] == 10
  assert set(result.summary["untuned"]) == {"meta_loss_mean", "meta_loss_last"}
  assert result.summary["tuned"]["meta_loss_mean"] < result.summary["untuned"]["meta_loss_mean"]
  assert result.summary["theta_names"] == ["theta"]


def test_a_hyperparameters_function_written_with_numpy_works(tmp_path):
  # A display function a user writes with numpy (nothing forbids it) runs on host values; the
  # same values as a jnp one, in the summary and in TensorBoard.
  with_numpy = lambda theta: {"rate": np.exp(np.asarray(theta))}
  with_jnp = lambda theta: {"rate": jnp.exp(theta)}
  results = [metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=6, output=tmp_path / name,
                          hyperparameters=fn, **QUIET)
             for name, fn in (("numpy", with_numpy), ("jnp", with_jnp))]
  np.testing.assert_allclose(results[0].summary["hyperparameters"]["rate"],
                             results[1].summary["hyperparameters"]["rate"], rtol=1e-6)
  logged = [[float(tensor_util.make_ndarray(e.tensor_proto))
             for e in tags(str(tmp_path / name)).Tensors("hyperparameters/rate")]
            for name in ("numpy", "jnp")]
  assert len(logged[0]) == 6
  np.testing.assert_allclose(logged[0], logged[1], rtol=1e-6)


def test_an_interrupted_run_resumes_to_the_same_theta_and_steps(tmp_path, capsys):
  whole = metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=12,
                       output=RunOutput(tmp_path / "whole", checkpoint_every=4), **QUIET)
  metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=8,
               output=RunOutput(tmp_path / "parts", checkpoint_every=4), **QUIET)
  parts = metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=12,
                       output=RunOutput(tmp_path / "parts", checkpoint_every=4), num_steps=2,
                       meta_optimizer=metaopt.meta_optimizer("sgd", 0.01))
  assert "resuming" in capsys.readouterr().out
  assert np.asarray(parts.theta).tobytes() == np.asarray(whole.theta).tobytes()
  steps = [e.step for e in tags(str(tmp_path / "parts")).Tensors("hypergrad/theta")]
  assert steps == list(range(1, 13))


def test_a_logdir_of_another_configuration_or_theta_is_refused_before_compute(tmp_path):
  metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=4, output=tmp_path, **QUIET)
  before = (tmp_path / "checkpoint.npz").read_bytes()
  with pytest.raises(metaopt.files.RunFolderError, match=r"meta_lr: 0.01 there, 0.02 now"):
    metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=4, output=tmp_path,
                 **{**QUIET, "meta_optimizer": metaopt.meta_optimizer("sgd", 0.02)})
  with pytest.raises(metaopt.files.RunFolderError, match=r"theta_init"):
    metaopt.tune(SYSTEM, jnp.float32(0.5), outer_steps=4, output=tmp_path, **QUIET)
  metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=4, output=tmp_path / "tagged",
               config={"tag": "a"}, **QUIET)
  with pytest.raises(metaopt.files.RunFolderError, match=r"tag: 'a' there, None now"):
    metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=4, output=tmp_path / "tagged", **QUIET)
  assert (tmp_path / "checkpoint.npz").read_bytes() == before


@pytest.mark.parametrize("options, message", [
    (dict(estimator="bptt"), "bptt"),
    (dict(meta_optimizer="adamw"), "meta_optimizer='adamw' is unknown"),
    (dict(output=3), "output must be a metaopt.tuning.RunOutput"),
    (dict(output=RunOutput("elsewhere", checkpoint_every=0)), "checkpoint_every"),
    (dict(output=RunOutput("elsewhere", log_every=-1)), "log_every"),
    (dict(meta_optimizer=3), "meta_optimizer must be"),
    # The options tune took before they were grouped are still checked (with a warning).
    (dict(meta_lr=-1.0), "meta_lr"),
    (dict(outer_steps=0), "outer_steps"),
    (dict(seed=-1), "seed"),
    (dict(num_steps=3), "divide"),
    (dict(evaluate=3), "evaluate must be a function"),
    (dict(config={"num_steps": 4}), "config sets ['num_steps']"),
    (dict(config={"f": object()}), "config must hold JSON values"),
    (dict(mode="single"), "mode must be one of ('restarts', 'single_run')"),
    (dict(mode="single_run", outer_steps=3), "one_run"),
    (dict(max_update=0.0), "max_update"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(decay_steps=0), "decay_steps"),
])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_options_are_refused_before_any_file(options, message, tmp_path):
  kwargs = {**QUIET, "outer_steps": 2, "output": tmp_path / "run", **options}
  message = "ONE training run: the horizon 4 / window 2 = 2 outer steps" if message == "one_run" \
      else message
  with pytest.raises(ValueError, match=re.escape(message)):
    metaopt.tune(SYSTEM, jnp.float32(0.0), **kwargs)
  assert not (tmp_path / "run").exists() and not pathlib.Path("elsewhere").exists()


def test_too_many_non_finite_steps_raise_tuning_stopped_with_a_checkpoint(tmp_path):
  nan_loss = metaopt.UnrolledSystem(  # sqrt of a negative number: every window is NaN
      init=lambda key, th: jnp.ones(2), horizon=4,
      step=lambda s, th, key: (0.5 * s + th, jnp.sum(jnp.sqrt(th - 1.0) * s)))
  with pytest.raises(metaopt.TuningStopped, match="max_skipped=2") as stopped:
    metaopt.tune(nan_loss, jnp.float32(0.0), outer_steps=40, max_skipped=2,
                 output=RunOutput(tmp_path, checkpoint_every=5), **QUIET)
  assert stopped.value.step == 5 and stopped.value.num_skipped == 5
  assert (tmp_path / "checkpoint.npz").exists() and not (tmp_path / "summary.json").exists()
  np.testing.assert_array_equal(stopped.value.theta, [0.0])  # never updated


def test_a_built_estimator_and_an_optax_meta_optimizer_work_and_are_named_custom(tmp_path):
  est = metaopt.uoro(SYSTEM, num_steps=2, rank=2)
  result = metaopt.tune(SYSTEM, jnp.float32(0.0), estimator=est, num_steps=2,
                        meta_optimizer=optax.chain(optax.clip(1.0), optax.sgd(0.01)),
                        outer_steps=6, output=tmp_path, config={"meta": "clip+sgd"},
                        verbose=False)
  config = json.load(open(tmp_path / "config.json"))
  assert config["estimator"] == "custom" and config["meta_optimizer"] == "custom"
  assert config["meta"] == "clip+sgd" and "num_particles" not in config
  assert np.isfinite(float(result.theta)) and float(result.theta) != 0.0


@pytest.mark.parametrize("estimator", [name for name, info in metaopt.ESTIMATOR_TABLE.items()
                                       if info.particles] + ["rtrl"])
def test_evaluation_reads_one_inner_state(estimator, tmp_path):
  """Estimators that stack an inner state per particle are evaluated on particle 0."""
  def evaluate(state):
    assert state.shape == (2,), state.shape  # one inner state, not a stack
    return {"distance": jnp.sum((state - 1.0) ** 2)}
  metaopt.tune(SYSTEM, jnp.float32(0.0), estimator=estimator, num_particles=2, sigma=0.1,
               outer_steps=4, evaluate=evaluate, output=RunOutput(tmp_path, checkpoint_every=2),
               **QUIET)
  acc = tags(str(tmp_path))
  assert [e.step for e in acc.Tensors("eval/distance")] == [2, 4]
  assert {"final/tuned/distance", "final/untuned/distance"} <= set(acc.Tags()["tensors"])


def test_metaopt_imports_nothing_from_unrolled():
  code = ("import sys, metaopt; bad = [m for m in sys.modules if m.split('.')[0] in "
          "('unrolled', 'launch', 'studies')]; assert not bad, bad")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]


DETERMINISTIC = metaopt.UnrolledSystem(  # no key: a run with a fixed theta is reproducible
    init=lambda key, th: jnp.ones(2), horizon=6,
    step=lambda s, th, key: (0.5 * s + th, jnp.sum((s - 1.0) ** 2)))


def _distance(state):
  return {"distance": jnp.sum((state - 1.0) ** 2)}


@pytest.mark.parametrize("estimator", ["rtrl", "uoro", "pes"])
def test_single_run_mode_tunes_during_one_run_and_reports_its_own_model(estimator, tmp_path):
  kwargs = dict(estimator=estimator, num_steps=2, num_particles=2, sigma=0.1, verbose=False,
                evaluate=_distance)
  # With a meta learning rate of 0, the single run's own model is a plain run at theta0.
  frozen = metaopt.tune(DETERMINISTIC, jnp.float32(0.0), mode="single_run",
                        meta_optimizer=optax.sgd(0.0), **kwargs)
  assert frozen.summary["outer_steps"] == 3  # horizon 6 / window 2: one training run
  plain = metaopt.horizon.evaluate_horizon(DETERMINISTIC, jnp.float32(0.0), jax.random.key(0),
                                   evaluate=_distance)
  if estimator != "pes":  # pes's particle 0 trains at theta0 + its perturbation
    np.testing.assert_allclose(frozen.summary["single_run_final"]["distance"],
                               float(plain["distance"]), rtol=1e-6)
  tuned = metaopt.tune(DETERMINISTIC, jnp.float32(0.0), mode="single_run",
                       meta_optimizer=metaopt.meta_optimizer("sgd", 0.02, decay_steps=None),
                       output=tmp_path, **kwargs)
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["config"]["mode"] == "single_run" and summary["outer_steps"] == 3
  # theta moved towards 0.5 (s -> 2 theta = 1) during the run: the run's own model and the
  # retrain with the final theta both beat the untuned run.
  assert float(tuned.theta) > 0.0
  assert summary["single_run_final"]["distance"] < summary["untuned"]["distance"]
  assert summary["tuned"]["distance"] < summary["untuned"]["distance"]
  assert "final/single_run_distance" in tags(str(tmp_path)).Tags()["tensors"]


def test_the_default_meta_optimizer_warms_up_and_bounds_each_step():
  opt = metaopt.meta_optimizer("sgd", 1.0, max_update=0.5, warmup_steps=3, decay_steps=None)
  state, steps = opt.init(jnp.zeros(2)), []
  for _ in range(5):
    updates, state = opt.update(jnp.array([-0.2, 100.0]), state)
    steps.append(np.asarray(updates))
  # The learning rate ramps 1/4, 2/4, 3/4, 1, 1; no coordinate moves more than 0.5 a step.
  np.testing.assert_allclose([u[0] for u in steps], [0.05, 0.1, 0.15, 0.2, 0.2], rtol=1e-6)
  np.testing.assert_allclose([u[1] for u in steps], [-0.5] * 5)
  # After the warm-up the default rate decays as 1 / sqrt(1 + t / decay_steps).
  opt = metaopt.meta_optimizer("sgd", 1.0, warmup_steps=2, decay_steps=4)
  state, steps = opt.init(jnp.zeros(1)), []
  for _ in range(7):
    updates, state = opt.update(jnp.ones(1), state)
    steps.append(-float(updates[0]))
  np.testing.assert_allclose(steps, [1 / 3, 2 / 3, 1, (1 + 1 / 4) ** -0.5, (1 + 2 / 4) ** -0.5,
                                     (1 + 3 / 4) ** -0.5, (1 + 4 / 4) ** -0.5], rtol=1e-6)
  with pytest.raises(ValueError, match="meta_optimizer='lion' is unknown"):
    metaopt.meta_optimizer("lion")


def test_the_tuned_theta_is_the_best_validated_one_and_the_summary_says_which_is_which(tmp_path):
  """An estimator that pushes theta the wrong way: tune's product stays the initial theta (its
  validation is never beaten), the theta where tuning ended is reported beside it, and the
  comparison's 'tuned' run is the best theta's validation run (same keys)."""
  from typing import NamedTuple

  class Stub(NamedTuple):
    inner: jax.Array

  wrong_way = metaopt.Estimator(  # hypergradient +1: sgd lowers theta, away from the fixed
      init=lambda key, th: Stub(jnp.ones(2)),  # point 2 theta = 1: the loss grows
      unroll=lambda s, th, key: (s, jnp.ones_like(th), {"loss": jnp.ones(())}))
  # 11 outer steps: the last one moves theta after the 5th validation sent it back.
  result = metaopt.tune(SYSTEM, jnp.float32(0.0), estimator=wrong_way, outer_steps=11,
                        output=tmp_path, **QUIET)
  summary = json.load(open(tmp_path / "summary.json"))
  assert float(result.theta) == 0.0 and float(result.last_theta) < 0.0
  assert summary["theta"] == [0.0] and summary["last_theta"] == [float(result.last_theta)]
  assert summary["theta_is"] == "the best validated theta"
  assert summary["validation"]["num_validations"] == 5  # horizon 4 / window 2: every 2 steps
  assert summary["validation"]["num_rollbacks"] >= 1
  assert summary["tuned"] == summary["untuned"]  # the product is theta0's run
  np.testing.assert_allclose(summary["validation"]["best_loss"],
                             summary["untuned"]["meta_loss_last"], rtol=1e-6)
  off = metaopt.tune(SYSTEM, jnp.float32(0.0), estimator=wrong_way, outer_steps=12,
                     validation=False, **QUIET)
  assert float(off.theta) == float(off.last_theta) < 0.0
  assert off.summary["theta_is"].startswith("where tuning ended")


def test_the_grouped_options_give_the_old_options_theta_and_the_old_names_warn(tmp_path):
  """meta_optimizer=metaopt.meta_optimizer(...) and output=RunOutput(...) replace nine options;
  those still work for one release, with a warning naming the new place, and the same run."""
  new = metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=8, num_steps=2, verbose=False,
                     meta_optimizer=metaopt.meta_optimizer("adam", 0.03, max_update=0.05,
                                                           warmup_steps=2, decay_steps=5),
                     output=RunOutput(tmp_path / "new", checkpoint_every=4, log_every=4))
  with pytest.warns(DeprecationWarning, match=r"meta_optimizer=metaopt.meta_optimizer"):
    with pytest.warns(DeprecationWarning, match=r"output=metaopt.tuning.RunOutput"):
      old = metaopt.tune(SYSTEM, jnp.float32(0.0), outer_steps=8, num_steps=2, verbose=False,
                         meta_lr=0.03, max_update=0.05, warmup_steps=2, decay_steps=5,
                         logdir=tmp_path / "old", checkpoint_every=4, log_every=4)
  assert np.asarray(new.theta).tobytes() == np.asarray(old.theta).tobytes()
  configs = [json.load(open(tmp_path / name / "config.json")) for name in ("new", "old")]
  assert configs[0] == configs[1] and configs[0]["meta_lr"] == 0.03
  assert configs[0]["max_update"] == 0.05 and configs[0]["checkpoint_every"] == 4
  with pytest.raises(TypeError, match="unexpected keyword argument 'meta_rate'"):
    metaopt.tune(SYSTEM, jnp.float32(0.0), meta_rate=0.1)
  with pytest.raises(ValueError, match=r"either output or \['logdir'\]"):
    with pytest.warns(DeprecationWarning):
      metaopt.tune(SYSTEM, jnp.float32(0.0), output=tmp_path / "x", logdir=tmp_path / "y")
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
