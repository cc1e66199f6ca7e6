"""A resumed run's TensorBoard curves hold each step once, with the resumed run's values, in the
readers TensorBoard uses today: the Rust data server (``tensorboard``'s default), the Python
event multiplexer behind ``--load_fast=false``, and the legacy ``EventAccumulator``."""

import io
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_ingester
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer import record_writer
from tensorboard.util import tensor_util

import metaopt
from metaopt._src.tensorboard import summary
from metaopt._src.tensorboard import writer as writer_lib

# The scenario of launch.tune: checkpoints every 10 outer steps, killed after step 15 had been
# logged, resumed from the checkpoint at step 10 (resume_step 11), finishing at step 20.
CHECKPOINT, KILLED_AFTER, LAST = 10, 15, 20
EVAL_EVERY = 5
# Runs (subfolders of one logdir), each: (steps the first run logged, resume_step or None when
# the resumed writer starts as a new run, last step the resumed run logged).
RUNS = {
    "resumed": (KILLED_AFTER, CHECKPOINT + 1, LAST),
    # Killed again soon after the resume: the steps past 12 of the first run are abandoned.
    "resumed_then_killed": (KILLED_AFTER, CHECKPOINT + 1, 12),
    # Killed before the first checkpoint: launch.tune restarts from step 0 as a new run.
    "killed_before_checkpoint": (7, None, LAST),
}
TAGS = ("loss", "eval/loss")


def first_value(step):
  return float(step)


def resumed_value(step):
  return 100.0 + step


def log_steps(writer, steps, value):
  for s in steps:
    writer.scalar("loss", value(s), s)
    writer.histogram("hist", [value(s)], s)
    if s % EVAL_EVERY == 0:
      writer.scalar("eval/loss", value(s), s)


def write_first_run(logdir, killed_after):
  # What a SIGKILL leaves: everything flushed (closing adds nothing to the file).
  with metaopt.tensorboard.SummaryWriter(logdir) as writer:
    log_steps(writer, range(1, killed_after + 1), first_value)


def write_resumed_run(logdir, resume_step, last):
  with metaopt.tensorboard.SummaryWriter(logdir, resume_step=resume_step) as writer:
    log_steps(writer, range(resume_step or 1, last + 1), resumed_value)


def expected(run):
  """{tag: [(step, value)]} that TensorBoard should show for a run after its resume."""
  _, resume_step, last = RUNS[run]
  resume_step = resume_step or 1
  steps = range(1, last + 1)
  value = lambda s: first_value(s) if s < resume_step else resumed_value(s)
  return {"loss": [(s, value(s)) for s in steps],
          "eval/loss": [(s, value(s)) for s in steps if s % EVAL_EVERY == 0],
          "hist": [(s, None) for s in steps]}  # histograms: their steps only


def check(run, shown, stale_ok=False):
  """Asserts that a reader shows ``run`` as it should be after its resume.

  With ``stale_ok``, points of the killed run after the resumed run's last step may remain (a
  live Rust data server keeps them until the resumed run writes their tag again or it restarts).
  """
  want, (killed_after, _, last) = expected(run), RUNS[run]
  for tag, points in shown.items():
    steps = [step for step, _ in points]
    assert len(steps) == len(set(steps)), f"{run} {tag}: steps shown twice: {steps}"
    if stale_ok:
      stale = [(step, value) for step, value in points if step > last]
      assert all(step <= killed_after and value in (None, first_value(step))
                 for step, value in stale), (run, tag, stale)
      points = [p for p in points if p not in stale]
    assert sorted(points) == want[tag], f"{run} {tag}"


def make_logdir(tmp_path):
  logdir = str(tmp_path / "logs")
  for run, (killed_after, _, _) in RUNS.items():
    write_first_run(os.path.join(logdir, run), killed_after)
  time.sleep(1.1)  # event file names hold the time in seconds: the resumed run's sorts last
  return logdir


def resume_all(logdir):
  for run, (_, resume_step, last) in RUNS.items():
    write_resumed_run(os.path.join(logdir, run), resume_step, last)


# Readers: each returns {run: {"loss": [(step, value)], "eval/loss": [...],
#                              "hist": [(step, None)]}}.

class Multiplexer:
  """The Python data path of ``tensorboard --load_fast=false``, configured as the server does."""

  def __init__(self, logdir):
    self._multiplexer = plugin_event_multiplexer.EventMultiplexer(
        size_guidance=data_ingester.DEFAULT_SIZE_GUIDANCE,
        tensor_size_guidance=data_ingester.DEFAULT_TENSOR_SIZE_GUIDANCE,
        purge_orphaned_data=True)
    self._multiplexer.AddRunsFromDirectory(logdir)
    self._provider = data_provider.MultiplexerDataProvider(self._multiplexer, logdir)

  def read(self, runs=tuple(RUNS)):
    self._multiplexer.Reload()
    ctx = context.RequestContext()
    scalars = self._provider.read_scalars(ctx, experiment_id="", plugin_name="scalars",
                                          downsample=10**6)
    tensors = self._provider.read_tensors(ctx, experiment_id="", plugin_name="histograms",
                                          downsample=10**6)
    return {run: {**{tag: [(p.step, p.value) for p in scalars[run][tag]] for tag in TAGS},
                  "hist": [(p.step, None) for p in tensors[run]["hist"]]} for run in runs}


def read_event_accumulator(logdir):
  """The legacy reader the launch.tune tests use: it never purges tensor summaries."""
  shown = {}
  for run in RUNS:
    acc = event_accumulator.EventAccumulator(os.path.join(logdir, run),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    shown[run] = {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                        for e in acc.Tensors(tag)] for tag in TAGS}
    shown[run]["hist"] = [(e.step, None) for e in acc.Tensors("hist")]
  return shown


class Server:
  """``tensorboard --logdir`` on loopback, read through the HTTP API its web page uses."""

  def __init__(self, logdir, load_fast):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self._port = s.getsockname()[1]
    self._proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", "--host=127.0.0.1",
         f"--port={self._port}", f"--load_fast={load_fast}", "--reload_interval=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
      self.environment = self._get_when_up("/data/environment")
    except BaseException:
      self.close()
      raise

  def _get(self, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{self._port}{path}", timeout=10) as r:
      return json.load(r)

  def _get_when_up(self, path, timeout=60):
    deadline = time.time() + timeout
    while True:
      if self._proc.poll() is not None:
        raise AssertionError(f"tensorboard exited: {self._proc.stdout.read()[-3000:]}")
      try:
        return self._get(path)
      except OSError:
        if time.time() > deadline:
          raise
        time.sleep(0.2)

  def read(self):
    def series(plugin, run, tag):
      query = urllib.parse.urlencode({"run": run, "tag": tag})
      return self._get(f"/data/plugin/{plugin}/{plugin}?{query}")
    return {run: {**{tag: [(p[1], p[2]) for p in series("scalars", run, tag)] for tag in TAGS},
                  "hist": [(p[1], None) for p in series("histograms", run, "hist")]}
            for run in RUNS}

  def close(self):
    if self._proc.poll() is None:
      self._proc.terminate()
    self._proc.communicate(timeout=30)


def read_until(reader, done, timeout=30):
  """The reader's view once ``done(view)`` holds and two reads in a row agree (servers load in the
  background)."""
  deadline, last = time.time() + timeout, None
  while True:
    try:
      view = reader.read()
    except (KeyError, OSError):  # runs or tags not loaded yet
      view = None
    if view is not None and view == last and done(view):
      return view
    if time.time() > deadline:
      raise AssertionError(f"the reader did not settle: {view}")
    last = view
    time.sleep(0.5)


def loaded(last_steps):
  """done() for read_until: every run's loss curve reaches its last step."""
  return lambda view: all(view[run]["loss"] and view[run]["loss"][-1][0] == step
                          for run, step in last_steps.items())


FIRST_RUN_LOADED = loaded({run: killed_after for run, (killed_after, _, _) in RUNS.items()})
RESUME_LOADED = loaded({run: last for run, (_, _, last) in RUNS.items()})


def test_python_multiplexer_shows_each_step_once(tmp_path):
  logdir = make_logdir(tmp_path)
  resume_all(logdir)
  shown = Multiplexer(logdir).read()
  for run in RUNS:
    check(run, shown[run])


def test_python_multiplexer_reading_during_the_resume_shows_each_step_once(tmp_path):
  # A TensorBoard left open: it holds the killed run's steps 11-15 when the resume starts.
  logdir = make_logdir(tmp_path)
  multiplexer = Multiplexer(logdir)
  assert FIRST_RUN_LOADED(multiplexer.read())
  resume_all(logdir)
  shown = multiplexer.read()
  for run in RUNS:
    check(run, shown[run])


def test_legacy_event_accumulator_shows_each_step_once(tmp_path):
  logdir = make_logdir(tmp_path)
  resume_all(logdir)
  shown = read_event_accumulator(logdir)
  for run in ("resumed", "resumed_then_killed"):  # a new run in an old folder: no resume_step
    check(run, shown[run])


@pytest.mark.slow  # two tensorboard processes: 6-7 s on 2 idle cores, over 10 s when busy
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_tensorboard_server_shows_each_step_once(load_fast, tmp_path):
  """The real server, opened before the resume (it then holds the killed run's steps) and
  restarted after it."""
  logdir = make_logdir(tmp_path)
  server = Server(logdir, load_fast)
  try:
    provider = server.environment["debug"]["data_provider"]
    # --load_fast=true exits rather than fall back, so this is the Rust data server.
    assert provider.startswith("GrpcDataProvider" if load_fast == "true" else "Multiplexer"), \
        provider
    read_until(server, FIRST_RUN_LOADED)
    resume_all(logdir)
    shown = read_until(server, RESUME_LOADED)
  finally:
    server.close()
  for run in RUNS:
    # The Rust data server ignores SessionLog.START and never rereads a file it has read.
    check(run, shown[run], stale_ok=load_fast == "true")
  server = Server(logdir, load_fast)
  try:
    shown = read_until(server, RESUME_LOADED)
  finally:
    server.close()
  for run in RUNS:
    check(run, shown[run])


# The rewrite of the event files on resume.

def event_files(logdir):
  return sorted(f for f in os.listdir(logdir) if "tfevents" in f)


def test_resume_keeps_earlier_steps_and_the_file_mode(tmp_path):
  logdir = str(tmp_path)
  write_first_run(logdir, KILLED_AFTER)
  (name,) = event_files(logdir)
  os.chmod(os.path.join(logdir, name), 0o640)
  time.sleep(1.1)
  write_resumed_run(logdir, CHECKPOINT + 1, LAST)
  assert event_files(logdir)[0] == name  # replaced under its own name: readers keep its order
  assert stat.S_IMODE(os.stat(os.path.join(logdir, name)).st_mode) == 0o640
  assert sorted(os.listdir(logdir)) == event_files(logdir)  # no temporary file left
  acc = event_accumulator.EventAccumulator(os.path.join(logdir, name))
  acc.Reload()
  assert [e.step for e in acc.Tensors("loss")] == list(range(1, CHECKPOINT + 1))


def test_a_killed_rewrite_leaves_the_file_whole(tmp_path, monkeypatch):
  logdir = str(tmp_path)
  write_first_run(logdir, KILLED_AFTER)
  (name,) = event_files(logdir)
  before = open(os.path.join(logdir, name), "rb").read()

  def killed(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(writer_lib.os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    metaopt.tensorboard.SummaryWriter(logdir, resume_step=CHECKPOINT + 1)
  assert os.listdir(logdir) == [name]
  assert open(os.path.join(logdir, name), "rb").read() == before
  monkeypatch.undo()
  # A copy left by a SIGKILL (no cleanup ran) is removed by the next resume.
  stale = os.path.join(
      logdir, writer_lib._TMP_PREFIX + "abc" + writer_lib._TMP_SUFFIX)  # pylint: disable=protected-access
  with open(stale, "wb") as f:
    f.write(before[:100])
  time.sleep(1.1)
  write_resumed_run(logdir, CHECKPOINT + 1, LAST)
  assert not os.path.exists(stale)
  check("resumed", Multiplexer(logdir).read(runs=["."])["."])


def test_links_are_neither_read_nor_written_through(tmp_path):
  logdir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
  write_first_run(str(elsewhere), KILLED_AFTER)
  (name,) = event_files(str(elsewhere))
  target = elsewhere / name
  before = target.read_bytes()
  logdir.mkdir()
  (logdir / "events.out.tfevents.0.planted").symlink_to(target)
  write_resumed_run(str(logdir), CHECKPOINT + 1, LAST)
  assert (logdir / "events.out.tfevents.0.planted").is_symlink()
  assert target.read_bytes() == before


def record(step):
  """One event of ``step`` as it lies in an event file."""
  buffer = io.BytesIO()
  record_writer.RecordWriter(buffer).write(event_pb2.Event(step=step).SerializeToString())
  return buffer.getvalue()


def test_damaged_records_truncated_tail_dropped_corruption_kept(tmp_path):
  logdir = str(tmp_path)
  write_first_run(logdir, KILLED_AFTER)
  (name,) = event_files(logdir)
  path = os.path.join(logdir, name)
  data = open(path, "rb").read()
  # A kill in the middle of writing a record: its first bytes only.
  with open(path, "ab") as f:
    f.write(record(KILLED_AFTER + 1)[:-3])
  writer_lib._rewrite_event_file(path, CHECKPOINT + 1)  # pylint: disable=protected-access
  kept = open(path, "rb").read()
  assert len(kept) < len(data)
  assert kept == data[:len(kept)]  # whole records of the earlier steps, unchanged
  # A record whose header fails its checksum: no reader gets past it; it and what follows stay.
  damaged_tail = b"\xff" * 12 + data[-40:]
  with open(path, "wb") as f:
    f.write(kept + record(CHECKPOINT + 2) + damaged_tail)
  writer_lib._rewrite_event_file(path, CHECKPOINT + 1)  # pylint: disable=protected-access
  assert open(path, "rb").read() == kept + damaged_tail


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_resume_step_is_refused(bad, tmp_path):
  with pytest.raises(ValueError, match="resume_step"):
    metaopt.tensorboard.SummaryWriter(str(tmp_path), resume_step=bad)
  assert os.listdir(tmp_path) == []


def test_numpy_resume_step_is_accepted(tmp_path):
  write_first_run(str(tmp_path), KILLED_AFTER)
  time.sleep(1.1)
  metaopt.tensorboard.SummaryWriter(str(tmp_path), resume_step=np.int64(CHECKPOINT + 1)).close()
  assert len(event_files(str(tmp_path))) == 2


def test_values_the_killed_run_logged_below_the_resume_step_are_written_once(tmp_path):
  # Killed after its last checkpoint (step 20) and after logging its final metrics and hparams
  # session: the rerun resumes at step 21 and logs them again.
  logdir = str(tmp_path)
  with metaopt.tensorboard.SummaryWriter(logdir) as writer:
    log_steps(writer, range(1, LAST + 1), first_value)
    writer.hparams({"lr": 0.1}, {"final/loss": 1.0}, LAST)
  time.sleep(1.1)
  with metaopt.tensorboard.SummaryWriter(logdir, resume_step=LAST + 1) as writer:
    writer.hparams({"lr": 0.1}, {"final/loss": 1.0}, LAST)
    writer.scalar("final/other", 2.0, LAST)  # not logged before: written
  multiplexer = plugin_event_multiplexer.EventMultiplexer(purge_orphaned_data=True)
  multiplexer.AddRunsFromDirectory(logdir)
  multiplexer.Reload()
  for tag, steps in [("final/loss", [LAST]), ("final/other", [LAST]),
                     ("_hparams_/session_start_info", [0]), ("_hparams_/experiment", [0])]:
    assert [e.step for e in multiplexer.Tensors(".", tag)] == steps, tag
