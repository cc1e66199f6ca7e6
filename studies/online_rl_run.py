"""The logic of ``launch.online_rl``: recurrent actor-critic agents trained online.

Every (cell, estimator) pair trains ``--seeds`` agents at once (vmapped), with
curves, checkpoints (resumed on a rerun) and a summary under ``--logdir``; see
``launch/online_rl.py``. Every function takes the parsed flags as ``f``:
``absl.flags.FLAGS`` or any object with ``launch.online_rl``'s flag names as
attributes (this module defines no flags).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from typing import Any, NamedTuple

from absl import app
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt
from studies import paths
from studies import report
import unrolled
from unrolled import online_rl


def build(f, cell, seed):
  """The agent of ``cell`` with seed ``seed``, as the flags set it up."""
  return online_rl.online_agent(
      cell=cell, env=f.env, hidden_size=f.hidden_size, seed=seed,
      num_envs=f.num_envs, gamma=f.gamma, entropy_cost=f.entropy_cost,
      value_cost=f.value_cost, env_options=unrolled.parse_options(f.env_option),
      head_hidden=f.head_hidden, encoder_size=f.encoder_size, reward_scale=f.reward_scale)


def ppo_truncation(f, spec):
  """--algorithm=ppo: None for real-time PPO (RTRL traces), else the BPTT truncation of ``spec``.

  Raises app.UsageError for an estimator PPO does not take.
  """
  try:
    name, options = metaopt.parse_spec(spec)
  except ValueError as e:
    raise app.UsageError(f"--estimators: {e}") from None
  if name == "rtrl_elementwise" and not options:
    return None
  if name == "tbptt" and set(options) <= {"num_steps"}:
    truncation = options.get("num_steps", f.num_steps)
    if not isinstance(truncation, int) or truncation < 1 or f.rollout_steps % truncation:
      raise app.UsageError(f"--estimators: {spec!r}: with --algorithm=ppo its num_steps (the BPTT "
                           f"truncation) must divide --rollout_steps={f.rollout_steps}")
    return truncation
  raise app.UsageError(f"--estimators: {spec!r}: --algorithm=ppo takes rtrl_elementwise "
                       "(real-time PPO) or tbptt[num_steps=K] (PPO with BPTT over K steps)")


def validate_flags(f):
  """Every check that needs no compute; raises app.UsageError naming the flag.

  The logdir is made last: a bad flag leaves no file behind.

  Returns:
    (agents by cell, window length by estimator, logdir, the logdir's lock).
  """
  for name in ("num_steps", "hidden_size", "num_envs", "seeds", "train_steps", "log_every"):
    if getattr(f, name) < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}")
  for name in ("head_hidden", "encoder_size"):
    if getattr(f, name) < 0:
      raise app.UsageError(f"--{name} must be >= 0, got {getattr(f, name)}")
  for name in ("learning_rate", "max_grad_norm", "reward_scale"):
    if not (math.isfinite(getattr(f, name)) and getattr(f, name) > 0):
      raise app.UsageError(f"--{name} must be a finite number > 0, got {getattr(f, name)}")
  for name in ("entropy_cost", "value_cost"):
    if not (math.isfinite(getattr(f, name)) and getattr(f, name) >= 0):
      raise app.UsageError(f"--{name} must be a finite number >= 0, got {getattr(f, name)}")
  if not 0 <= f.gamma <= 1:
    raise app.UsageError(f"--gamma must be in [0, 1], got {f.gamma}")
  for name in ("rollout_steps", "ppo_epochs", "ppo_minibatches"):
    if getattr(f, name) < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}")
  if not (math.isfinite(f.clip) and f.clip > 0):
    raise app.UsageError(f"--clip must be a finite number > 0, got {f.clip}")
  if not 0 <= f.gae_lambda <= 1:
    raise app.UsageError(f"--gae_lambda must be in [0, 1], got {f.gae_lambda}")
  if f.algorithm == "ppo":
    if f.log_every % f.rollout_steps:
      raise app.UsageError(f"--rollout_steps={f.rollout_steps} must divide "
                           f"--log_every={f.log_every}")
    for spec in f.estimators:
      truncation = ppo_truncation(f, spec)
      samples = (f.rollout_steps // (truncation or 1)) * f.num_envs
      if samples % f.ppo_minibatches:
        raise app.UsageError(
            f"--ppo_minibatches={f.ppo_minibatches} must divide the {samples} "
            + ("steps (--rollout_steps * --num_envs)" if truncation is None else
               f"sequences of {spec} (--rollout_steps / {truncation} * --num_envs)"))
  if f.train_steps % f.log_every:
    raise app.UsageError(f"--train_steps={f.train_steps} must be a multiple of "
                         f"--log_every={f.log_every}")
  for name, values in (("cells", f.cells), ("estimators", f.estimators)):
    if not values:
      raise app.UsageError(f"--{name} is empty")
    if len(set(map(paths.safe_name, values))) < len(values):
      raise app.UsageError(f"--{name} {values} repeats an entry")
  for cell in f.cells:
    if cell not in online_rl.AGENT_CELLS:
      raise app.UsageError(f"--cells: unknown cell {cell!r}; choose from "
                           f"{list(online_rl.AGENT_CELLS)}")
  try:
    for cell in f.cells:  # the weights' size from shapes alone, before any allocation
      _check_bytes(f, f.seeds * metaopt.devices.state_bytes(
          paths.WEIGHTS, jax.eval_shape(lambda: build(f, cell, 0).theta)),
                   f"the weights of {cell}")
    agents = {cell: build(f, cell, 0) for cell in f.cells}
  except ValueError as e:
    raise app.UsageError(f"--env_option / --env: {e}") from None
  windows = {}
  for spec in f.estimators:
    if f.algorithm == "ppo":  # checked above: PPO updates once per rollout
      windows[spec] = f.rollout_steps
      continue
    try:
      info = metaopt.estimator_info(spec)
    except ValueError as e:
      raise app.UsageError(f"--estimators: {e}") from None
    if info.whole_horizon or info.particles:
      raise app.UsageError(f"--estimators: {spec!r} is not a single-particle online estimator")
    for cell, agent in agents.items():
      try:
        estimator = metaopt.get_estimator(spec, agent.system, num_steps=f.num_steps)
      except ValueError as e:
        raise app.UsageError(f"--estimators: {spec!r} with cell {cell!r}: {e}") from None
      _check_bytes(f, f.seeds * metaopt.devices.state_bytes(estimator, agent.theta),
                   f"the state of {spec!r} with cell {cell!r}")
    window = metaopt.horizon.window_length(spec, agents[f.cells[0]].system, f.num_steps)
    if f.log_every % window:
      raise app.UsageError(f"--estimators: {spec!r}: its window of {window} steps must divide "
                           f"--log_every={f.log_every}")
    windows[spec] = window
  logdir = f.logdir or os.path.join(
      "runs", f"online_rl-{f.env}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  try:
    metaopt.files.make_folder(logdir)
    lock = metaopt.files.lock_folder(logdir)  # held until the process ends
    metaopt.files.remove_stale_temporaries(logdir)
    metaopt.files.refuse_links(logdir, ["summary.json", "summary.md", "returns.png"]
                         + [paths.safe_name(c) for c in f.cells])
    for cell in f.cells:
      metaopt.files.make_folder(os.path.join(logdir, paths.safe_name(cell)))
      metaopt.files.refuse_links(os.path.join(logdir, paths.safe_name(cell)),
                           [paths.safe_name(s) for s in f.estimators])
  except OSError as e:
    raise app.UsageError(f"--logdir {logdir!r}: {e.strerror or e}") from None
  return agents, windows, logdir, lock


def _check_bytes(f, nbytes, what):
  """Refuses what would not fit in memory, naming the flags that size it."""
  paths.check_bytes(nbytes, what, f"--hidden_size={f.hidden_size}, --num_envs="
                     f"{f.num_envs}, --seeds={f.seeds}")


def config(f, cell, spec):
  """What a checkpoint must have been written by to be resumed."""
  return {"env": f.env, "env_option": sorted(f.env_option), "cell": cell,
          "estimator": spec, "num_steps": f.num_steps, "hidden_size": f.hidden_size,
          "num_envs": f.num_envs, "head_hidden": f.head_hidden, "seeds": f.seeds,
          # Options added since the first checkpoints: only when set, so those still resume.
          **({"encoder_size": f.encoder_size} if f.encoder_size else {}),
          **({"reward_scale": f.reward_scale} if f.reward_scale != 1.0 else {}),
          "train_steps": f.train_steps,
          "log_every": f.log_every, "learning_rate": f.learning_rate,
          "max_grad_norm": f.max_grad_norm, "gamma": f.gamma,
          "entropy_cost": f.entropy_cost, "value_cost": f.value_cost,
          "algorithm": f.algorithm,
          **({"rollout_steps": f.rollout_steps, "ppo_epochs": f.ppo_epochs,
              "ppo_minibatches": f.ppo_minibatches, "clip": f.clip,
              "gae_lambda": f.gae_lambda} if f.algorithm == "ppo" else {})}


class Run(NamedTuple):
  """What one (cell, estimator) pair trains: --seeds agents at once."""
  agents: list
  init: Any  # init(keys, thetas) -> state, vmapped over seeds
  chunk: Any  # chunk(state) -> (state, stats row), vmapped over seeds: --log_every steps
  keys: Any
  thetas: Any
  progress: Any  # the checkpoint's template
  checkpoint: str
  update: Any  # update(state) -> state: one agent's (one seed's) single update, not vmapped


STATS = ("returns", "lengths", "episodes", "entropy", "value_loss")


def _row(inner, trace_norm, finite):
  totals = online_rl.episode_stats(inner)
  return jnp.concatenate([jnp.stack([totals[k] for k in STATS]),
                          jnp.stack([trace_norm, finite.astype(jnp.float32)])])


def setup(f, cell, spec, window, folder):
  """Builds the run (no compute: the checkpoint template comes from shapes)."""
  agents = [build(f, cell, s) for s in range(f.seeds)]
  system = agents[0].system
  thetas = jax.tree.map(lambda *x: jnp.stack(x), *[a.theta for a in agents])
  if f.algorithm == "ppo":
    # As the RTU paper's code: clip the global norm, then Adam with eps 1e-5.
    optimizer = optax.chain(optax.clip_by_global_norm(f.max_grad_norm),
                            optax.adam(f.learning_rate, eps=1e-5))
    options = dict(num_steps=f.rollout_steps, num_epochs=f.ppo_epochs,
                   num_minibatches=f.ppo_minibatches, clip=f.clip, gae_lambda=f.gae_lambda)
    truncation = ppo_truncation(f, spec)
    learner = (metaopt.rl.real_time_ppo(system, optimizer, **options) if truncation is None
               else metaopt.rl.bptt_ppo(system, optimizer, truncation=truncation, **options))
    rollouts = f.log_every // f.rollout_steps

    update = lambda state: learner.step(state)[0]

    def chunk(state):
      state, metrics = jax.lax.scan(lambda s, _: learner.step(s), state, None, length=rollouts)
      trace_norm = jnp.mean(metrics.get("trace_norm", jnp.zeros(1)))
      return state, _row(state.inner, trace_norm, jnp.all(jnp.isfinite(metrics["loss"])))

    init = learner.init
  else:
    est = metaopt.get_estimator(spec, system, num_steps=f.num_steps)
    t = metaopt.tuner(est, optax.adam(f.learning_rate, eps=1e-5),
                      max_grad_norm=f.max_grad_norm)
    windows_per_chunk = f.log_every // window
    update = lambda state: t.run(state, 1)[0]

    def chunk(state):
      state, infos = t.run(state, windows_per_chunk)
      # state.estimator_state.inner: the AgentState, with a leading axis of one chain.
      return state, _row(state.estimator_state.inner,
                         jnp.mean(infos.get("trace_norm", jnp.zeros(1))),
                         jnp.all(jnp.isfinite(infos["loss"])))

    init = t.init
  keys = jax.random.split(jax.random.key(1000 + len(cell)), f.seeds)
  init = jax.jit(jax.vmap(init))
  num_chunks = f.train_steps // f.log_every
  # Progress: the learner's state, chunks done, and the cumulative stats after each chunk.
  progress = (jax.eval_shape(init, keys, thetas), jax.ShapeDtypeStruct((), jnp.int32),
              jax.ShapeDtypeStruct((num_chunks, f.seeds, len(STATS) + 2), jnp.float32))
  return Run(agents, init, jax.jit(jax.vmap(chunk)), keys, thetas, progress,
             os.path.join(folder, "checkpoint.npz"), update)


def restore(f, run, cell, spec):
  """The run's checkpoint (state, chunks done, history), or None; CheckpointError if foreign."""
  if not os.path.exists(run.checkpoint):
    return None
  return metaopt.checkpoint.restore(run.checkpoint, run.progress, config=config(f, cell, spec))


def train(f, cell, spec, folder, run):
  """Online training of --seeds agents at once; returns the record for the summary."""
  num_chunks = f.train_steps // f.log_every
  chunk = run.chunk
  checkpoint_path = run.checkpoint
  restored = restore(f, run, cell, spec)
  if restored is not None:
    state, done, history = restored
    done = int(done)
    print(f"  resumed {cell} / {spec} after {done * f.log_every} steps", flush=True)
  else:
    state, done = run.init(run.keys, run.thetas), 0
    history = jnp.zeros(run.progress[2].shape, jnp.float32)
  times = []
  with metaopt.tensorboard.SummaryWriter(folder) as writer:
    for c in range(done, num_chunks):
      start = time.perf_counter()
      state, row = chunk(state)
      row = jax.block_until_ready(row)
      if c > done:  # the first call compiles
        times.append(time.perf_counter() - start)
      history = history.at[c].set(row)
      metaopt.checkpoint.save(checkpoint_path, (state, jnp.int32(c + 1), history),
                              config=config(f, cell, spec))
      step = (c + 1) * f.log_every
      point = interval_means(f, np.asarray(history), c)
      for name in ("return", "episode_length", "entropy", "value_loss", "trace_norm"):
        if name != "trace_norm" or spec.startswith("rtrl"):
          writer.scalar(f"agent/{name}", float(np.nanmean(point[name])), step)
  history = np.asarray(history)
  curve = [[(c + 1) * f.log_every, interval_means(f, history, c)["return"].tolist()]
           for c in range(num_chunks)]
  seconds = float(np.median(times)) / f.log_every if times else None
  window = f.rollout_steps if f.algorithm == "ppo" else run_window(f, spec, run)
  return {"cell": cell, "estimator": spec, "num_steps": window, "curve": curve,
          "diverged_seeds": int(np.sum(history[:, :, -1].min(axis=0) < 1)),
          "seconds_per_step": seconds, "num_params": int(run.agents[0].num_params),
          "update_bytes": update_bytes(run)}


def update_bytes(run):
  """Peak memory of ONE agent's single update (its state, the rollout or window, the gradient's
  working memory), from the compiled program (XLA's memory analysis): no compute."""
  one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), run.progress[0])
  return metaopt.timing.peak_bytes(run.update, one)


def run_window(f, spec, run):
  """The window length of ``spec`` in ``run``."""
  return metaopt.horizon.window_length(spec, run.agents[0].system, f.num_steps)


def interval_means(f, history, c):
  """Per seed, the means over the interval ending at chunk c (episodes finished in it)."""
  now = history[c]
  before = history[c - 1] if c else np.zeros_like(now)
  delta = now - before
  episodes = delta[:, STATS.index("episodes")]
  per_episode = lambda k: np.where(episodes > 0, delta[:, STATS.index(k)]
                                   / np.maximum(episodes, 1), np.nan)
  steps = f.log_every * f.num_envs
  return {"return": per_episode("returns"), "episode_length": per_episode("lengths"),
          "entropy": delta[:, STATS.index("entropy")] / steps,
          "value_loss": delta[:, STATS.index("value_loss")] / steps,
          "trace_norm": now[:, len(STATS)]}


def forward_seconds_per_step(f, agent):
  """The plain forward step of --seeds agents (act, env, cell, loss), jit-compiled scan."""
  system = agent.system

  @jax.jit
  @jax.vmap
  def run(state, theta, keys):
    return jax.lax.scan(lambda s, k: system.step(s, theta, k), state, keys)

  thetas = jax.tree.map(lambda x: jnp.stack([x] * f.seeds), agent.theta)
  state = jax.vmap(system.init)(jax.random.split(jax.random.key(0), f.seeds), thetas)
  keys = jax.random.split(jax.random.key(1), (f.seeds, f.log_every))
  jax.block_until_ready(run(state, thetas, keys))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(run(state, thetas, keys))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) / f.log_every


def final_return(record, fraction=0.1):
  """Per seed, the mean return over the last ``fraction`` of training; mean and 95% CI."""
  curve = np.array([point[1] for point in record["curve"]], np.float64)  # (chunks, seeds)
  last = curve[-max(1, int(round(fraction * len(curve)))):]
  per_seed = np.nanmean(last, axis=0)
  mean = float(np.mean(per_seed))
  half = (float(1.96 * np.std(per_seed, ddof=1) / np.sqrt(len(per_seed)))
          if len(per_seed) > 1 else float("nan"))
  return mean, half


def markdown(f, records, forwards, description):
  """The summary table (summary.md)."""
  algorithm = ("one-step actor-critic" if f.algorithm == "actor_critic" else
               f"PPO (rollouts of {f.rollout_steps}, {f.ppo_epochs} epochs x "
               f"{f.ppo_minibatches} minibatches; rtrl_elementwise: real-time PPO, "
               "tbptt[num_steps=K]: BPTT over sequences of K steps)")
  lines = [f"{description}; {algorithm}; {f.train_steps} steps per environment, "
           f"{f.seeds} seeds, Adam lr {f.learning_rate}.", "",
           "| cell | estimator | window | return, last 10% (mean ± 95% CI) | diverged seeds | "
           "time per step (ms) | ratio to forward step | memory per update (KiB) |",
           "|---|---|---|---|---|---|---|---|"]
  rows = []
  for r in records:
    mean, half = final_return(r)
    sec = r["seconds_per_step"]
    ratio = "-" if sec is None else f"{sec / forwards[r['cell']]:.2f}"
    rows.append((float("inf") if sec is None else sec,
                 f"| {r['cell']} | {r['estimator']} | {r['num_steps']} | {mean:.3f} ± "
                 f"{half:.3f} | {r['diverged_seeds']} | "
                 f"{'-' if sec is None else f'{sec * 1e3:.3f}'} | {ratio} | "
                 f"{r['update_bytes'] / 1024:.0f} |"))
  lines += [row for _, row in rows]
  lines += ["", "The same rows by compute spent (time per step, cheapest first):", "",
            lines[2], lines[3]] + [row for _, row in sorted(rows, key=lambda x: x[0])]
  lines.append("\nReturn: undiscounted, of the episodes finished in each interval, averaged per "
               "seed; time per step: all seeds and environments, including the Adam update; "
               "memory per update: one agent's state and working memory for one update (XLA's "
               "memory analysis of the compiled update).")
  return "\n".join(lines) + "\n"


def main(f, argv):
  """Checks the flags, trains every (cell, estimator) pair and writes the summary.

  ``argv`` is as absl passes it to ``main`` (the program first).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  agents, windows, logdir, _lock = validate_flags(f)
  description = agents[f.cells[0]].description
  print(description, flush=True)
  runs = {}
  for cell in f.cells:  # a foreign checkpoint is refused before any compute
    for spec, window in windows.items():
      folder = os.path.join(logdir, paths.safe_name(cell), paths.safe_name(spec))
      runs[cell, spec] = folder, setup(f, cell, spec, window, folder)
      try:
        restore(f, runs[cell, spec][1], cell, spec)
      except metaopt.checkpoint.CheckpointError as e:
        raise app.UsageError(f"--logdir: {e}") from None
  forwards = {cell: forward_seconds_per_step(f, agent) for cell, agent in agents.items()}
  records = []
  for cell in f.cells:
    for spec, window in windows.items():
      folder, run = runs[cell, spec]
      record = train(f, cell, spec, folder, run)
      records.append(record)
      mean, half = final_return(record)
      ratio = (record["seconds_per_step"] or float("nan")) / forwards[cell]
      print(f"{cell:14s} {spec:24s} return {mean:.3f} ± {half:.3f}, cost {ratio:.2f}x forward",
            flush=True)
  summary = {"description": description, "env": f.env, "env_option": f.env_option,
             "config": {k: v for k, v in config(f, f.cells[0], "").items()
                        if k not in ("cell", "estimator")},
             "forward_seconds_per_step": forwards, "runs": records}
  metaopt.files.write_atomic(os.path.join(logdir, "summary.json"), json.dumps(summary, indent=1))
  table = markdown(f, records, forwards, description)
  metaopt.files.write_atomic(os.path.join(logdir, "summary.md"), table)
  algorithm = "one-step actor-critic" if f.algorithm == "actor_critic" else "PPO"
  report.return_curves(records, os.path.join(logdir, "returns.png"),
                       f"{agents[f.cells[0]].env.description}: {algorithm}, "
                       f"{f.hidden_size} units, {f.num_envs} envs, {f.seeds} seeds")
  print("\n" + table + f"written to {logdir}/summary.json, summary.md and returns.png")
