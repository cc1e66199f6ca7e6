"""Optuna studies: the recorded numbers, shared studies across worker processes on SQLite and on
a real PostgreSQL server (with a worker killed mid-trial), and the outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.flatten_util
import numpy as np
import optuna
import pytest

from studies import bias_variance
from studies import storage as storage_lib
from studies import tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--study=bias_variance", "--problem=influence_balancing", "--problem_option=horizon=20",
        "--estimators=rtrl,tbptt,uoro", "--num_steps=5,10", "--num_chains=1,2",
        "--num_samples=16"]


def study_cmd(*args):
  return [sys.executable, "-m", "launch.study", *args]


@pytest.mark.slow
def test_bias_variance_numbers_on_the_toy_regression(tmp_path):
  ctx = bias_variance.Context("toy_regression", {}, ("rtrl",), (10,), (8,), (0.01, 0.01), (1,),
                              64, 0, "full_bptt", str(tmp_path))
  problem = bias_variance.make_problem(ctx)
  exact = lambda c, w: bias_variance.cached_exact(ctx, problem, c, w)

  def run(estimator, **kw):
    kw = {"num_steps": 10, "num_particles": 8, "sigma": 0.01, "num_chains": 1, **kw}
    return bias_variance.measure(problem, estimator, num_samples=64, seed=0,
                                 exact_mean_fn=exact, **kw)

  rtrl = run("rtrl")
  assert rtrl["bias2"] < 1e-8 * rtrl["exact_norm2"] and rtrl["variance"] < 1e-8
  tbptt = run("tbptt")
  assert tbptt["relative_bias2"] > 0.5 and tbptt["variance"] < 1e-8
  pes = run("pes")
  assert pes["variance"] > 0 and pes["bias2_debiased"] < 5 * pes["bias2_se"] + 1e-3
  pes4 = run("pes", num_chains=4)
  assert pes4["variance"] < pes["variance"] / 2  # 4 chains: about a quarter
  assert pes4["inner_steps"] == 4 * pes["inner_steps"] == 4 * 8 * 100
  assert all(r["cost_seconds"] > 0 and r["cost_plain_steps"] > 0 for r in (rtrl, tbptt, pes))
  # The exact gradients were cached once per chain and window length.
  assert len(os.listdir(tmp_path / "exact_cache")) == 4


@pytest.mark.slow
def test_paired_exact_gradients_follow_the_window_keys(tmp_path):
  """On a problem with random minibatches an exact estimator has zero paired variance, whatever
  its window length: its exact reference uses the same step keys."""
  options = {"width": 8, "depth": 1, "horizon": 20, "schedule": "piecewise_linear",
             "num_knots": 3}
  ctx = bias_variance.Context("digits_mlp", options, ("rtrl",), (5,), (2,), (0.01, 0.01), (1,),
                              8, 0, "full_bptt", str(tmp_path))
  problem = bias_variance.make_problem(ctx)
  for window in (5,):  # several windows per horizon: the case whose keys differ from one window
    r = bias_variance.measure(problem, "rtrl", num_steps=window, num_particles=2, sigma=0.01,
                              num_chains=1, num_samples=8, seed=0,
                              exact_mean_fn=lambda c, w: bias_variance.cached_exact(ctx, problem,
                                                                                    c, w))
    assert r["relative_mse"] < 1e-8, (window, r["relative_mse"])
    assert r["total_variance"] > 0  # the minibatches do differ between samples


def test_a_spec_with_its_own_window_is_measured_over_that_window(tmp_path):
  """``rtrl[num_steps=5]`` with a trial's num_steps=10: the study must unroll 5-step windows over
  the whole horizon and pair it with the 5-step keys' exact gradient (exact RTRL: bias ~0)."""
  ctx = bias_variance.Context("toy_regression", {"horizon": 20}, ("rtrl[num_steps=5]",), (10,),
                              (8,), (0.01, 0.01), (1,), 8, 0, "full_bptt", str(tmp_path))
  problem = bias_variance.make_problem(ctx)
  r = bias_variance.measure(problem, "rtrl[num_steps=5]", num_steps=10, num_particles=2,
                            sigma=0.01, num_chains=1, num_samples=8, seed=0,
                            exact_mean_fn=lambda c, w: bias_variance.cached_exact(ctx, problem,
                                                                                  c, w))
  assert r["exact_norm2"] > 0 and r["relative_bias2"] < 1e-8, r["relative_bias2"]
  assert os.listdir(tmp_path / "exact_cache")[0].endswith("-window5-chain0.npy")


def load(url, name):
  return optuna.load_study(study_name=name, storage=storage_lib.make_storage(url))


@pytest.mark.slow
def test_two_sqlite_workers_share_one_study_and_a_rerun_continues_it(tmp_path):
  out_dir = str(tmp_path / "study")
  url = storage_lib.default_storage_url(out_dir)
  run = subprocess.run(study_cmd(*TINY, "--n_trials=6", "--n_workers=2", "--study_name=s",
                                 f"--output_dir={out_dir}"), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  trials = load(url, "s").trials
  assert sorted(t.number for t in trials) == list(range(6))
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  assert all("bias2" in t.user_attrs and len(t.values) == 3 for t in trials)
  for name in ("trials.csv", "bias2_vs_variance.png", "cost_vs_mse.png",
               "variance_vs_cost.png", "summary.md"):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
  board = os.listdir(os.path.join(out_dir, "tensorboard"))  # a session per trial, the experiment
  assert len([f for f in board if f.startswith("trial_")]) == 6
  assert len([f for f in board if f.startswith("events.")]) == 1
  assert "| trial | estimator |" in run.stdout
  # Rerunning continues the study up to the new target instead of starting over.
  run = subprocess.run(study_cmd(*TINY, "--n_trials=8", "--study_name=s",
                                 f"--output_dir={out_dir}"), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "6 finished trials, running 2 more" in run.stdout
  assert sorted(t.number for t in load(url, "s").trials) == list(range(8))


@pytest.mark.slow
def test_postgresql_worker_killed_mid_trial_is_failed_and_retried(postgres_url, tmp_path):
  # A trial that lasts several seconds (digits MLP, exact gradients of 512 samples), so that the
  # worker can be killed in the middle of it.
  common = ["--study=bias_variance", "--problem=digits_mlp", "--problem_option=width=8",
            "--problem_option=depth=1", "--problem_option=horizon=20", "--estimators=rtrl,tbptt",
            "--num_steps=5", "--num_chains=1", "--num_samples=512",
            f"--storage={postgres_url}", "--study_name=pg",
            f"--output_dir={tmp_path}", "--heartbeat_interval=1", "--grace_period=3",
            "--report=false"]
  victim = subprocess.Popen(study_cmd(*common, "--worker_trials=1"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  running = []
  while time.time() < deadline and victim.poll() is None:
    try:
      # Wait until the objective is under way (its parameters are chosen): a worker killed before
      # its first heartbeat leaves a trial that no heartbeat check can ever see as stale.
      running = [t for t in load(postgres_url, "pg").trials
                 if t.state == optuna.trial.TrialState.RUNNING and t.params]
    except KeyError:  # study not created yet
      pass
    if running:
      break
    time.sleep(0.05)
  assert running, "the first worker never started a trial"
  time.sleep(1.5)  # past one heartbeat interval
  state = load(postgres_url, "pg").trials[running[0].number].state
  assert victim.poll() is None and state == optuna.trial.TrialState.RUNNING, (
      "the first worker finished its trial before it could be killed")
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  time.sleep(4)  # past the grace period: the trial's heartbeat is stale
  rescuer = subprocess.run(study_cmd(*common, "--n_trials=2"), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
  assert rescuer.returncode == 0, rescuer.stderr[-3000:]
  trials = load(postgres_url, "pg").trials
  killed = trials[running[0].number]
  assert killed.state == optuna.trial.TrialState.FAIL
  retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
  assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
  assert retries[0].params == killed.params
  assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2


REDUCED_MNIST1D = [  # tuning_mnist1d_mlp.flags, made small; later options win
    "--flagfile=launch/configs/tuning_mnist1d_mlp.flags", "--problem_option=width=8",
    "--problem_option=horizon=20", "--problem_option=validation_batch_size=16",
    "--methods=online:rtrl,online:pes,tpe,random,cmaes,grid", "--num_seeds=1",
    "--budgets=1,3", "--num_evals=2", "--tune_num_particles=2", "--n_trials=6"]


@pytest.mark.slow
def test_the_mnist1d_tuning_study_in_a_reduced_configuration(tmp_path):
  """Every kind of method at budgets of 1 and 3 runs: the final models' held-out test metrics,
  the single-run rows, the budget accounting, the tables, the goals and the plot."""
  out = subprocess.run(study_cmd(*REDUCED_MNIST1D, f"--output_dir={tmp_path}"), cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  study = optuna.load_study(study_name="tuning-mnist1d-mlp", storage=storage_lib.make_storage(
      f"journal:///{tmp_path}/study.journal"))
  trials = {t.params["method"]: t for t in study.trials}
  assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials.values())
  horizon = 20
  for method, t in trials.items():
    at = t.user_attrs["at_budget"]
    assert sorted(at) == ["1", "3"], method
    for out_b in at.values():
      assert 0 <= out_b["test_accuracy"] <= 1 and np.isfinite(out_b["test_loss"]), method
    if method in ("tpe", "random", "cmaes"):  # the best finished trial by validation loss
      assert t.user_attrs["inner_steps"] <= 3 * horizon
      assert at["3"]["validation_loss"] <= at["1"]["validation_loss"]
  rtrl, pes = trials["online:rtrl"].user_attrs, trials["online:pes"].user_attrs
  assert rtrl["single_own"]["runs"] == 1 and rtrl["single_retrain"]["runs"] == 2
  assert pes["single_own"]["runs"] == 2 and pes["single_retrain"]["runs"] == 3  # 2 particles
  assert rtrl["diverged"] is False and rtrl["num_skipped"] == 0
  # theta0 first for everyone: at 1 run every online and black-box method's model is theta0's
  # own run on the same keys (the first black-box trial is theta0, enqueued).
  theta0_run = rtrl["at_budget"]["1"]
  for method in ("online:pes", "tpe", "random", "cmaes"):
    for k, v in theta0_run.items():
      assert trials[method].user_attrs["at_budget"]["1"][k] == pytest.approx(v, rel=1e-5), method
  # Best so far: no method's reported model gets worse (by validation) as its budget grows, and
  # an online run's reported curve never rises; its validation runs are in the budget.
  for method, t in trials.items():
    at = t.user_attrs["at_budget"]
    assert at["3"]["validation_loss"] <= at["1"]["validation_loss"], method
  for online in (rtrl, pes):
    validation = [c[1] for c in online["curve"]]
    assert validation == sorted(validation, reverse=True)
    assert online["curve"][-1][0] <= 3 * horizon  # tuning and validation runs within 3 runs
    assert online["num_validations"] >= 1 and len(online["current_curve"]) >= 2
  summary = (tmp_path / "summary.md").read_text()
  for text in ("| online:rtrl |", "| grid |", "| cmaes |", "single:rtrl own", "single:pes retrain",
               "| current:rtrl |", "Goals:", "budget 1 run: every method's model is theta0's",
               "budget 3 runs: best online", "divergence: 0 diverged",
               "reported curves ending above their value at 1 run"):
    assert text in summary, text
  assert (tmp_path / "tuning_curves.png").stat().st_size > 10_000
  rows = json.load(open(tmp_path / "summary.json"))["rows"]
  assert {(r["method"], r["budget_runs"]) for r in rows} >= {("grid", 3), ("single:rtrl own", 1)}


TOY_CONTEXT = tuning.Context(
    "toy_regression", {"horizon": 10}, ("online:rtrl", "tpe", "random", "cmaes"), (0,), (1, 3, 6),
    2, 5, 4, 0.1, "adam", 0.05, 3.0, 2)


@pytest.mark.parametrize("method", ["tpe", "random", "cmaes"])
def test_black_box_search_tries_theta0_first_on_the_keys_of_every_other_model(method):
  """theta0 first, same keys: a black-box method's first trial is theta0's own run, scored as
  the online tuner's validation of theta0 is (here by the meta-loss of the whole run: the toy
  regression has no validation split)."""
  problem = tuning.make_problem(TOY_CONTEXT)
  _, _, online = tuning.run_online(TOY_CONTEXT, problem, "rtrl", 0)
  curve, _, black_box = tuning.run_black_box(TOY_CONTEXT, problem, method, 0)
  for k, v in online["at_budget"]["1"].items():
    if np.isfinite(v):
      assert black_box["at_budget"]["1"][k] == pytest.approx(v, rel=1e-5), k
  assert curve[0][0] == 10  # one run of inner steps
  validation = [c[1] for c in curve]
  assert validation == sorted(validation, reverse=True)  # best so far


def test_an_online_run_reports_its_best_validated_model_within_each_budget():
  """Validation runs are counted: at a budget of b runs, the reported model is the best of the
  validations whose tuning and validation runs fit in b; the current-theta curve is separate."""
  problem = tuning.make_problem(TOY_CONTEXT)
  curve, theta, extra = tuning.run_online(TOY_CONTEXT, problem, "rtrl", 0)
  every = extra["validate_every"]
  assert every == 2  # one run of tuning: horizon 10 / window 5
  # theta0's run (1), then 1 run of tuning + 1 validation per period: 1 + 2 j <= b
  assert [c[0] for c in curve] == [10, 30, 50]
  reported = {b: extra["at_budget"][str(b)]["validation_loss"] for b in (1, 3, 6)}
  assert reported[1] >= reported[3] >= reported[6]
  assert reported[6] == pytest.approx(curve[2][1])  # 6 runs: 2 periods fit (5 runs), not 3
  assert extra["num_validations"] == 2 and extra["current_curve"][0][1] == curve[0][1]
  # The returned theta is the best validated one: retrained, its model is the reported one.
  unravel = jax.flatten_util.ravel_pytree(problem.theta)[1]
  again = tuning.evaluator(problem, 0)(unravel(np.asarray(theta, np.float32)))
  assert again["validation_loss"] == pytest.approx(curve[-1][1], rel=1e-6)


def test_storage_urls():
  with pytest.raises(ValueError, match="sqlite:///PATH, journal:///PATH"):
    storage_lib.make_storage("mysql://nope")
  s = storage_lib.make_storage("journal:///" + os.path.join("/tmp", f"metaopt-{os.getpid()}.log"))
  assert isinstance(s, optuna.storages.JournalStorage)


@pytest.mark.parametrize("damage", ["random", "truncated", "pickled", "wrong_shape"])
def test_a_damaged_exact_cache_entry_is_recomputed_and_rewritten(tmp_path, capsys, damage):
  ctx = bias_variance.Context("toy_regression", {"horizon": 10}, ("rtrl",), (5,), (2,),
                              (0.01, 0.01), (1,), 4, 0, "full_bptt", str(tmp_path))
  problem = bias_variance.make_problem(ctx)
  good = bias_variance.cached_exact(ctx, problem, 1, 5)
  (path,) = (tmp_path / "exact_cache").iterdir()
  data = path.read_bytes()
  bad = {"random": os.urandom(200), "truncated": data[:len(data) // 2],
         "pickled": b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
                    + b" " * 40 + b"\n" + b"\x80\x04N.",
         "wrong_shape": data[:0]}[damage]
  if damage == "wrong_shape":
    import io
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 2), np.float32))
    bad = buffer.getvalue()
  path.write_bytes(bad)
  again = bias_variance.cached_exact(ctx, problem, 1, 5)
  np.testing.assert_array_equal(again, good)
  assert str(path) in capsys.readouterr().err
  np.testing.assert_array_equal(np.load(path), good)  # rewritten
  assert os.listdir(tmp_path / "exact_cache") == [path.name]


def test_a_damaged_or_locked_sqlite_study_is_refused_in_one_line_and_left_unchanged(tmp_path):
  import sqlite3
  import threading
  url_of = lambda p: f"sqlite:///{p}"
  garbage = tmp_path / "garbage.db"
  garbage.write_bytes(os.urandom(8192))
  good = tmp_path / "good.db"
  storage_lib.open_study(storage_lib.make_storage(url_of(good)), "s", ["minimize"]).optimize(
      lambda t: t.suggest_float("x", 0, 1), n_trials=2)
  truncated = tmp_path / "truncated.db"
  truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 3])
  for path in (garbage, truncated):
    before = path.read_bytes()
    with pytest.raises(storage_lib.StorageError, match="is damaged") as e:
      storage_lib.make_storage(url_of(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == before
  # Locked: another connection holds an exclusive lock for longer than we wait.
  holder = sqlite3.connect(str(good), check_same_thread=False)
  holder.execute("BEGIN EXCLUSIVE")
  try:
    start = time.time()
    with pytest.raises(storage_lib.StorageError, match="is locked by another process"):
      storage_lib.make_storage(url_of(good), lock_timeout=0.5)
    assert time.time() - start < 10
  finally:
    holder.rollback()
    holder.close()
  assert len(load(url_of(good), "s").trials) == 2


def test_launch_study_refuses_a_damaged_sqlite_study_in_one_line(tmp_path):
  path = tmp_path / "study.db"
  path.write_bytes(os.urandom(4096))
  run = subprocess.run(study_cmd(*TINY, "--n_trials=1", f"--output_dir={tmp_path}",
                                 "--report=false"), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode != 0 and "Traceback" not in run.stderr
  lines = [l for l in run.stderr.splitlines() if l.startswith("launch.study: error:")]
  assert len(lines) == 1 and str(path) in lines[0] and "damaged" in lines[0], run.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == ["study.db"]


@pytest.mark.slow
def test_a_postgresql_password_is_never_shown_nor_on_worker_command_lines(postgres_url, tmp_path):
  """The server trusts loopback, so any password is accepted: it must appear nowhere."""
  url = postgres_url.replace("postgres@", "postgres:s3cr3tpw@")
  out = tmp_path / "out"
  proc = subprocess.Popen(study_cmd(*TINY, "--n_trials=2", "--n_workers=2", f"--storage={url}",
                                    "--study_name=pw", f"--output_dir={out}"), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = []
  while proc.poll() is None:
    for pid in os.listdir("/proc"):
      if pid.isdigit() and int(pid) != proc.pid:
        try:
          with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().decode(errors="replace")
        except OSError:
          continue
        if "launch.study" in cmd:
          seen.append(cmd)
    time.sleep(0.2)
  stdout, stderr = proc.communicate()
  assert proc.returncode == 0, stderr[-3000:]
  workers = [c for c in seen if "--worker" in c]
  assert workers and not any("s3cr3tpw" in c or "--storage" in c for c in workers)
  assert "s3cr3tpw" not in stdout + stderr and "postgres:***@" in stdout
  for folder, _, files in os.walk(out):
    for name in files:
      with open(os.path.join(folder, name), "rb") as f:
        assert b"s3cr3tpw" not in f.read(), name
  assert len(load(postgres_url, "pw").trials) == 2


# What a person reads of a study: its figures, summary and TensorBoard sessions.

def fake_trial(number, estimator, *, bias2, variance, num_steps=10, num_particles=2,
               num_chains=1, scale=18.0):
  """A finished bias_variance trial with the attributes the report reads (no compute)."""
  attrs = {"bias2": bias2, "bias2_se": 0.1 * bias2, "variance": variance,
           "variance_se": 0.1 * variance, "exact_norm2": scale, "relative_mse": (
               bias2 + variance) / scale, "cost_seconds": 1e-3, "cost_plain_steps": 10.0 + number,
           "mse": bias2 + variance, "settings": {
               "estimator": estimator, "num_steps": num_steps, "num_particles": num_particles,
               "sigma": 0.01, "num_chains": num_chains}}
  trial = optuna.trial.create_trial(values=[bias2, variance, 1e-3], user_attrs=attrs,
                                    params={"estimator": estimator}, distributions={
                                        "estimator": optuna.distributions.CategoricalDistribution(
                                            ["tbptt", "rtrl", "uoro", "pes"])})
  trial.number = number
  return trial


FAKE = [fake_trial(0, "pes", bias2=0.01, variance=9.0, num_particles=32),
        fake_trial(1, "pes", bias2=0.02, variance=40.0, num_particles=8),
        fake_trial(2, "rtrl", bias2=1e-12, variance=0.0),
        fake_trial(3, "tbptt", bias2=17.0, variance=0.0, num_steps=1),
        fake_trial(4, "uoro", bias2=0.005, variance=20.0, num_chains=4)]


def test_summary_rows_sort_by_estimator_then_numerically():
  from studies import report  # pylint: disable=g-import-not-at-top
  labels = [report.label(t) for t in sorted(FAKE, key=report.sort_key)]
  assert labels == ["tbptt K=1", "rtrl K=10", "uoro K=10 C=4", "pes K=10 N=8 sigma=0.01",
                    "pes K=10 N=32 sigma=0.01"]  # N=8 before N=32


def test_exact_estimates_sit_on_a_marked_zero_strip_not_at_1e_minus_12():
  from studies import report  # pylint: disable=g-import-not-at-top
  fig, ax = report.bias2_variance_axes(FAKE, front={2, 3})
  texts = [t.get_text() for t in ax.texts]
  assert texts.count(report.ZERO_LABEL) == 2  # a strip for bias² and one for variance
  # the axes span the non-zero data and the strips, not 14 empty decades down to 1e-12
  assert ax.get_ylim()[0] > 9.0 / 10**3 and ax.get_xlim()[0] > 0.005 / 10**3
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert {"K = 1", "K = 10", "N = 8", "N = 32", "several chains", "Pareto front"} <= set(legend)
  report._plt().close(fig)


def test_trial_sessions_are_zero_padded_and_hold_only_the_options_used(tmp_path):
  from studies import report  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top

  class Study:  # what tensorboard_sessions reads of a study
    trials = FAKE
  report.tensorboard_sessions(Study(), str(tmp_path), "bias_variance")
  listed = sorted(os.listdir(tmp_path))  # the sessions and the experiment's event file
  assert listed[1:] == [f"trial_000{i}" for i in range(5)] and listed[0].startswith("events.")
  for number, used in ((2, {"estimator", "num_steps", "num_chains"}),
                       (0, {"estimator", "num_steps", "num_particles", "sigma", "num_chains"})):
    acc = event_accumulator.EventAccumulator(str(tmp_path / f"trial_000{number}"))
    acc.Reload()
    info = plugin_data_pb2.HParamsPluginData.FromString(acc.summary_metadata[
        "_hparams_/session_start_info"].plugin_data.content).session_start_info
    assert set(info.hparams) == used | {"trial_state"}
    assert info.group_name == f"trial_000{number}"
    assert {"bias2", "variance", "mse", "cost_seconds", "_hparams_/session_end_info"} <= set(
        acc.Tags()["tensors"])


def test_a_grid_has_no_repeated_cells():
  from studies import study_runner as launch_study  # pylint: disable=g-import-not-at-top
  ctx = bias_variance.Context("toy_regression", {}, ("tbptt", "rtrl", "uoro", "pes"), (1, 10),
                              (2, 8, 32), (0.01, 0.01), (1, 4), 8, 0, "full_bptt", "unused")
  cells = launch_study.grid_cells(ctx)
  assert len(cells) == 24  # (tbptt, rtrl, uoro) x K x C + pes x K x N x C, each once
  assert len({tuple(sorted(c.items())) for c in cells}) == 24


def test_cost_is_the_median_of_timed_repeats():
  problem = bias_variance.make_problem(bias_variance.Context(
      "influence_balancing", {"horizon": 20}, ("rtrl",), (5,), (2,), (0.01, 0.01), (1,), 4, 0,
      "full_bptt", "unused"))
  exact = lambda c, w: np.ones((4, 1))
  out = bias_variance.measure(problem, "rtrl", num_steps=5, num_particles=2, sigma=0.01,
                              num_chains=1, num_samples=4, seed=0, exact_mean_fn=exact)
  assert len(out["cost_seconds_repeats"]) == bias_variance.TIMING_REPEATS >= 3
  assert out["cost_seconds"] == pytest.approx(np.median(out["cost_seconds_repeats"]))
