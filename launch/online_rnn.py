r"""Train a recurrent network online on a memory stream with several gradient estimators.

Here theta is the network's weights and the hidden state is the inner state:
each estimator's window gradient updates the weights while the stream runs.
Every estimator starts from the same weights and sees the same stream. Per
estimator, TensorBoard curves go to <logdir>/<estimator>/ (online loss,
evaluation accuracy and loss on a fresh stream with frozen weights); the
comparison goes to <logdir>/summary.json, <logdir>/summary.md and a plot of
accuracy against stream steps, <logdir>/accuracy.png.

Examples:
  python -m launch.online_rnn --flagfile=launch/configs/online_recall.flags
  python -m launch.online_rnn --cell=rtu_linear --task=t_maze --train_steps=20000 \
      --estimators=rtrl_elementwise,uoro,tbptt[num_steps=4]
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time

from absl import app
import launch
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt
from studies import report
import unrolled
from unrolled import online_rnn

_CELL = flags.DEFINE_enum("cell", "elstm", ["elstm", "rtu_linear", "rtu_nonlinear", "dense_tanh"],
                          "Recurrent cell.")
_TASK = flags.DEFINE_enum("task", "delayed_recall", ["delayed_recall", "t_maze"], "Stream task.")
_TASK_OPTION = flags.DEFINE_multi_string("task_option", [],
                                         "key=value option of the task, e.g. delay=20.")
_HIDDEN_SIZE = flags.DEFINE_integer("hidden_size", 32, "Recurrent units.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["rtrl_elementwise", "uoro", "tbptt[num_steps=5]", "tbptt[num_steps=25]",
                   "pes[num_steps=5]"],
    "Estimator specs; an estimator's own num_steps=... overrides --num_steps.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1, "Inner steps per window (weight update).")
# Which estimators take an option, from the table (for the flags' help).
_TAKING = {option: ", ".join(name for name, info in metaopt.ESTIMATOR_TABLE.items()
                             if option in info.takes) for option in ("num_particles", "sigma")}
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 8,
                                      f"Particles (even) of {_TAKING['num_particles']}.")
_SIGMA = flags.DEFINE_float("sigma", 0.01, f"Perturbation scale (> 0) of {_TAKING['sigma']}.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 50_000, "Inner (stream) steps per estimator.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate of the weights.")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", 1.0, "Clip each window's gradient norm.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 2_000, "Inner steps between evaluations.")
_EVAL_STEPS = flags.DEFINE_integer("eval_steps", 2_000, "Stream steps per evaluation.")
_TARGET_ACCURACY = flags.DEFINE_float("target_accuracy", 0.95,
                                      "Report the first step the evaluation reaches this.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and the stream.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Run folder (default runs/online_rnn-<cell>-<task>-<time>).")


def validate_flags():
  """Every check that needs no compute; raises app.UsageError naming the flag.

  The logdir is made (and checked writable) last: a bad flag leaves no file behind.
  """
  for flag in (_HIDDEN_SIZE, _NUM_STEPS, _TRAIN_STEPS, _EVAL_EVERY, _EVAL_STEPS):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  for flag in (_LEARNING_RATE, _MAX_GRAD_NORM):
    if not (math.isfinite(flag.value) and flag.value > 0):
      raise app.UsageError(f"--{flag.name} must be a finite number > 0, got {flag.value}")
  if not 0 <= _TARGET_ACCURACY.value <= 1:
    raise app.UsageError(f"--target_accuracy must be in [0, 1], got {_TARGET_ACCURACY.value}")
  if not 0 <= _SEED.value < 2**32:
    raise app.UsageError(f"--seed must be in [0, 2**32), got {_SEED.value}")
  if not _ESTIMATORS.value:
    raise app.UsageError("--estimators is empty")
  folders = [launch.safe_name(spec) for spec in _ESTIMATORS.value]
  if len(set(folders)) < len(folders):
    raise app.UsageError(f"--estimators {_ESTIMATORS.value} repeats an estimator (or two specs "
                         f"share a log folder: {folders})")
  online = [name for name, info in metaopt.ESTIMATOR_TABLE.items() if not info.whole_horizon]
  for spec in _ESTIMATORS.value:
    try:
      info = metaopt.estimator_info(spec)
    except ValueError as e:
      raise app.UsageError(f"--estimators: {e}") from None
    if info.whole_horizon:  # one update per (endless) horizon: never an online update
      raise app.UsageError(f"--estimators: {spec!r} is not an online estimator; choose from "
                           f"{online}")
  try:
    task_options = unrolled.parse_options(_TASK_OPTION.value)
    build = lambda: online_rnn.online_rnn(
        cell=_CELL.value, task=_TASK.value, hidden_size=_HIDDEN_SIZE.value, seed=_SEED.value,
        eval_steps=_EVAL_STEPS.value, task_options=task_options)
    # The weights' size from shapes alone: an absurd --hidden_size is refused before allocation.
    _check_bytes(metaopt.state_bytes(launch.WEIGHTS, jax.eval_shape(lambda: build().theta)),
                 "weights")
    problem = build()
  except ValueError as e:
    raise app.UsageError(f"--task_option / --cell: {e}") from None
  windows = {}
  for spec in _ESTIMATORS.value:
    own = metaopt.parse_spec(spec)[1]
    window = metaopt.window_length(spec, problem.system, _NUM_STEPS.value)
    if not isinstance(window, int) or window < 1 or _EVAL_EVERY.value % window:
      name = f"estimators: {spec!r}: num_steps" if "num_steps" in own else "num_steps"
      raise app.UsageError(f"--{name}={window!r} must be a positive int dividing "
                           f"--eval_every={_EVAL_EVERY.value}")
    try:  # builds the estimator (cheap, no compute): its own options are checked here
      estimator = metaopt.get_estimator(spec, problem.system, num_steps=_NUM_STEPS.value,
                                        num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value)
    except ValueError as e:
      # A structured estimator refuses a dense cell's system: name the flag that picks the cell.
      hint = (f" (--cell={_CELL.value} is not an element-wise cell)"
              if "ElementwiseSystem" in str(e) else "")
      flag = [o for o in metaopt.estimator_info(spec).takes
              if o not in own and re.match(rf"{o}\b", str(e))]
      raise app.UsageError(f"--{e} (of {spec!r})" if flag else
                           f"--estimators: {spec!r}: {e}{hint}") from None
    _check_bytes(metaopt.state_bytes(estimator, problem.theta), f"the state of {spec!r}")
    windows[spec] = window
  if _TRAIN_STEPS.value % _EVAL_EVERY.value:
    raise app.UsageError(f"--train_steps={_TRAIN_STEPS.value} must be a multiple of "
                         f"--eval_every={_EVAL_EVERY.value}")
  logdir = _LOGDIR.value or os.path.join(
      "runs", f"online_rnn-{_CELL.value}-{_TASK.value}-"
      f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  if os.path.exists(os.path.join(logdir, "summary.json")):
    raise app.UsageError(f"--logdir {logdir!r} already holds a finished comparison; "
                         "choose another folder")
  try:
    metaopt.make_folder(logdir)
  except OSError as e:
    raise app.UsageError(f"--logdir {logdir!r} is not writable: {e}") from None
  return problem, windows, logdir


def _check_bytes(nbytes, what):
  launch.check_bytes(nbytes, what, f"--hidden_size={_HIDDEN_SIZE.value}")


def claim_logdir(logdir):
  """Locks the logdir for this process and refuses links where files will be written."""
  try:
    claim_logdir.lock = metaopt.lock_folder(logdir)  # held until the process ends
    metaopt.remove_stale_temporaries(logdir)
    metaopt.refuse_links(logdir, ["summary.json", "summary.md", "accuracy.png"] +
                         [launch.safe_name(spec) for spec in _ESTIMATORS.value])
  except OSError as e:
    raise app.UsageError(f"--logdir: {e.strerror or e}") from None


def train(problem, spec, window, writer):
  """Online training with one estimator; returns its record for the summary."""
  est = metaopt.get_estimator(spec, problem.system, num_steps=_NUM_STEPS.value,
                              num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value)
  # Each outer step of the tuner is one window: clip_by_global_norm, then Adam, on the weights.
  t = metaopt.tuner(est, optax.adam(_LEARNING_RATE.value), max_grad_norm=_MAX_GRAD_NORM.value)
  windows_per_chunk = _EVAL_EVERY.value // window
  k_train, k_eval = jax.random.split(jax.random.key(_SEED.value))

  @jax.jit
  def chunk(state):
    state, infos = t.run(state, windows_per_chunk)
    return state, jnp.sum(infos["loss"])  # XLA drops the unread per-window infos (grads, theta)

  evaluate = jax.jit(problem.evaluate)
  state = t.init(k_train, problem.theta)
  record = {"estimator": spec, "num_steps": window, "curve": []}
  times, reached = [], None
  num_chunks = _TRAIN_STEPS.value // _EVAL_EVERY.value
  for c in range(num_chunks):
    start = time.perf_counter()
    state, loss = chunk(state)
    loss = float(loss)
    if c:  # the first call compiles
      times.append(time.perf_counter() - start)
    step = (c + 1) * _EVAL_EVERY.value
    ev = {k: float(v) for k, v in jax.device_get(evaluate(state.theta, k_eval)).items()}
    writer.scalar("online/loss_per_step", loss / _EVAL_EVERY.value, step)
    writer.scalar("eval/accuracy", ev["accuracy"], step)
    writer.scalar("eval/loss", ev["loss"], step)
    record["curve"].append([step, ev["accuracy"], ev["loss"]])
    if reached is None and ev["accuracy"] >= _TARGET_ACCURACY.value:
      reached = step
    if not np.isfinite(loss):
      record["diverged_at"] = step
      break
  record["steps_to_target"] = reached
  record["final_accuracy"] = record["curve"][-1][1]
  record["seconds_per_step"] = float(np.median(times)) / _EVAL_EVERY.value if times else None
  return record


def forward_seconds_per_step(problem):
  """The plain forward step (stream, cell, readout loss), jit-compiled scan, median of 5."""
  system = problem.system

  @jax.jit
  def run(state, theta, keys):
    return jax.lax.scan(lambda s, k: system.step(s, theta, k), state, keys)

  state = system.init(jax.random.key(0), problem.theta)
  keys = jax.random.split(jax.random.key(1), _EVAL_EVERY.value)
  jax.block_until_ready(run(state, problem.theta, keys))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(run(state, problem.theta, keys))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) / _EVAL_EVERY.value


def markdown(records, forward, problem):
  lines = [f"{problem.description}; {_TRAIN_STEPS.value} stream steps, Adam "
           f"lr {_LEARNING_RATE.value}, seed {_SEED.value}.", "",
           f"| estimator | window | final accuracy | steps to {_TARGET_ACCURACY.value:.0%} | "
           "time per step (µs) | ratio to forward step |", "|---|---|---|---|---|---|"]
  for r in records:
    sec = r["seconds_per_step"]
    lines.append(f"| {r['estimator']} | {r['num_steps']} | {r['final_accuracy']:.3f} | "
                 f"{r['steps_to_target'] or 'not reached'} | "
                 f"{'-' if sec is None else f'{sec * 1e6:.1f}'} | "
                 f"{'-' if sec is None else f'{sec / forward:.2f}'} |")
  lines.append(f"\nforward step: {forward * 1e6:.2f} µs (stream + cell + readout loss, "
               "jit-compiled scan); training times include the Adam update per window.")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  problem, windows, logdir = validate_flags()
  claim_logdir(logdir)
  print(problem.description)
  forward = forward_seconds_per_step(problem)
  records = []
  for spec, window in windows.items():
    with metaopt.SummaryWriter(os.path.join(logdir, launch.safe_name(spec))) as writer:
      record = train(problem, spec, window, writer)
    records.append(record)
    ratio = (record["seconds_per_step"] or float("nan")) / forward
    print(f"{spec:28s} final accuracy {record['final_accuracy']:.3f}, steps to "
          f"{_TARGET_ACCURACY.value:.0%}: {record['steps_to_target'] or 'not reached'}, "
          f"cost {ratio:.2f}x forward", flush=True)
  summary = {"description": problem.description, "cell": _CELL.value, "task": _TASK.value,
             "hidden_size": _HIDDEN_SIZE.value, "num_params": int(problem.num_params),
             "task_options": _TASK_OPTION.value, "train_steps": _TRAIN_STEPS.value,
             "learning_rate": _LEARNING_RATE.value, "seed": _SEED.value,
             "forward_seconds_per_step": forward, "estimators": records}
  metaopt.write_atomic(os.path.join(logdir, "summary.json"), json.dumps(summary, indent=1))
  table = markdown(records, forward, problem)
  metaopt.write_atomic(os.path.join(logdir, "summary.md"), table)
  report.online_curves(records, os.path.join(logdir, "accuracy.png"),
                       f"{problem.description} (seed {_SEED.value})",
                       target=_TARGET_ACCURACY.value)
  print("\n" + table + f"written to {logdir}/summary.json, summary.md and accuracy.png")


if __name__ == "__main__":
  launch.run(main)
