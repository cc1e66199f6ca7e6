"""python -m launch.tune end to end: every estimator, TensorBoard read back, flag errors,
SIGKILL and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator


pytestmark = pytest.mark.slow  # every test here starts launch.tune in a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_IB = ["--problem=influence_balancing", "--problem_option=horizon=20", "--num_steps=5",
           "--outer_steps=8", "--checkpoint_every=4", "--meta_optimizer=sgd", "--meta_lr=1e-4"]
TINY_DIGITS = ["--problem=digits_mlp", "--problem_option=width=8", "--problem_option=depth=1",
               "--problem_option=horizon=20", "--problem_option=schedule='piecewise_linear'",
               "--problem_option=num_knots=3", "--num_steps=5", "--meta_lr=0.01"]


def tune(*args, timeout=300, log_compiles=False):
  env = {**os.environ, "JAX_LOG_COMPILES": "1"} if log_compiles else None
  return subprocess.run([sys.executable, "-m", "launch.tune", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def compiled(stderr):
  """Names of the functions JAX compiled, one per compilation (JAX_LOG_COMPILES=1 logs them)."""
  return re.findall(r"Compiling jit\((\S+?)\) with global shapes", stderr)


def read_events(logdir):
  acc = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def test_a_run_end_to_end(tmp_path):
  """One run through the shell; every estimator's run and tags, in-process: test_tune_api.py."""
  logdir = str(tmp_path / "run")
  out = tune(*TINY_IB, "--estimator=uoro", f"--logdir={logdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 8/8" in out.stdout and "Influence balancing" in out.stdout
  summary = json.load(open(os.path.join(logdir, "summary.json")))
  assert summary["outer_steps"] == 8 and np.isfinite(summary["theta"]).all()
  assert set(summary["tuned"]) >= {"meta_loss_mean"}
  assert summary["config"]["problem"] == "influence_balancing"
  tags = read_events(logdir).Tags()["tensors"]
  assert {"loss/per_inner_step", "hyperparameters/theta", "hypergrad/theta", "estimator/rho0",
          "hypergrad_horizon/mean/theta", "_hparams_/session_start_info",
          "_hparams_/session_end_info"} <= set(tags)


def test_tensorboard_holds_schedule_chains_and_hparams(tmp_path):
  logdir = str(tmp_path / "run")
  out = tune(*TINY_DIGITS, "--problem_option=per_layer=True", "--estimator=uoro",
             "--num_chains=4", "--outer_steps=8", "--image_every=4", f"--logdir={logdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "learning-rate schedule at its knots" in out.stdout
  acc = read_events(logdir)
  tensors = set(acc.Tags()["tensors"])
  # per-layer schedules (2 layers x 3 knots): one knot series per layer, a line each in the image
  # theta's knots and the schedule's values there share their names (knot_<k>/<layer>)
  assert {"hyperparameters/learning_rate/knot_0/0", "hyperparameters/learning_rate/knot_1/0",
          "hyperparameters/learning_rate/knot_2/1", "hypergrad/learning_rate/knot_2/1",
          "hypergrad_horizon/lower/learning_rate/knot_0/0",
          "hypergrad_horizon/snr/learning_rate/knot_2/1",
          "hypergrad_chains/samples/learning_rate/knot_0/0", "eval/validation_loss",
          "eval/train_loss", "eval/validation_accuracy", "_hparams_/experiment",
          "_hparams_/session_start_info", "final/tuned/validation_loss",
          "final/untuned/validation_loss",
          "final/hyperparameters/learning_rate/knot_1/0"} <= tensors, sorted(tensors)
  hist = acc.Tensors("hypergrad_chains/samples/learning_rate/knot_0/0")
  assert len(hist) == 8
  assert "schedule/learning_rate" in acc.Tags()["images"]
  images = acc.Images("schedule/learning_rate")
  assert [im.step for im in images] == [1, 4, 8]
  assert images[0].encoded_image_string[:4] == b"\x89PNG"
  knot = [e.step for e in acc.Tensors("hyperparameters/learning_rate/knot_0/1")]
  assert knot == list(range(1, 9))


# Evaluation on one inner state per estimator (particle 0's): tests/test_tune_api.py.


@pytest.mark.parametrize("args, message", [
    (["--problem=mnist"], "--problem='mnist' is unknown"),
    (["--estimator=pes", "--num_particles=3"], "--num_particles must be a positive even"),
    (["--estimator=pes[num_particles=3]"],
     "--estimator='pes[num_particles=3]': num_particles must be a positive even"),
    (["--estimator=pes", "--sigma=0"], "--sigma must be a positive"),
    (["--estimator=reinforce", "--sigma=-1"], "--sigma must be a positive"),
    (["--num_steps=7"], "--num_steps=7 must divide the system's horizon=20"),
    (["--logdir=/proc/metaopt-cannot-write-here"], "is not writable"),
    (["--problem_option=widht=3"], "unknown option"),
    (["--estimator=bptt"], "estimator"),
])
def test_flag_errors_are_clear_and_early(args, message, tmp_path):
  start = time.time()
  out = tune(*TINY_IB, f"--logdir={tmp_path / 'run'}", *args, log_compiles=True)
  assert out.returncode != 0
  assert message in out.stderr, out.stderr[-2000:]
  # Building the problem may run a few eager ops; the tuner itself (whose names the resume test
  # checks) must never be compiled for a bad flag.
  assert not {"init", "run"} & set(compiled(out.stderr)), compiled(out.stderr)
  assert time.time() - start < 60


def test_logdir_of_another_configuration_is_refused(tmp_path):
  logdir = str(tmp_path / "run")
  assert tune(*TINY_IB, "--estimator=rtrl", f"--logdir={logdir}").returncode == 0
  before = open(os.path.join(logdir, "checkpoint.npz"), "rb").read()
  out = tune(*TINY_IB, "--estimator=uoro", f"--logdir={logdir}")
  assert out.returncode != 0 and "different configuration" in out.stderr
  assert "estimator: 'rtrl' there, 'uoro' now" in out.stderr
  assert open(os.path.join(logdir, "checkpoint.npz"), "rb").read() == before


def test_too_many_non_finite_steps_stop_with_a_message(tmp_path):
  out = tune("--problem=digits_mlp", "--problem_option=width=8", "--problem_option=depth=1",
             "--problem_option=horizon=20", "--problem_option=learning_rate=10000.0",
             "--num_steps=5", "--outer_steps=50", "--checkpoint_every=5", "--max_skipped=3",
             f"--logdir={tmp_path / 'run'}")
  assert out.returncode != 0
  assert "non-finite" in out.stderr and "--max_skipped=3" in out.stderr, out.stderr[-2000:]


def test_sigkill_and_resume_ends_bit_identical(tmp_path):
  args = ["--problem=digits_mlp", "--problem_option=width=8", "--problem_option=depth=1",
          "--problem_option=horizon=20", "--estimator=rtrl", "--num_steps=5",
          "--outer_steps=600", "--checkpoint_every=100", "--meta_lr=0.01", "--log_every=100"]
  reference = str(tmp_path / "reference")
  out = tune(*args, f"--logdir={reference}")
  assert out.returncode == 0, out.stderr[-3000:]

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen([sys.executable, "-m", "launch.tune", *args, f"--logdir={killed}"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoint = os.path.join(killed, "checkpoint.npz")
  deadline = time.time() + 240
  while not os.path.exists(checkpoint) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not os.path.exists(os.path.join(killed, "summary.json"))

  out = tune(*args, f"--logdir={killed}", log_compiles=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming" in out.stdout
  # Every call after the resume has the same shapes: the outer-step scan compiles once.
  names = compiled(out.stderr)
  assert names.count("init") == 0 and names.count("run") == 1, names  # restored into eval_shape
  a = json.load(open(os.path.join(reference, "summary.json")))
  b = json.load(open(os.path.join(killed, "summary.json")))
  assert a["theta"] == b["theta"]  # bit-identical on CPU
  for tag in ("loss/per_inner_step", "hypergrad/learning_rate", "hyperparameters/learning_rate"):
    events = read_events(killed).Tensors(tag)
    assert [e.step for e in events] == list(range(1, 601)), tag
    ref = read_events(reference).Tensors(tag)
    assert [e.tensor_proto.double_val for e in events] == [e.tensor_proto.double_val for e in ref]


def _outside(tmp_path):
  outside = tmp_path / "outside"
  outside.mkdir(exist_ok=True)
  for name in ("a", "b", "c", "d", "e", "f"):
    (outside / name).write_text("precious")
  return outside


def _untouched(outside):
  return all(p.read_text() == "precious" for p in outside.iterdir())


def test_links_planted_at_temporary_names_are_never_written_through(tmp_path):
  outside, logdir = _outside(tmp_path), tmp_path / "run"
  logdir.mkdir()
  for name, target in [(".write-test", "a"), ("config.json.tmp", "b"), ("summary.json.tmp", "c"),
                       (".tmp-1.npz", "d"), (".checkpoint.npz.aaaaaaaa.tmp", "e"),
                       (".summary.json.bbbbbbbb.tmp", "f")]:
    (logdir / name).symlink_to(outside / target)
  out = tune(*TINY_IB, f"--logdir={logdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  out = tune(*TINY_IB, "--outer_steps=12", f"--logdir={logdir}")  # resumes
  assert out.returncode == 0 and "resuming" in out.stdout, out.stderr[-3000:]
  assert _untouched(outside) and (logdir / ".write-test").is_symlink()


@pytest.mark.parametrize("name", ["config.json", "summary.json", "checkpoint.npz", ".lock"])
def test_a_link_at_a_file_the_run_writes_is_refused_before_compute(name, tmp_path):
  outside, logdir = _outside(tmp_path), tmp_path / "run"
  logdir.mkdir()
  (logdir / name).symlink_to(outside / "a")
  out = tune(*TINY_IB, f"--logdir={logdir}", log_compiles=True)
  assert out.returncode != 0 and "symbolic link" in out.stderr, out.stderr[-2000:]
  assert len([l for l in out.stderr.splitlines() if "symbolic link" in l]) == 1
  assert not {"init", "run"} & set(compiled(out.stderr))
  summary = logdir / "summary.json"
  assert _untouched(outside) and (summary.is_symlink() or not summary.exists())


def test_a_checkpoint_of_another_run_or_a_damaged_one_is_refused(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  assert tune(*TINY_IB, f"--logdir={a}").returncode == 0
  assert tune(*TINY_IB, "--seed=1", "--outer_steps=4", f"--logdir={b}").returncode == 0
  foreign = (a / "checkpoint.npz").read_bytes()  # same shapes, seed 0
  (b / "checkpoint.npz").write_bytes(foreign)
  out = tune(*TINY_IB, "--seed=1", f"--logdir={b}", log_compiles=True)
  assert out.returncode != 0 and "seed: 0 there, 1 now" in out.stderr, out.stderr[-2000:]
  assert not {"init", "run"} & set(compiled(out.stderr))
  (b / "checkpoint.npz").write_bytes(foreign[: len(foreign) // 2])
  out = tune(*TINY_IB, "--seed=1", f"--logdir={b}")
  assert out.returncode != 0 and "damaged" in out.stderr and "Traceback" not in out.stderr
  assert f"{b / 'checkpoint.npz'}" in out.stderr and "delete it" in out.stderr
  assert (b / "checkpoint.npz").read_bytes() == foreign[: len(foreign) // 2]


def test_a_second_process_on_a_logdir_is_refused_and_a_kill_leaves_nothing_stale(tmp_path):
  logdir = tmp_path / "run"
  args = [*TINY_IB, "--outer_steps=100000", "--checkpoint_every=1000", f"--logdir={logdir}"]
  first = subprocess.Popen([sys.executable, "-m", "launch.tune", *args], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while not (logdir / "config.json").exists() and time.time() < deadline:
      time.sleep(0.05)
    out = tune(*args)
    assert out.returncode != 0 and "in use by another process" in out.stderr, out.stderr[-2000:]
    assert str(logdir) in out.stderr
  finally:
    first.kill()
    first.wait()
  for name in (".checkpoint.npz.k3j4x_9a.tmp", ".tmp-x.npz", ".write-test"):
    (logdir / name).write_text("left by a kill")
  out = tune(*args[:-2], "--outer_steps=8", "--checkpoint_every=1000", f"--logdir={logdir}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert not [n for n in os.listdir(logdir) if n.endswith(".tmp") or n.startswith((".tmp-",
                                                                                  ".write"))]
