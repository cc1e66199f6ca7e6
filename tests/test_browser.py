"""A tuning run and a study as their users look at them: the real TensorBoard server (and a
headless Chromium on its time-series page) and optuna-dashboard, on loopback."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import optuna
import pytest

import metaopt
import unrolled

pytestmark = pytest.mark.slow
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)
BIN = os.path.dirname(sys.executable)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def get(url, data=None, timeout=10):
  request = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=timeout) as r:
    body = r.read()
  return json.loads(body) if body[:1] in (b"{", b"[") else body


def serve(cmd, ready_url, log_path, timeout=60):
  """Starts a server; returns its process once ``ready_url`` answers (or fails with its log)."""
  log = open(log_path, "wb")
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      get(ready_url, timeout=2)
      return proc
    except OSError:
      if proc.poll() is not None:
        break
      time.sleep(0.2)
  proc.kill()
  raise AssertionError(f"{cmd[0]} did not answer {ready_url}: "
                       f"{open(log_path, 'rb').read()[-2000:].decode(errors='replace')}")


@pytest.fixture
def run_and_board(tmp_path):
  problem = unrolled.get("digits_mlp", width=8, depth=1, horizon=20, schedule="piecewise_linear",
                         num_knots=3)
  logdir = str(tmp_path / "run")
  unrolled.tune_problem(problem, estimator="rtrl", num_steps=5, num_chains=4, outer_steps=12,
                        meta_optimizer=metaopt.meta_optimizer("adam", 0.01),
                        output=metaopt.tuning.RunOutput(logdir, checkpoint_every=4, log_every=4),
                        verbose=False)
  port = free_port()
  base = f"http://127.0.0.1:{port}"
  # The README's command: every image step kept (--samples_per_plugin).
  proc = serve([os.path.join(BIN, "tensorboard"), "--logdir", logdir, "--host", "127.0.0.1",
                "--port", str(port), "--samples_per_plugin=images=100"],
               f"{base}/data/plugins_listing", tmp_path / "tb.log")
  yield base, tmp_path
  proc.kill()
  proc.wait(timeout=30)


def wait_for(fn, what, timeout=60):
  """TensorBoard loads event files in the background: polls until ``fn()`` is truthy."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = fn()
    if value:
      return value
    time.sleep(0.5)
  raise AssertionError(f"TensorBoard never served {what}")


def screenshot(base, page, path, tmp_path):
  """``page`` of the TensorBoard at ``base`` as a real browser renders it: a PNG at ``path``
  (and, with METAOPT_SCREENSHOTS set, a copy there for a person to look at), checked not blank."""
  subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-sync",
                  "--disable-component-update", f"--user-data-dir={tmp_path / 'chromium'}",
                  "--window-size=1400,1000", "--virtual-time-budget=20000",
                  f"--screenshot={path}", f"{base}/#{page}"],
                 capture_output=True, timeout=120, check=False)
  if os.environ.get("METAOPT_SCREENSHOTS"):
    shutil.copy(path, os.path.join(os.environ["METAOPT_SCREENSHOTS"], os.path.basename(path)))
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  pixels = plt.imread(str(path))[..., :3]
  assert pixels.shape[:2] == (1000, 1400)
  colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
  assert len(colours) > 200 and pixels.std() > 0.05, (page, len(colours), pixels.std())


def points(base, run, tag):
  return [(p[1], p[2]) for p in get(f"{base}/data/plugin/scalars/scalars?run={run}&tag={tag}")]


@pytest.fixture
def chromium():
  """The browser binary; CI must have it (.ci/run installs Debian's chromium): there a missing
  one fails, elsewhere the screenshot tests skip."""
  if CHROMIUM is None:
    message = "no Chromium binary (chromium, chromium-browser or google-chrome) on PATH"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return CHROMIUM


@pytest.mark.usefixtures("chromium")
def test_tensorboard_answers_did_tuning_help_and_how_noisy(run_and_board):
  """The questions a researcher opens the board with: tuned against untuned over the run and at
  its end (HParams), each knot's horizon hypergradient with its noise across chains and one SNR
  definition, in charts whose titles say the axes."""
  base, tmp_path = run_and_board
  knot = "learning_rate/knot_1"
  tags = wait_for(lambda: get(f"{base}/data/plugin/scalars/tags").get("untuned", {}) and
                  get(f"{base}/data/plugin/scalars/tags"), "scalars of both runs")
  for tag in (f"hypergrad_horizon/mean/{knot}", f"hypergrad_horizon/lower/{knot}",
              f"hypergrad_horizon/upper/{knot}", f"hypergrad_horizon/snr/{knot}",
              f"hypergrad/{knot}", f"hyperparameters/{knot}", "schedule_curve/learning_rate",
              "eval/validation_loss", "loss/per_inner_step", "diagnostics/num_skipped"):
    assert tag in tags["."], tag
  assert {"eval/validation_loss", "eval/validation_accuracy",
          "schedule_curve/learning_rate"} <= set(tags["untuned"])
  # Gone: the duplicate loss, the per-window moving views and their second SNR definition.
  assert not [t for t in tags["."] if t.startswith(("hypergrad_time/", "loss/window_sum"))
              or t.startswith("hypergrad_chains/snr")]
  assert "standard error of the mean over 4 chains" in tags["."][
      f"hypergrad_horizon/snr/{knot}"]["description"]
  assert "fresh horizon" in tags["."]["eval/validation_loss"]["description"]
  # Horizons of 20 inner steps, windows of 5: one point per horizon, at outer steps 4, 8, 12.
  snr = points(base, ".", f"hypergrad_horizon/snr/{knot}")
  assert [s for s, _ in snr] == [4, 8, 12] and all(0 <= v <= 1000 for _, v in snr)
  mean, lower, upper = (dict(points(base, ".", f"hypergrad_horizon/{k}/{knot}"))
                        for k in ("mean", "lower", "upper"))
  assert all(lower[s] <= mean[s] <= upper[s] for s in mean)
  # Did tuning help: theta so far and theta0 after the same fresh horizon, at every progress line.
  tuned, untuned = (points(base, run, "eval/validation_loss") for run in (".", "untuned"))
  assert [s for s, _ in tuned] == [s for s, _ in untuned] == [4, 8, 12]
  assert len({v for _, v in untuned}) == 1
  summary = json.load(open(tmp_path / "run" / "summary.json"))
  assert tuned[-1][1] == pytest.approx(summary["tuned"]["validation_loss"], rel=1e-6)
  assert untuned[-1][1] == pytest.approx(summary["untuned"]["validation_loss"], rel=1e-6)
  curve = points(base, "untuned", "schedule_curve/learning_rate")
  assert [s for s, _ in curve] == list(range(20))
  hist = get(f"{base}/data/plugin/histograms/histograms?run=.&tag=hypergrad_chains/samples/{knot}")
  assert len(hist) == 12
  shown = get(f"{base}/data/plugin/images/images?run=.&tag=schedule/learning_rate&sample=0")
  assert [im["step"] for im in shown] == [1, 4, 8, 12]
  layout = get(f"{base}/data/plugin/custom_scalars/layout")
  assert [c["title"] for c in layout["category"]] == [
      "did tuning help? (one fresh horizon, same keys)"] + [
      f"hypergradient learning_rate/knot_{k}" for k in range(3)] + [
      "schedule learning_rate", "loss and diagnostics"]
  titles = [c["title"] for cat in layout["category"] for c in cat["chart"]]
  assert f"d loss / d log({knot}): each horizon's sum over its windows, mean of 4 chains ± 1 " \
      "standard error; x: outer step (every 4 outer steps)" in titles
  assert all("x: " in t for t in titles), titles
  experiment = get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
  assert {h["name"] for h in experiment["hparamInfos"]} >= {"estimator", "num_chains", "meta_lr"}
  metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
  assert {"final/tuned/validation_loss", "final/untuned/validation_loss",
          f"final/hyperparameters/{knot}"} <= metrics, metrics
  groups = get(f"{base}/data/plugin/hparams/session_groups", {
      "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"],
      "colParams": [], "startIndex": 0, "sliceSize": 10})
  assert groups["totalSize"] == 1
  session = groups["sessionGroups"][0]["sessions"][0]
  assert session["status"] == "STATUS_SUCCESS"
  values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
  assert values["final/untuned/validation_loss"] == pytest.approx(untuned[-1][1], rel=1e-6)
  # What a person sees: each page, rendered by a real browser, is not blank.
  for page in ("timeseries", "custom_scalars", "hparams"):
    screenshot(base, page, tmp_path / f"run_{page}.png", tmp_path)


@pytest.mark.usefixtures("chromium")
def test_a_tuning_studys_trials_sort_by_test_loss_in_hparams(tmp_path):
  """A study's board: every finished trial a session with its objective, the metrics at each
  budget, diverged, cost and its status; sortable by test loss; a learning curve per trial."""
  from studies import report  # pylint: disable=g-import-not-at-top
  study = optuna.create_study(study_name="t", storage=optuna.storages.InMemoryStorage())
  dist = {"method": optuna.distributions.CategoricalDistribution(["online:rtrl", "tpe"]),
          "seed": optuna.distributions.CategoricalDistribution([0, 1])}
  for i, (method, seed, loss) in enumerate([("online:rtrl", 0, 0.3), ("tpe", 0, 0.5),
                                            ("online:rtrl", 1, 0.2), ("tpe", 1, 0.4)]):
    at = {str(b): {"test_loss": loss * (2 if b == 1 else 1), "validation_loss": loss,
                   "test_accuracy": 1 - loss} for b in (1, 3)}
    study.add_trial(optuna.trial.create_trial(
        params={"method": method, "seed": seed}, distributions=dist, value=loss,
        user_attrs={"at_budget": at, "inner_steps": 60 + i, "run_steps": 20,
                    "curve": [[20, 1.0, 1.0, 0.5], [60, loss, loss, 1 - loss]]}))
  study.add_trial(optuna.trial.create_trial(
      params={"method": "tpe", "seed": 0}, distributions=dist,
      state=optuna.trial.TrialState.FAIL))
  board = tmp_path / "tensorboard"
  report.tensorboard_sessions(study, str(board), "tuning")
  port = free_port()
  base = f"http://127.0.0.1:{port}"
  proc = serve([os.path.join(BIN, "tensorboard"), "--logdir", str(board), "--host", "127.0.0.1",
                "--port", str(port)], f"{base}/data/plugins_listing", tmp_path / "tb.log")
  try:
    experiment = wait_for(lambda: get(f"{base}/data/plugin/hparams/experiment",
                                      {"experimentName": ""}).get("metricInfos"), "experiment")
    assert {m["name"]["tag"] for m in experiment} >= {
        "objective", "budget_1/test_loss", "budget_3/test_loss", "budget_3/test_accuracy",
        "budget_3/validation_loss", "diverged", "cost/inner_steps"}
    infos = get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})["hparamInfos"]
    method = next(h for h in infos if h["name"] == "method")
    assert sorted(method["domainDiscrete"]) == ["online:rtrl", "tpe"]
    groups = get(f"{base}/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_FAILURE"],
        "colParams": [{"metric": {"tag": "budget_3/test_loss"}, "order": "ORDER_ASC"}],
        "startIndex": 0, "sliceSize": 10})
    assert groups["totalSize"] == 5
    names = [g["name"] for g in groups["sessionGroups"]]
    assert names[:4] == ["trial_0002", "trial_0000", "trial_0003", "trial_0001"], names
    statuses = {g["name"]: g["sessions"][0]["status"] for g in groups["sessionGroups"]}
    assert statuses["trial_0004"] == "STATUS_FAILURE" and statuses["trial_0000"] == \
        "STATUS_SUCCESS"
    curve = points(base, "trial_0002", "curve/test_loss")
    assert curve == [(1, pytest.approx(0.4)), (3, pytest.approx(0.2))]
    screenshot(base, "hparams", tmp_path / "study_hparams.png", tmp_path)
  finally:
    proc.kill()
    proc.wait(timeout=30)


def test_optuna_dashboard_serves_a_study_journal(tmp_path):
  """A study in the project's default storage (a journal file), as optuna-dashboard shows it."""
  from studies import storage as storage_lib  # pylint: disable=g-import-not-at-top
  url = storage_lib.default_storage_url(str(tmp_path))
  study = optuna.create_study(study_name="s", storage=storage_lib.make_storage(url),
                              directions=["minimize", "minimize"])
  for i in range(3):
    study.add_trial(optuna.trial.create_trial(
        params={"num_steps": 5 * (i + 1)}, values=[1.0 / (i + 1), float(i)],
        distributions={"num_steps": optuna.distributions.IntDistribution(1, 20)}))
  port = free_port()
  base = f"http://127.0.0.1:{port}"
  journal = url[len("journal:///") - 1:] if url.startswith("journal:///") else url
  proc = serve([os.path.join(BIN, "optuna-dashboard"), journal, "--host", "127.0.0.1",
                "--port", str(port)], f"{base}/api/studies", tmp_path / "dashboard.log")
  try:
    studies = get(f"{base}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["s"]
    detail = get(f"{base}/api/studies/{studies[0]['study_id']}")
    assert [t["values"] for t in detail["trials"]] == [[1.0, 0.0], [0.5, 1.0], [1 / 3, 2.0]]
    assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
  finally:
    proc.kill()
    proc.wait(timeout=30)
