"""The logic of ``launch.online_rnn``: a recurrent network trained online with several estimators.

Every estimator starts from the same weights and sees the same stream; curves,
a summary and a plot go under ``--logdir`` (see ``launch/online_rnn.py``).
Every function takes the parsed flags as ``f``: ``absl.flags.FLAGS`` or any
object with ``launch.online_rnn``'s flag names as attributes (this module
defines no flags).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time

from absl import app
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt
from studies import paths
from studies import report
import unrolled
from unrolled import online_rnn


def validate_flags(f):
  """Every check that needs no compute; raises app.UsageError naming the flag.

  The logdir is made (and checked writable) last: a bad flag leaves no file behind.

  Returns:
    (the problem, window length by estimator, logdir).
  """
  for name in ("hidden_size", "num_steps", "train_steps", "eval_every", "eval_steps"):
    if getattr(f, name) < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}")
  for name in ("learning_rate", "max_grad_norm"):
    if not (math.isfinite(getattr(f, name)) and getattr(f, name) > 0):
      raise app.UsageError(f"--{name} must be a finite number > 0, got {getattr(f, name)}")
  if not 0 <= f.target_accuracy <= 1:
    raise app.UsageError(f"--target_accuracy must be in [0, 1], got {f.target_accuracy}")
  if not 0 <= f.seed < 2**32:
    raise app.UsageError(f"--seed must be in [0, 2**32), got {f.seed}")
  if not f.estimators:
    raise app.UsageError("--estimators is empty")
  folders = [paths.safe_name(spec) for spec in f.estimators]
  if len(set(folders)) < len(folders):
    raise app.UsageError(f"--estimators {f.estimators} repeats an estimator (or two specs "
                         f"share a log folder: {folders})")
  online = [name for name, info in metaopt.ESTIMATOR_TABLE.items() if not info.whole_horizon]
  for spec in f.estimators:
    try:
      info = metaopt.estimator_info(spec)
    except ValueError as e:
      raise app.UsageError(f"--estimators: {e}") from None
    if info.whole_horizon:  # one update per (endless) horizon: never an online update
      raise app.UsageError(f"--estimators: {spec!r} is not an online estimator; choose from "
                           f"{online}")
  try:
    task_options = unrolled.parse_options(f.task_option)
    build = lambda: online_rnn.online_rnn(
        cell=f.cell, task=f.task, hidden_size=f.hidden_size, seed=f.seed,
        eval_steps=f.eval_steps, task_options=task_options)
    # The weights' size from shapes alone: an absurd --hidden_size is refused before allocation.
    _check_bytes(f, metaopt.devices.state_bytes(paths.WEIGHTS,
                                                jax.eval_shape(lambda: build().theta)), "weights")
    problem = build()
  except ValueError as e:
    raise app.UsageError(f"--task_option / --cell: {e}") from None
  windows = {}
  for spec in f.estimators:
    own = metaopt.parse_spec(spec)[1]
    window = metaopt.horizon.window_length(spec, problem.system, f.num_steps)
    if not isinstance(window, int) or window < 1 or f.eval_every % window:
      name = f"estimators: {spec!r}: num_steps" if "num_steps" in own else "num_steps"
      raise app.UsageError(f"--{name}={window!r} must be a positive int dividing "
                           f"--eval_every={f.eval_every}")
    try:  # builds the estimator (cheap, no compute): its own options are checked here
      estimator = metaopt.get_estimator(spec, problem.system, num_steps=f.num_steps,
                                        num_particles=f.num_particles, sigma=f.sigma)
    except ValueError as e:
      # A structured estimator refuses a dense cell's system: name the flag that picks the cell.
      hint = (f" (--cell={f.cell} is not an element-wise cell)"
              if "ElementwiseSystem" in str(e) else "")
      flag = [o for o in metaopt.estimator_info(spec).takes
              if o not in own and re.match(rf"{o}\b", str(e))]
      raise app.UsageError(f"--{e} (of {spec!r})" if flag else
                           f"--estimators: {spec!r}: {e}{hint}") from None
    _check_bytes(f, metaopt.devices.state_bytes(estimator, problem.theta), f"the state of {spec!r}")
    windows[spec] = window
  if f.train_steps % f.eval_every:
    raise app.UsageError(f"--train_steps={f.train_steps} must be a multiple of "
                         f"--eval_every={f.eval_every}")
  logdir = f.logdir or os.path.join(
      "runs", f"online_rnn-{f.cell}-{f.task}-"
      f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  if os.path.exists(os.path.join(logdir, "summary.json")):
    raise app.UsageError(f"--logdir {logdir!r} already holds a finished comparison; "
                         "choose another folder")
  try:
    metaopt.files.make_folder(logdir)
  except OSError as e:
    raise app.UsageError(f"--logdir {logdir!r} is not writable: {e}") from None
  return problem, windows, logdir


def _check_bytes(f, nbytes, what):
  """Refuses what would not fit in memory, naming --hidden_size."""
  paths.check_bytes(nbytes, what, f"--hidden_size={f.hidden_size}")


def claim_logdir(f, logdir):
  """Locks the logdir for this process and refuses links where files will be written."""
  try:
    claim_logdir.lock = metaopt.files.lock_folder(logdir)  # held until the process ends
    metaopt.files.remove_stale_temporaries(logdir)
    metaopt.files.refuse_links(logdir, ["summary.json", "summary.md", "accuracy.png"] +
                         [paths.safe_name(spec) for spec in f.estimators])
  except OSError as e:
    raise app.UsageError(f"--logdir: {e.strerror or e}") from None


def train(f, problem, spec, window, writer):
  """Online training with one estimator; returns its record for the summary."""
  est = metaopt.get_estimator(spec, problem.system, num_steps=f.num_steps,
                              num_particles=f.num_particles, sigma=f.sigma)
  # Each outer step of the tuner is one window: clip_by_global_norm, then Adam, on the weights.
  t = metaopt.tuner(est, optax.adam(f.learning_rate), max_grad_norm=f.max_grad_norm)
  windows_per_chunk = f.eval_every // window
  k_train, k_eval = jax.random.split(jax.random.key(f.seed))

  @jax.jit
  def chunk(state):
    state, infos = t.run(state, windows_per_chunk)
    return state, jnp.sum(infos["loss"])  # XLA drops the unread per-window infos (grads, theta)

  evaluate = jax.jit(problem.evaluate)
  state = t.init(k_train, problem.theta)
  record = {"estimator": spec, "num_steps": window, "curve": []}
  times, reached = [], None
  num_chunks = f.train_steps // f.eval_every
  for c in range(num_chunks):
    start = time.perf_counter()
    state, loss = chunk(state)
    loss = float(loss)
    if c:  # the first call compiles
      times.append(time.perf_counter() - start)
    step = (c + 1) * f.eval_every
    ev = {k: float(v) for k, v in jax.device_get(evaluate(state.theta, k_eval)).items()}
    writer.scalar("online/loss_per_step", loss / f.eval_every, step)
    writer.scalar("eval/accuracy", ev["accuracy"], step)
    writer.scalar("eval/loss", ev["loss"], step)
    record["curve"].append([step, ev["accuracy"], ev["loss"]])
    if reached is None and ev["accuracy"] >= f.target_accuracy:
      reached = step
    if not np.isfinite(loss):
      record["diverged_at"] = step
      break
  record["steps_to_target"] = reached
  record["final_accuracy"] = record["curve"][-1][1]
  record["seconds_per_step"] = float(np.median(times)) / f.eval_every if times else None
  return record


def forward_seconds_per_step(f, problem):
  """The plain forward step (stream, cell, readout loss), jit-compiled scan, median of 5."""
  system = problem.system

  @jax.jit
  def run(state, theta, keys):
    return jax.lax.scan(lambda s, k: system.step(s, theta, k), state, keys)

  state = system.init(jax.random.key(0), problem.theta)
  keys = jax.random.split(jax.random.key(1), f.eval_every)
  jax.block_until_ready(run(state, problem.theta, keys))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(run(state, problem.theta, keys))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) / f.eval_every


def markdown(f, records, forward, problem):
  """The summary table (summary.md)."""
  lines = [f"{problem.description}; {f.train_steps} stream steps, Adam "
           f"lr {f.learning_rate}, seed {f.seed}.", "",
           f"| estimator | window | final accuracy | steps to {f.target_accuracy:.0%} | "
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


def main(f, argv):
  """Checks the flags, trains with every estimator and writes the comparison.

  ``argv`` is as absl passes it to ``main`` (the program first).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  problem, windows, logdir = validate_flags(f)
  claim_logdir(f, logdir)
  print(problem.description)
  forward = forward_seconds_per_step(f, problem)
  records = []
  for spec, window in windows.items():
    with metaopt.tensorboard.SummaryWriter(os.path.join(logdir, paths.safe_name(spec))) as writer:
      record = train(f, problem, spec, window, writer)
    records.append(record)
    ratio = (record["seconds_per_step"] or float("nan")) / forward
    print(f"{spec:28s} final accuracy {record['final_accuracy']:.3f}, steps to "
          f"{f.target_accuracy:.0%}: {record['steps_to_target'] or 'not reached'}, "
          f"cost {ratio:.2f}x forward", flush=True)
  summary = {"description": problem.description, "cell": f.cell, "task": f.task,
             "hidden_size": f.hidden_size, "num_params": int(problem.num_params),
             "task_options": f.task_option, "train_steps": f.train_steps,
             "learning_rate": f.learning_rate, "seed": f.seed,
             "forward_seconds_per_step": forward, "estimators": records}
  metaopt.files.write_atomic(os.path.join(logdir, "summary.json"), json.dumps(summary, indent=1))
  table = markdown(f, records, forward, problem)
  metaopt.files.write_atomic(os.path.join(logdir, "summary.md"), table)
  report.online_curves(records, os.path.join(logdir, "accuracy.png"),
                       f"{problem.description} (seed {f.seed})",
                       target=f.target_accuracy)
  print("\n" + table + f"written to {logdir}/summary.json, summary.md and accuracy.png")
