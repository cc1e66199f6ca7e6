"""Many processes on one study: creation races, the n_trials budget, queued trials run once, dead
workers. Trivial objectives run in small worker processes (the storage logic, not the estimators),
plus launch.study's own worker path end to end."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from studies import storage as storage_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A worker: waits for a common start time (so that the processes collide), joins the study and
# runs trials of a fast objective that logs every parameter set it runs.
WORKER = r"""
import json, os, sys, time
import optuna
from studies import storage as storage_lib
url, name, n_trials, start, log, sleep = sys.argv[1:7]
optuna.logging.set_verbosity(optuna.logging.WARNING)
time.sleep(max(0.0, float(start) - time.time()))
storage = storage_lib.make_storage(url, n_trials=int(n_trials))
study = storage_lib.open_study(storage, name, ["minimize"],
                               sampler=optuna.samplers.RandomSampler())
def objective(trial):
  x = trial.suggest_int("x", 0, 10**9)
  with open(log, "a") as f:
    f.write(json.dumps([os.getpid(), x]) + "\n")
  time.sleep(float(sleep))
  return x
if int(n_trials) > 0:
  storage_lib.run_trials(study, objective, n_trials=int(n_trials))
"""


def start_workers(url, name, n_trials, count, log, *, sleep=0.0, delay=None, stagger=0.0):
  start = time.time() + (delay if delay is not None else 0.5 + 0.3 * count)
  return [subprocess.Popen([sys.executable, "-c", WORKER, url, name, str(n_trials),
                            str(start + i * stagger), str(log), str(sleep)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(count)]


def wait_all(procs, timeout=120):
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]


def ran(log):
  with open(log) as f:
    return [json.loads(line)[1] for line in f]


def load(url, name):
  return optuna.load_study(study_name=name, storage=storage_lib.make_storage(url))


def urls(tmp_path):
  return {"journal": f"journal://{tmp_path}/study.journal",
          "sqlite": f"sqlite:///{tmp_path}/study.db"}


def test_many_processes_creating_one_sqlite_study_at_once(tmp_path):
  """Item 4: every process joins; none dies on Optuna's schema race (alembic_version)."""
  procs = start_workers(urls(tmp_path)["sqlite"], "s", 0, 4, tmp_path / "log")
  wait_all(procs)
  study = load(urls(tmp_path)["sqlite"], "s")
  assert study.trials == []


@pytest.mark.parametrize("kind", ["journal", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_every_queued_trial_runs_exactly_once_with_eight_workers(tmp_path, kind):
  """Item 6: 8 processes pop a grid of 24 queued trials; each runs once, none is added."""
  url, n = urls(tmp_path)[kind], 24
  study = storage_lib.open_study(storage_lib.make_storage(url), "grid", ["minimize"])
  for x in range(n):
    study.enqueue_trial({"x": x})
  wait_all(start_workers(url, "grid", n, 8, tmp_path / "log", sleep=0.002))
  assert sorted(ran(tmp_path / "log")) == list(range(n))  # each queued set ran exactly once
  trials = load(url, "grid").trials
  assert len(trials) == n and all(t.state.name == "COMPLETE" for t in trials)


def test_staggered_workers_stop_at_n_trials(tmp_path):
  """Item 5: workers that start at different times together finish exactly n_trials."""
  url = urls(tmp_path)["journal"]
  wait_all(start_workers(url, "s", 10, 3, tmp_path / "log", sleep=0.15, stagger=0.3))
  trials = load(url, "s").trials
  assert len(trials) == 10 and all(t.state.name == "COMPLETE" for t in trials)
  assert len(ran(tmp_path / "log")) == 10


def test_a_dead_journal_workers_trial_is_failed_and_retried(tmp_path):
  """Journal storages have no heartbeats: a trial of a process of this host that no longer exists
  is failed by the next worker and retried with the same parameters."""
  url = urls(tmp_path)["journal"]
  victim = start_workers(url, "s", 2, 1, tmp_path / "log", sleep=600, delay=0)[0]
  deadline = time.time() + 60
  while not (os.path.exists(tmp_path / "log") and ran(tmp_path / "log")):
    assert time.time() < deadline and victim.poll() is None, victim.communicate()
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  wait_all(start_workers(url, "s", 2, 1, tmp_path / "log", delay=0))
  trials = load(url, "s").trials
  states = [t.state.name for t in trials]
  assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2, states
  killed = trials[states.index("FAIL")]
  retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
  assert len(retries) == 1 and retries[0].params == killed.params


def _children(pid):
  try:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
      return [int(c) for c in f.read().split()]
  except OSError:
    return []


@pytest.mark.slow
def test_launch_study_reports_a_killed_worker_and_exits_non_zero(tmp_path):
  """Item 7, through launch.study's own worker path: SIGKILL one of two workers mid-trial."""
  out = tmp_path / "study"
  args = ["--study=bias_variance", "--problem=digits_mlp", "--problem_option=width=8",
          "--problem_option=depth=1", "--problem_option=horizon=20", "--estimators=rtrl,tbptt",
          "--num_steps=5", "--num_chains=1", "--num_samples=256", "--n_trials=4",
          "--n_workers=2", "--study_name=k", f"--output_dir={out}", "--report=false"]
  parent = subprocess.Popen([sys.executable, "-m", "launch.study", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  url = f"journal://{out}/study.journal"
  deadline, victim = time.time() + 240, None
  while time.time() < deadline and parent.poll() is None and victim is None:
    workers = _children(parent.pid)
    try:
      study = optuna.load_study(study_name="k", storage=storage_lib.make_storage(url))
      running = [t for t in study.trials if t.state.name == "RUNNING" and t.params]
    except (KeyError, FileNotFoundError, OSError):
      running = []
    for t in running:
      pid = t.system_attrs.get(storage_lib.OWNER_ATTR, {}).get("pid")
      if pid in workers:
        victim = pid
        break
    time.sleep(0.1)
  assert victim, "no worker was seen running a trial"
  os.kill(victim, signal.SIGKILL)
  _, err = parent.communicate(timeout=300)
  assert parent.returncode != 0
  assert f"(pid {victim}) was killed by signal 9" in err, err[-2000:]
  assert "rerun the same command" in err
  # The rerun retries the dead worker's trial and finishes the study.
  rerun = subprocess.run([sys.executable, "-m", "launch.study", *args[:-4], "--n_workers=1",
                          "--study_name=k", f"--output_dir={out}", "--report=false"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  trials = optuna.load_study(study_name="k", storage=storage_lib.make_storage(url)).trials
  assert sum(t.state.name == "COMPLETE" for t in trials) == 4
  assert any("failed_trial" in t.system_attrs for t in trials)
