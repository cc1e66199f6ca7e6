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
  proc = serve([os.path.join(BIN, "tensorboard"), "--logdir", logdir, "--host", "127.0.0.1",
                "--port", str(port)], f"{base}/data/plugins_listing", tmp_path / "tb.log")
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


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (chromium, chromium-browser or "
                    "google-chrome) on PATH; .ci/run installs Debian's chromium")
def test_tensorboard_serves_the_hypergradient_noise_schedule_and_hparams(run_and_board):
  base, tmp_path = run_and_board
  knot = "learning_rate/knot_1"
  tags = wait_for(lambda: get(f"{base}/data/plugin/scalars/tags").get(".", {}), "scalars")
  for tag in (f"hypergrad_time/mean/{knot}", f"hypergrad_time/variance/{knot}",
              f"hypergrad_time/snr/{knot}", f"hypergrad_chains/snr/{knot}",
              f"hyperparameters/{knot}", "schedule/learning_rate/tuned"):
    assert tag in tags, tag
  snr = get(f"{base}/data/plugin/scalars/scalars?run=.&tag=hypergrad_time/snr/{knot}")
  assert [p[1] for p in snr] == [10, 11, 12] and all(0 <= p[2] <= 1000 for p in snr)
  curve = get(f"{base}/data/plugin/scalars/scalars?run=.&tag=schedule/learning_rate/tuned")
  assert [p[1] for p in curve] == list(range(20))
  histograms = get(f"{base}/data/plugin/histograms/tags")["."]
  assert f"hypergrad_chains/samples/{knot}" in histograms
  hist = get(f"{base}/data/plugin/histograms/histograms?run=.&tag=hypergrad_chains/samples/{knot}")
  assert len(hist) == 12
  images = get(f"{base}/data/plugin/images/tags")["."]
  assert "schedule/learning_rate" in images
  shown = get(f"{base}/data/plugin/images/images?run=.&tag=schedule/learning_rate&sample=0")
  assert [im["step"] for im in shown] == [1, 4, 8, 12]
  layout = get(f"{base}/data/plugin/custom_scalars/layout")
  assert [c["title"] for c in layout["category"]] == [
      f"hypergradient learning_rate/knot_{k}" for k in range(3)] + ["schedule learning_rate"]
  experiment = get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
  assert {h["name"] for h in experiment["hparamInfos"]} >= {"estimator", "num_chains", "meta_lr"}
  groups = get(f"{base}/data/plugin/hparams/session_groups", {
      "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
      "colParams": [], "startIndex": 0, "sliceSize": 10})
  assert groups["totalSize"] == 1
  # What a person sees: the time-series page, rendered by a real browser, is not blank.
  png = tmp_path / "timeseries.png"
  subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-sync",
                  "--disable-component-update", f"--user-data-dir={tmp_path / 'chromium'}",
                  "--window-size=1400,1000", "--virtual-time-budget=20000",
                  f"--screenshot={png}", f"{base}/#timeseries"],
                 capture_output=True, timeout=120, check=False)
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  pixels = plt.imread(str(png))[..., :3]
  assert pixels.shape[:2] == (1000, 1400)
  colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
  assert len(colours) > 200 and pixels.std() > 0.05, (len(colours), pixels.std())


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
