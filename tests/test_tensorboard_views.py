"""What a person sees of a tuning run: its progress lines and its TensorBoard views."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

import metaopt
import unrolled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(logdir):
  acc = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def info(step, num_skipped, chains):
  """One outer step's tuner info with the given per-chain hypergradients (chains x 1)."""
  chains = np.asarray(chains, np.float64).reshape(-1, 1)
  return {"loss": 1.0, "finite": True, "num_skipped": num_skipped, "step": step,
          "theta": np.zeros(1), "grad": chains.mean(0), "chain_grads": chains,
          "chain_variance": chains.var(0, ddof=1) if len(chains) > 1 else np.zeros(1),
          "grad_ema_mean": np.ones(1), "grad_ema_var": np.zeros(1)}


def test_snr_stays_readable_for_a_noiseless_hypergradient():
  assert metaopt.tensorboard.snr(2.0, 0.0) == pytest.approx(1000.0)  # not 2 / sqrt(1e-30) = 2e15
  assert metaopt.tensorboard.snr(-3.0, 9.0) == pytest.approx(1.0, rel=1e-5)
  assert metaopt.tensorboard.snr(1.0, 4.0, num_samples=4) == pytest.approx(1.0, rel=1e-5)
  assert metaopt.tensorboard.snr(0.0, 0.0) == 0.0


@pytest.mark.parametrize("num_chains", [1, 2, 4])
def test_each_horizons_summed_hypergradient_and_its_noise_across_chains(num_chains, tmp_path):
  """Horizons of 3 windows: one point per horizon (its last outer step) of the sum over its
  windows; mean ∓ one standard error of the chains' mean from 2 chains, the SNR from 4; a
  horizon with a non-finite step, or entered in its middle (a resume), is left out."""
  rng = np.random.default_rng(0)
  chains = rng.normal(1.0, 0.5, size=(12, num_chains))  # outer steps 3..14 of the run
  with metaopt.tensorboard.SummaryWriter(str(tmp_path)) as writer:
    noise = metaopt.tensorboard.HorizonNoise(writer, ["lr"], num_chains=num_chains, windows=3)
    for step in range(3, 15):  # resumed at step 3: the horizon of steps 1-3 is incomplete
      step_info = info(step, 0, chains[step - 3])
      step_info["finite"] = step != 8  # the horizon of steps 7-9 has a non-finite step
      noise.add(step_info, step)
  acc = read_events(str(tmp_path))
  tags = set(acc.Tags()["tensors"])
  assert [e.step for e in acc.Tensors("hypergrad_horizon/mean/lr")] == [6, 12]
  value = lambda tag: [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
  sums = np.stack([chains[1:4].sum(0), chains[7:10].sum(0)])  # steps 4-6 and 10-12
  np.testing.assert_allclose(value("hypergrad_horizon/mean/lr"), sums.mean(1), rtol=1e-6)  # TensorBoard keeps float32
  assert ("hypergrad_horizon/lower/lr" in tags) == (num_chains > 1)
  assert ("hypergrad_horizon/snr/lr" in tags) == (num_chains >= 4)
  if num_chains > 1:
    se = sums.std(1, ddof=1) / np.sqrt(num_chains)
    np.testing.assert_allclose(value("hypergrad_horizon/upper/lr"), sums.mean(1) + se, rtol=1e-6)  # TensorBoard keeps float32
  if num_chains >= 4:
    mean = sums.mean(1)  # snr floors the variance at 1e-6 mean² (an exact estimate reads 1000)
    np.testing.assert_allclose(value("hypergrad_horizon/snr/lr"),
                               np.abs(mean) / np.sqrt(se**2 + 1e-6 * mean**2), rtol=1e-6)
    description = acc.summary_metadata["hypergrad_horizon/snr/lr"].summary_description
    assert "standard error of the mean over 4 chains" in description


def test_per_window_views_are_the_estimate_and_the_chains_histogram(tmp_path):
  with metaopt.tensorboard.SummaryWriter(str(tmp_path)) as writer:
    for step in range(1, 4):
      metaopt.tensorboard.log_tuner_info(writer, info(step, 0, [1.0, 2.0]), step, names=["lr"],
                                         window=5)
  acc = read_events(str(tmp_path))
  tags = set(acc.Tags()["tensors"])
  assert {"hypergrad/lr", "hypergrad_chains/samples/lr", "loss/per_inner_step",
          "diagnostics/finite", "diagnostics/num_skipped"} <= tags
  assert not {t for t in tags if t.startswith(("hypergrad_time/", "loss/window_sum", "tuner/f"))}
  assert [float(tensor_util.make_ndarray(e.tensor_proto))
          for e in acc.Tensors("loss/per_inner_step")] == pytest.approx([0.2] * 3)


def test_theta_coordinates_are_named_as_their_hyperparameters():
  theta = {"learning_rate": np.zeros((2, 3)), "momentum": np.zeros(())}
  assert metaopt.tensorboard.coordinate_names(theta, knots={"learning_rate": 3}) == [
      "learning_rate/knot_0/0", "learning_rate/knot_1/0", "learning_rate/knot_2/0",
      "learning_rate/knot_0/1", "learning_rate/knot_1/1", "learning_rate/knot_2/1", "momentum"]
  curve = np.stack([np.geomspace(0.1, 0.001, 21), np.full(21, 0.05)])
  labels, steps, points = metaopt.tensorboard.schedule_points(
      {"learning_rate_curve": curve, "learning_rate_knots": np.array([0.0, 10.0, 20.0])}
  )["learning_rate"]
  assert labels == ["knot_0", "knot_1", "knot_2"] and steps.tolist() == [0, 10, 20]
  np.testing.assert_allclose(points, [[0.1, 0.01, 0.001], [0.05, 0.05, 0.05]], rtol=1e-6)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  """A short front-door run with a 3-knot schedule per layer and 4 chains, and what it printed."""
  problem = unrolled.get("digits_mlp", width=8, depth=1, horizon=20, schedule="piecewise_linear",
                         num_knots=3, per_layer=True)
  logdir = str(tmp_path_factory.mktemp("run"))
  import contextlib, io  # pylint: disable=g-import-not-at-top,multiple-imports
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    unrolled.tune_problem(problem, estimator="rtrl", num_steps=5, num_chains=4, outer_steps=8,
                          meta_optimizer=metaopt.meta_optimizer("adam", 0.01),
                          output=metaopt.tuning.RunOutput(logdir, checkpoint_every=4, log_every=2))
  return logdir, out.getvalue()


def test_progress_lines_say_what_compiles_and_show_the_whole_schedule(tuned):
  logdir, text = tuned
  lines = text.splitlines()
  assert lines.index("learning_rate: a schedule, shown at its 3 knots (inner steps 0, 10, 19)") \
      < [i for i, l in enumerate(lines) if l.startswith("compiling the outer step")][0]
  assert re.search(r"^compiled in \d+\.\d s$", text, re.M)
  progress = [l for l in lines if l.startswith("step ")]
  assert [l.split()[1] for l in progress] == ["2/8", "4/8", "6/8", "8/8"]  # one line per update
  for line in progress:  # 2 layers x 3 knots, in natural units
    values = re.search(r"learning_rate \[([^\]]*)\]", line).group(1).split()
    assert len(values) == 6 and all(0 < float(v) < 1 for v in values)
    # the ETA is the post-compile time per step times the steps left
    ms, eta = re.search(r"\| ([\d.e+]+) ms/step, ETA (\d+)s$", line).groups()
    left = 8 - int(line.split()[1].split("/")[0])
    assert abs(int(eta) - float(ms) * left / 1e3) <= 0.5 + 1e-9
  assert "learning-rate schedule at its knots, inner steps [0, 10, 19]:" in text
  assert lines[-2:] == [f"summary: {os.path.join(logdir, 'summary.json')}",
                        "TensorBoard: tensorboard --samples_per_plugin=images=100 --logdir "
                        f"{logdir}"]


def test_tensorboard_names_each_coordinate_one_way_and_lays_out_its_noise(tuned):
  logdir, _ = tuned
  acc = read_events(logdir)
  tags = set(acc.Tags()["tensors"])
  hypergrad = {t[len("hypergrad/"):] for t in tags if t.startswith("hypergrad/")}
  assert hypergrad == {f"learning_rate/knot_{k}/{g}" for k in range(3) for g in range(2)}
  # the schedule's values at theta's knots carry the very names of theta's coordinates
  assert {f"hyperparameters/{c}" for c in hypergrad} <= tags
  assert "hyperparameters/learning_rate" not in tags  # not the value at step 0 alone
  untuned = read_events(os.path.join(logdir, "untuned"))
  for run in (acc, untuned):  # one tag in two runs: TensorBoard draws a colour each
    assert [e.step for e in run.Tensors("schedule_curve/learning_rate")] == list(range(20))
  assert {e.step for e in acc.Tensors("hypergrad_chains/samples/learning_rate/knot_0/0")} \
      == set(range(1, 9))
  # the custom-scalars layout: every tag a chart names is written
  layout = layout_pb2.Layout.FromString(
      acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
  titles = [c.title for c in layout.category]
  assert titles[0] == "did tuning help? (one fresh horizon, same keys)"
  assert titles[1:7] == [f"hypergradient {c}" for c in metaopt.tensorboard.coordinate_names(
      {"learning_rate": np.zeros((2, 3))}, knots={"learning_rate": 3})]
  assert titles[7:] == ["schedule learning_rate", "loss and diagnostics"]
  tags |= set(untuned.Tags()["tensors"])
  for category in layout.category:
    for chart in category.chart:
      for series in chart.margin.series:
        assert {series.value, series.lower, series.upper} <= tags, chart.title
      for pattern in chart.multiline.tag:
        assert any(re.search(pattern, t) for t in tags), (chart.title, pattern)
  # the hparams session holds the options rtrl takes, not num_particles or sigma
  session = acc.Tensors("_hparams_/session_start_info")[0].tensor_proto
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  start = plugin_data_pb2.HParamsPluginData.FromString(
      acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content).session_start_info
  del session
  assert {"estimator", "num_steps", "num_chains"} <= set(start.hparams)
  assert not {"num_particles", "sigma", "theta_init"} & set(start.hparams)


def test_help_is_no_error_and_an_error_is_one_line_with_a_hint():
  env = {**os.environ, "JAX_PLATFORMS": ""}
  run = lambda *args: subprocess.run([sys.executable, "-m", "launch.tune", *args], cwd=ROOT,
                                     capture_output=True, text=True, env=env, timeout=120)
  out = run("--help")
  assert out.returncode == 0 and "--num_chains" in out.stdout
  out = run("--problem=digits_mlp", "--num_steps=7")  # builds the problem: JAX starts
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()  # no absl help, no JAX note on a missing TPU
  assert len(lines) == 1 and lines[0].startswith("launch.tune: error: --num_steps=7 must divide")
  assert lines[0].endswith("(--helpshort lists the flags)")
