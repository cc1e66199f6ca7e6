r"""Train recurrent actor-critic agents online in a partially observable environment.

The setting of Elelimy et al. (2024, Recurrent Trace Units) and Irie et al.
(2023, RTRL): one recurrent layer, policy and value heads, one weight update
per environment step (windows of --num_steps) with the one-step actor-critic
loss of :func:`metaopt.agent_system`, gradients from each estimator. Every
(cell, estimator) pair runs all --seeds at once (vmapped); seeds differ in the
initial weights and the environments' randomness.

Per (cell, estimator), TensorBoard curves go to <logdir>/<cell>/<estimator>/
(mean over seeds of the undiscounted return of the episodes finished in each
logging interval, their length, the value loss, the policy's entropy and, for
RTRL, the norm of its traces), and a checkpoint after every interval:
rerunning the same command resumes. <logdir>/summary.json, summary.md and
returns.png compare them: return against environment steps, mean and 95%
confidence interval over seeds, and the cost per step against a forward step.

Examples:
  python -m launch.online_rl --flagfile=launch/configs/rl_memory_chain.flags
  python -m launch.online_rl --env=repeat_first --cells=rtu_linear,elstm \
      --estimators=rtrl_elementwise,tbptt[num_steps=4] --train_steps=20000
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from typing import Any, NamedTuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import launch
import metaopt
from studies import report
import unrolled
from unrolled import envs
from unrolled import online_rl

_ENV = flags.DEFINE_enum("env", "memory_chain", sorted(envs.ENVS), "Environment.")
_ENV_OPTION = flags.DEFINE_multi_string("env_option", [],
                                        "key=value option of the env, e.g. memory_length=20.")
_CELLS = flags.DEFINE_list("cells", ["rtu_linear"],
                           f"Recurrent cells, from {list(online_rl.AGENT_CELLS)}.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["rtrl_elementwise", "tbptt[num_steps=1]", "tbptt[num_steps=16]"],
    "Estimator specs; an estimator's own num_steps=... overrides --num_steps.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1, "Environment steps per window (update).")
_HIDDEN_SIZE = flags.DEFINE_integer("hidden_size", 16, "Recurrent units.")
_HEAD_HIDDEN = flags.DEFINE_integer(
    "head_hidden", 0, "0: linear policy and value heads; else a tanh layer of this many units in "
    "each (the RTU paper's code: 64).")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 8, "Environments per agent, side by side.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Independent runs (seeds 0..seeds-1), vmapped.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20_000, "Environment steps per environment.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 1_000, "Steps between curve points and checkpoints.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (eps 1e-5).")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", 0.5, "Clip each window's gradient norm.")
_GAMMA = flags.DEFINE_float("gamma", 0.99, "Discount of the TD target.")
_ENTROPY_COST = flags.DEFINE_float("entropy_cost", 0.01, "Entropy bonus weight.")
_VALUE_COST = flags.DEFINE_float("value_cost", 0.5, "Value loss weight.")
_ALGORITHM = flags.DEFINE_enum(
    "algorithm", "actor_critic", ["actor_critic", "ppo"],
    "actor_critic: one update per window of --num_steps with the one-step actor-critic loss; "
    "ppo: metaopt.real_time_ppo (rollouts of --rollout_steps, RTRL traces stored; needs "
    "--estimators=rtrl_elementwise).")
_ROLLOUT_STEPS = flags.DEFINE_integer("rollout_steps", 128, "ppo: steps per environment per rollout.")
_PPO_EPOCHS = flags.DEFINE_integer("ppo_epochs", 4, "ppo: passes over each rollout.")
_PPO_MINIBATCHES = flags.DEFINE_integer("ppo_minibatches", 4, "ppo: minibatches (of single steps).")
_CLIP = flags.DEFINE_float("clip", 0.2, "ppo: ratio (and value) clip.")
_GAE_LAMBDA = flags.DEFINE_float("gae_lambda", 0.95, "ppo: GAE lambda.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Run folder (default runs/online_rl-<env>-<time>).")


def build(cell, seed):
  return online_rl.online_agent(
      cell=cell, env=_ENV.value, hidden_size=_HIDDEN_SIZE.value, seed=seed,
      num_envs=_NUM_ENVS.value, gamma=_GAMMA.value, entropy_cost=_ENTROPY_COST.value,
      value_cost=_VALUE_COST.value, env_options=unrolled.parse_options(_ENV_OPTION.value),
      head_hidden=_HEAD_HIDDEN.value)


def validate_flags():
  """Every check that needs no compute; raises app.UsageError naming the flag.

  The logdir is made last: a bad flag leaves no file behind.
  """
  for flag in (_NUM_STEPS, _HIDDEN_SIZE, _NUM_ENVS, _SEEDS, _TRAIN_STEPS, _LOG_EVERY):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  if _HEAD_HIDDEN.value < 0:
    raise app.UsageError(f"--head_hidden must be >= 0, got {_HEAD_HIDDEN.value}")
  for flag in (_LEARNING_RATE, _MAX_GRAD_NORM):
    if not (math.isfinite(flag.value) and flag.value > 0):
      raise app.UsageError(f"--{flag.name} must be a finite number > 0, got {flag.value}")
  for flag in (_ENTROPY_COST, _VALUE_COST):
    if not (math.isfinite(flag.value) and flag.value >= 0):
      raise app.UsageError(f"--{flag.name} must be a finite number >= 0, got {flag.value}")
  if not 0 <= _GAMMA.value <= 1:
    raise app.UsageError(f"--gamma must be in [0, 1], got {_GAMMA.value}")
  for flag in (_ROLLOUT_STEPS, _PPO_EPOCHS, _PPO_MINIBATCHES):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  if not (math.isfinite(_CLIP.value) and _CLIP.value > 0):
    raise app.UsageError(f"--clip must be a finite number > 0, got {_CLIP.value}")
  if not 0 <= _GAE_LAMBDA.value <= 1:
    raise app.UsageError(f"--gae_lambda must be in [0, 1], got {_GAE_LAMBDA.value}")
  if _ALGORITHM.value == "ppo":
    if _ESTIMATORS.value != ["rtrl_elementwise"]:
      raise app.UsageError(f"--estimators={','.join(_ESTIMATORS.value)}: --algorithm=ppo "
                           "takes its gradients from RTRL traces: use --estimators=rtrl_elementwise")
    if _LOG_EVERY.value % _ROLLOUT_STEPS.value:
      raise app.UsageError(f"--rollout_steps={_ROLLOUT_STEPS.value} must divide "
                           f"--log_every={_LOG_EVERY.value}")
    if (_ROLLOUT_STEPS.value * _NUM_ENVS.value) % _PPO_MINIBATCHES.value:
      raise app.UsageError(f"--ppo_minibatches={_PPO_MINIBATCHES.value} must divide "
                           f"--rollout_steps * --num_envs = {_ROLLOUT_STEPS.value * _NUM_ENVS.value}")
  if _TRAIN_STEPS.value % _LOG_EVERY.value:
    raise app.UsageError(f"--train_steps={_TRAIN_STEPS.value} must be a multiple of "
                         f"--log_every={_LOG_EVERY.value}")
  for name, values in (("cells", _CELLS.value), ("estimators", _ESTIMATORS.value)):
    if not values:
      raise app.UsageError(f"--{name} is empty")
    if len(set(map(launch.safe_name, values))) < len(values):
      raise app.UsageError(f"--{name} {values} repeats an entry")
  for cell in _CELLS.value:
    if cell not in online_rl.AGENT_CELLS:
      raise app.UsageError(f"--cells: unknown cell {cell!r}; choose from "
                           f"{list(online_rl.AGENT_CELLS)}")
  try:
    for cell in _CELLS.value:  # the weights' size from shapes alone, before any allocation
      _check_bytes(_SEEDS.value * metaopt.state_bytes(
          launch.WEIGHTS, jax.eval_shape(lambda: build(cell, 0).theta)), f"the weights of {cell}")
    agents = {cell: build(cell, 0) for cell in _CELLS.value}
  except ValueError as e:
    raise app.UsageError(f"--env_option / --env: {e}") from None
  windows = {}
  for spec in _ESTIMATORS.value:
    try:
      info = metaopt.estimator_info(spec)
    except ValueError as e:
      raise app.UsageError(f"--estimators: {e}") from None
    if info.whole_horizon or info.particles:
      raise app.UsageError(f"--estimators: {spec!r} is not a single-particle online estimator")
    for cell, agent in agents.items():
      try:
        estimator = metaopt.get_estimator(spec, agent.system, num_steps=_NUM_STEPS.value)
      except ValueError as e:
        raise app.UsageError(f"--estimators: {spec!r} with cell {cell!r}: {e}") from None
      _check_bytes(_SEEDS.value * metaopt.state_bytes(estimator, agent.theta),
                   f"the state of {spec!r} with cell {cell!r}")
    window = metaopt.window_length(spec, agents[_CELLS.value[0]].system, _NUM_STEPS.value)
    if _LOG_EVERY.value % window:
      raise app.UsageError(f"--estimators: {spec!r}: its window of {window} steps must divide "
                           f"--log_every={_LOG_EVERY.value}")
    windows[spec] = window
  logdir = _LOGDIR.value or os.path.join(
      "runs", f"online_rl-{_ENV.value}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  try:
    metaopt.make_folder(logdir)
    lock = metaopt.lock_folder(logdir)  # held until the process ends
    metaopt.remove_stale_temporaries(logdir)
    metaopt.refuse_links(logdir, ["summary.json", "summary.md", "returns.png"]
                         + [launch.safe_name(c) for c in _CELLS.value])
    for cell in _CELLS.value:
      metaopt.make_folder(os.path.join(logdir, launch.safe_name(cell)))
      metaopt.refuse_links(os.path.join(logdir, launch.safe_name(cell)),
                           [launch.safe_name(s) for s in _ESTIMATORS.value])
  except OSError as e:
    raise app.UsageError(f"--logdir {logdir!r}: {e.strerror or e}") from None
  return agents, windows, logdir, lock


def _check_bytes(nbytes, what):
  launch.check_bytes(nbytes, what, f"--hidden_size={_HIDDEN_SIZE.value}, --num_envs="
                     f"{_NUM_ENVS.value}, --seeds={_SEEDS.value}")


def config(cell, spec):
  """What a checkpoint must have been written by to be resumed."""
  return {"env": _ENV.value, "env_option": sorted(_ENV_OPTION.value), "cell": cell,
          "estimator": spec, "num_steps": _NUM_STEPS.value, "hidden_size": _HIDDEN_SIZE.value,
          "num_envs": _NUM_ENVS.value, "head_hidden": _HEAD_HIDDEN.value, "seeds": _SEEDS.value,
          "train_steps": _TRAIN_STEPS.value,
          "log_every": _LOG_EVERY.value, "learning_rate": _LEARNING_RATE.value,
          "max_grad_norm": _MAX_GRAD_NORM.value, "gamma": _GAMMA.value,
          "entropy_cost": _ENTROPY_COST.value, "value_cost": _VALUE_COST.value,
          "algorithm": _ALGORITHM.value,
          **({"rollout_steps": _ROLLOUT_STEPS.value, "ppo_epochs": _PPO_EPOCHS.value,
              "ppo_minibatches": _PPO_MINIBATCHES.value, "clip": _CLIP.value,
              "gae_lambda": _GAE_LAMBDA.value} if _ALGORITHM.value == "ppo" else {})}


class Run(NamedTuple):
  """What one (cell, estimator) pair trains: --seeds agents at once."""
  agents: list
  init: Any  # init(keys, thetas) -> state, vmapped over seeds
  chunk: Any  # chunk(state) -> (state, stats row), vmapped over seeds: --log_every steps
  keys: Any
  thetas: Any
  progress: Any  # the checkpoint's template
  checkpoint: str


STATS = ("returns", "lengths", "episodes", "entropy", "value_loss")


def _row(inner, trace_norm, finite):
  totals = online_rl.episode_stats(inner)
  return jnp.concatenate([jnp.stack([totals[k] for k in STATS]),
                          jnp.stack([trace_norm, finite.astype(jnp.float32)])])


def setup(cell, spec, window, folder):
  """Builds the run (no compute: the checkpoint template comes from shapes)."""
  agents = [build(cell, s) for s in range(_SEEDS.value)]
  system = agents[0].system
  thetas = jax.tree.map(lambda *x: jnp.stack(x), *[a.theta for a in agents])
  if _ALGORITHM.value == "ppo":
    # As the RTU paper's code: clip the global norm, then Adam with eps 1e-5.
    learner = metaopt.real_time_ppo(
        system, optax.chain(optax.clip_by_global_norm(_MAX_GRAD_NORM.value),
                            optax.adam(_LEARNING_RATE.value, eps=1e-5)),
        num_steps=_ROLLOUT_STEPS.value, num_epochs=_PPO_EPOCHS.value,
        num_minibatches=_PPO_MINIBATCHES.value, clip=_CLIP.value, gae_lambda=_GAE_LAMBDA.value)
    rollouts = _LOG_EVERY.value // _ROLLOUT_STEPS.value

    def chunk(state):
      state, metrics = jax.lax.scan(lambda s, _: learner.step(s), state, None, length=rollouts)
      return state, _row(state.inner, jnp.mean(metrics["trace_norm"]),
                         jnp.all(jnp.isfinite(metrics["loss"])))

    init = learner.init
  else:
    est = metaopt.get_estimator(spec, system, num_steps=_NUM_STEPS.value)
    t = metaopt.tuner(est, optax.adam(_LEARNING_RATE.value, eps=1e-5),
                      max_grad_norm=_MAX_GRAD_NORM.value)
    windows_per_chunk = _LOG_EVERY.value // window

    def chunk(state):
      state, infos = t.run(state, windows_per_chunk)
      # state.estimator_state.inner: the AgentState, with a leading axis of one chain.
      return state, _row(state.estimator_state.inner,
                         jnp.mean(infos.get("trace_norm", jnp.zeros(1))),
                         jnp.all(jnp.isfinite(infos["loss"])))

    init = t.init
  keys = jax.random.split(jax.random.key(1000 + len(cell)), _SEEDS.value)
  init = jax.jit(jax.vmap(init))
  num_chunks = _TRAIN_STEPS.value // _LOG_EVERY.value
  # Progress: the learner's state, chunks done, and the cumulative stats after each chunk.
  progress = (jax.eval_shape(init, keys, thetas), jax.ShapeDtypeStruct((), jnp.int32),
              jax.ShapeDtypeStruct((num_chunks, _SEEDS.value, len(STATS) + 2), jnp.float32))
  return Run(agents, init, jax.jit(jax.vmap(chunk)), keys, thetas, progress,
             os.path.join(folder, "checkpoint.npz"))


def restore(run, cell, spec):
  """The run's checkpoint (state, chunks done, history), or None; CheckpointError if foreign."""
  if not os.path.exists(run.checkpoint):
    return None
  return metaopt.checkpoint.restore(run.checkpoint, run.progress, config=config(cell, spec))


def train(cell, spec, folder, run):
  """Online training of --seeds agents at once; returns the record for the summary."""
  num_chunks = _TRAIN_STEPS.value // _LOG_EVERY.value
  chunk = run.chunk
  checkpoint_path = run.checkpoint
  restored = restore(run, cell, spec)
  if restored is not None:
    state, done, history = restored
    done = int(done)
    print(f"  resumed {cell} / {spec} after {done * _LOG_EVERY.value} steps", flush=True)
  else:
    state, done = run.init(run.keys, run.thetas), 0
    history = jnp.zeros(run.progress[2].shape, jnp.float32)
  times = []
  with metaopt.SummaryWriter(folder) as writer:
    for c in range(done, num_chunks):
      start = time.perf_counter()
      state, row = chunk(state)
      row = jax.block_until_ready(row)
      if c > done:  # the first call compiles
        times.append(time.perf_counter() - start)
      history = history.at[c].set(row)
      metaopt.checkpoint.save(checkpoint_path, (state, jnp.int32(c + 1), history),
                              config=config(cell, spec))
      step = (c + 1) * _LOG_EVERY.value
      point = interval_means(np.asarray(history), c)
      for name in ("return", "episode_length", "entropy", "value_loss", "trace_norm"):
        if name != "trace_norm" or spec.startswith("rtrl"):
          writer.scalar(f"agent/{name}", float(np.nanmean(point[name])), step)
  history = np.asarray(history)
  curve = [[(c + 1) * _LOG_EVERY.value, interval_means(history, c)["return"].tolist()]
           for c in range(num_chunks)]
  seconds = float(np.median(times)) / _LOG_EVERY.value if times else None
  window = _ROLLOUT_STEPS.value if _ALGORITHM.value == "ppo" else run_window(spec, run)
  return {"cell": cell, "estimator": spec, "num_steps": window, "curve": curve,
          "diverged_seeds": int(np.sum(history[:, :, -1].min(axis=0) < 1)),
          "seconds_per_step": seconds, "num_params": int(run.agents[0].num_params)}


def run_window(spec, run):
  return metaopt.window_length(spec, run.agents[0].system, _NUM_STEPS.value)


def interval_means(history, c):
  """Per seed, the means over the interval ending at chunk c (episodes finished in it)."""
  now = history[c]
  before = history[c - 1] if c else np.zeros_like(now)
  delta = now - before
  episodes = delta[:, STATS.index("episodes")]
  per_episode = lambda k: np.where(episodes > 0, delta[:, STATS.index(k)]
                                   / np.maximum(episodes, 1), np.nan)
  steps = _LOG_EVERY.value * _NUM_ENVS.value
  return {"return": per_episode("returns"), "episode_length": per_episode("lengths"),
          "entropy": delta[:, STATS.index("entropy")] / steps,
          "value_loss": delta[:, STATS.index("value_loss")] / steps,
          "trace_norm": now[:, len(STATS)]}


def forward_seconds_per_step(agent):
  """The plain forward step of --seeds agents (act, env, cell, loss), jit-compiled scan."""
  system = agent.system

  @jax.jit
  @jax.vmap
  def run(state, theta, keys):
    return jax.lax.scan(lambda s, k: system.step(s, theta, k), state, keys)

  thetas = jax.tree.map(lambda x: jnp.stack([x] * _SEEDS.value), agent.theta)
  state = jax.vmap(system.init)(jax.random.split(jax.random.key(0), _SEEDS.value), thetas)
  keys = jax.random.split(jax.random.key(1), (_SEEDS.value, _LOG_EVERY.value))
  jax.block_until_ready(run(state, thetas, keys))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(run(state, thetas, keys))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) / _LOG_EVERY.value


def final_return(record, fraction=0.1):
  """Per seed, the mean return over the last ``fraction`` of training; mean and 95% CI."""
  curve = np.array([point[1] for point in record["curve"]], np.float64)  # (chunks, seeds)
  last = curve[-max(1, int(round(fraction * len(curve)))):]
  per_seed = np.nanmean(last, axis=0)
  mean = float(np.mean(per_seed))
  half = (float(1.96 * np.std(per_seed, ddof=1) / np.sqrt(len(per_seed)))
          if len(per_seed) > 1 else float("nan"))
  return mean, half


def markdown(records, forwards, description):
  algorithm = ("one-step actor-critic" if _ALGORITHM.value == "actor_critic" else
               f"real-time PPO (rollouts of {_ROLLOUT_STEPS.value}, {_PPO_EPOCHS.value} epochs x "
               f"{_PPO_MINIBATCHES.value} minibatches)")
  lines = [f"{description}; {algorithm}; {_TRAIN_STEPS.value} steps per environment, "
           f"{_SEEDS.value} seeds, Adam lr {_LEARNING_RATE.value}.", "",
           "| cell | estimator | window | return, last 10% (mean ± 95% CI) | diverged seeds | "
           "time per step (ms) | ratio to forward step |", "|---|---|---|---|---|---|---|"]
  for r in records:
    mean, half = final_return(r)
    sec = r["seconds_per_step"]
    ratio = "-" if sec is None else f"{sec / forwards[r['cell']]:.2f}"
    lines.append(f"| {r['cell']} | {r['estimator']} | {r['num_steps']} | {mean:.3f} ± "
                 f"{half:.3f} | {r['diverged_seeds']} | "
                 f"{'-' if sec is None else f'{sec * 1e3:.3f}'} | {ratio} |")
  lines.append("\nReturn: undiscounted, of the episodes finished in each interval, averaged per "
               "seed; time per step: all seeds and environments, including the Adam update.")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  agents, windows, logdir, _lock = validate_flags()
  description = agents[_CELLS.value[0]].description
  print(description, flush=True)
  runs = {}
  for cell in _CELLS.value:  # a foreign checkpoint is refused before any compute
    for spec, window in windows.items():
      folder = os.path.join(logdir, launch.safe_name(cell), launch.safe_name(spec))
      runs[cell, spec] = folder, setup(cell, spec, window, folder)
      try:
        restore(runs[cell, spec][1], cell, spec)
      except metaopt.checkpoint.CheckpointError as e:
        raise app.UsageError(f"--logdir: {e}") from None
  forwards = {cell: forward_seconds_per_step(agent) for cell, agent in agents.items()}
  records = []
  for cell in _CELLS.value:
    for spec, window in windows.items():
      folder, run = runs[cell, spec]
      record = train(cell, spec, folder, run)
      records.append(record)
      mean, half = final_return(record)
      ratio = (record["seconds_per_step"] or float("nan")) / forwards[cell]
      print(f"{cell:14s} {spec:24s} return {mean:.3f} ± {half:.3f}, cost {ratio:.2f}x forward",
            flush=True)
  summary = {"description": description, "env": _ENV.value, "env_option": _ENV_OPTION.value,
             "config": {k: v for k, v in config(_CELLS.value[0], "").items()
                        if k not in ("cell", "estimator")},
             "forward_seconds_per_step": forwards, "runs": records}
  metaopt.write_atomic(os.path.join(logdir, "summary.json"), json.dumps(summary, indent=1))
  table = markdown(records, forwards, description)
  metaopt.write_atomic(os.path.join(logdir, "summary.md"), table)
  algorithm = "one-step actor-critic" if _ALGORITHM.value == "actor_critic" else "real-time PPO"
  report.return_curves(records, os.path.join(logdir, "returns.png"),
                       f"{agents[_CELLS.value[0]].env.description}: {algorithm}, "
                       f"{_HIDDEN_SIZE.value} units, {_NUM_ENVS.value} envs, {_SEEDS.value} seeds")
  print("\n" + table + f"written to {logdir}/summary.json, summary.md and returns.png")


if __name__ == "__main__":
  launch.run(main)
