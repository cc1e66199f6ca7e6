r"""Tune hyperparameters online while the inner training runs; log everything to TensorBoard.

Examples:
  python -m launch.tune --flagfile=launch/configs/digits_schedule.flags
  python -m launch.tune --problem=influence_balancing --problem_option=horizon=3000 \
      --estimator=rtrl --num_steps=1 --meta_optimizer=sgd --meta_lr=1e-4 --outer_steps=3000

Rerunning the same command on an existing --logdir resumes from its last
checkpoint; a logdir written by a different configuration is refused.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import sys
import time

from absl import app
import launch
from absl import flags
from absl import logging
import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import optax

import metaopt
import unrolled

# Which estimators take an option, from the table (for the flags' help).
_TAKING = {option: ", ".join(name for name, info in metaopt.ESTIMATOR_TABLE.items()
                             if option in info.takes) for option in ("num_particles", "sigma")}

_PROBLEM = flags.DEFINE_string("problem", "digits_mlp", "Inner problem, from unrolled.names().")
_PROBLEM_OPTION = flags.DEFINE_multi_string(
    "problem_option", [], "key=value option of the problem (repeatable), e.g. horizon=300.")
_ESTIMATOR = flags.DEFINE_string(
    "estimator", "rtrl", f"Hypergradient estimator: one of {', '.join(metaopt.ESTIMATORS)}, "
    "optionally with options, e.g. uoro[rho=variance,rank=4].")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Inner steps per window (must divide the horizon).")
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 8,
                                      f"Particles (even) of {_TAKING['num_particles']}.")
_SIGMA = flags.DEFINE_float("sigma", 0.01, f"Perturbation scale (> 0) of {_TAKING['sigma']}.")
_NUM_CHAINS = flags.DEFINE_integer("num_chains", 1, "Independent estimator chains, averaged.")
_META_OPTIMIZER = flags.DEFINE_enum("meta_optimizer", "adam", ["sgd", "adam", "rmsprop", "momentum"],
                                    "Outer optimiser of theta.")
_META_LR = flags.DEFINE_float("meta_lr", 1e-2, "Outer learning rate.")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", None, "Clip the hypergradient's global norm.")
_OUTER_STEPS = flags.DEFINE_integer("outer_steps", 100, "Outer steps (one window each).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same run.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Run folder (default runs/<problem>-<estimator>-<time>).")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 100, "Outer steps between checkpoints.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 0, "Outer steps between progress lines (0: ~20 lines).")
_IMAGE_EVERY = flags.DEFINE_integer("image_every", 0,
                                    "Outer steps between schedule images (0: ~10 images).")
_MAX_SKIPPED = flags.DEFINE_integer(
    "max_skipped", 100, "Stop once this many outer steps had non-finite hypergradients or losses.")
_EVALUATE = flags.DEFINE_bool("evaluate", True,
                              "At the end, train one horizon with the initial and the tuned theta.")

# Flags that define a run: a logdir written with other values is refused.
CONFIG_FLAGS = ("problem", "problem_option", "estimator", "num_steps", "num_particles", "sigma",
                "num_chains", "meta_optimizer", "meta_lr", "max_grad_norm", "seed",
                "checkpoint_every")
CHECKPOINT = "checkpoint.npz"
CONFIG = "config.json"
SUMMARY = "summary.json"
MAX_STEPS_PER_CALL = 25
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam, "rmsprop": optax.rmsprop,
              "momentum": lambda lr: optax.sgd(lr, momentum=0.9)}


def validate_flags():
  """Every check that needs no compute; raises app.UsageError naming the flag.

  Returns the problem, the estimator (building it checks its options) and the logdir, which is
  made (and checked writable) last: a bad flag leaves no file behind.
  """
  if _PROBLEM.value not in unrolled.names():
    raise app.UsageError(f"--problem={_PROBLEM.value!r} is unknown; choose one of {unrolled.names()}")
  try:
    metaopt.estimator_info(_ESTIMATOR.value)
  except ValueError as e:
    raise app.UsageError(f"--estimator={_ESTIMATOR.value!r}: {e}") from None
  for flag in (_NUM_STEPS, _NUM_CHAINS, _OUTER_STEPS, _CHECKPOINT_EVERY):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  for flag in (_LOG_EVERY, _IMAGE_EVERY, _MAX_SKIPPED):
    if flag.value < 0:
      raise app.UsageError(f"--{flag.name} must be >= 0, got {flag.value}")
  for flag in (_META_LR, _MAX_GRAD_NORM):
    if flag.value is not None and not (math.isfinite(flag.value) and flag.value > 0):
      raise app.UsageError(f"--{flag.name} must be a finite number > 0, got {flag.value}")
  if not 0 <= _SEED.value < 2**32:
    raise app.UsageError(f"--seed must be in [0, 2**32), got {_SEED.value}")
  try:
    problem = unrolled.get(_PROBLEM.value, **unrolled.parse_options(_PROBLEM_OPTION.value))
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--problem_option: {e}") from None
  try:
    estimator = metaopt.get_estimator(_ESTIMATOR.value, problem.system, num_steps=_NUM_STEPS.value,
                                      num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value)
    metaopt.check_memory(estimator, problem.theta, num_chains=_NUM_CHAINS.value,
                         what="--num_chains")
  except ValueError as e:  # its messages start with the option's name: name the flag that set it
    if str(e).startswith("system."):  # the problem's own value, e.g. horizon=0
      raise app.UsageError(f"--problem_option: {e}") from None
    own = metaopt.parse_spec(_ESTIMATOR.value)[1]
    flag = [o for o in metaopt.estimator_info(_ESTIMATOR.value).takes
            if o not in own and re.match(rf"{o}\b", str(e))]
    raise app.UsageError(f"--{e}" if flag or str(e).startswith("--") else
                         f"--estimator={_ESTIMATOR.value!r}: {e}") from None
  logdir = _LOGDIR.value or os.path.join(
      "runs", f"{_PROBLEM.value}-{re.sub(r'[^A-Za-z0-9_.=-]', '_', _ESTIMATOR.value)}-"
      f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  try:
    metaopt.make_folder(logdir)
  except OSError as e:
    raise app.UsageError(f"--logdir {logdir!r} is not writable: {e}") from None
  return problem, estimator, logdir


def write_json(path, obj):
  metaopt.write_atomic(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(x):
  return x.tolist() if isinstance(x, (np.ndarray, np.generic)) else str(x)


def claim_logdir(logdir, config):
  """Locks the logdir for this process, then writes config.json into a new logdir or checks that
  an existing one matches. Returns whether it resumes a run."""
  try:
    # Held until the process ends: a second process on this logdir is refused, never interleaved.
    claim_logdir.lock = metaopt.lock_folder(logdir)
    metaopt.remove_stale_temporaries(logdir)  # ours alone now: what killed runs left behind
    # Refused now, not when written after the run's compute.
    metaopt.refuse_links(logdir, (CONFIG, CHECKPOINT, SUMMARY))
  except OSError as e:
    raise app.UsageError(f"--logdir: {e.strerror} ({e.filename})" if e.filename and e.strerror
                         and str(e.filename) not in e.strerror else f"--logdir: {e.strerror or e}"
                         ) from None
  path = os.path.join(logdir, CONFIG)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise app.UsageError(f"--logdir {logdir!r}: {CONFIG} is unreadable ({e}); delete it "
                           "(and the checkpoint) or pick another --logdir") from None
    new = json.loads(json.dumps(config, default=_json_default))
    diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != new[k]}
    if diff:
      details = ", ".join(f"--{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
      raise app.UsageError(f"--logdir {logdir!r} holds a run of a different configuration "
                           f"({details}); pick another --logdir to start a new run")
    return True
  if os.path.exists(os.path.join(logdir, CHECKPOINT)):
    raise app.UsageError(f"--logdir {logdir!r} has a checkpoint but no {CONFIG}; refusing to "
                         "overwrite it")
  write_json(path, config)
  return False


def steps_per_call(checkpoint_every):
  """The largest divisor of checkpoint_every up to MAX_STEPS_PER_CALL: calls never straddle a
  checkpoint, so a resumed run makes exactly the calls an uninterrupted one makes."""
  return max(d for d in range(1, min(checkpoint_every, MAX_STEPS_PER_CALL) + 1)
             if checkpoint_every % d == 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  problem, estimator, logdir = validate_flags()
  window = metaopt.window_length(_ESTIMATOR.value, problem.system, _NUM_STEPS.value)
  config = {name: flags.FLAGS[name].value for name in CONFIG_FLAGS}
  resuming = claim_logdir(logdir, config)
  t = metaopt.tuner(estimator, OPTIMIZERS[_META_OPTIMIZER.value](_META_LR.value),
                    num_chains=_NUM_CHAINS.value, max_grad_norm=_MAX_GRAD_NORM.value)
  theta0 = problem.theta
  init = lambda: jax.jit(t.init)(jax.random.key(_SEED.value), theta0)
  checkpoint_path = os.path.join(logdir, CHECKPOINT)
  start = 0
  if resuming and os.path.exists(checkpoint_path):
    try:  # into the state's shapes alone: a damaged or foreign checkpoint costs no compute
      state = metaopt.checkpoint.restore(checkpoint_path, jax.eval_shape(init), config=config)
    except metaopt.checkpoint.CheckpointError as e:
      raise app.UsageError(f"--logdir: {e}") from None
    start = int(state.step)
    logging.info("resuming %s from outer step %d", logdir, start)
    print(f"resuming {logdir} from outer step {start}")
  else:
    state = init()
  writer = metaopt.SummaryWriter(logdir, resume_step=start + 1 if resuming else None)
  outer_steps = _OUTER_STEPS.value
  log_every = _LOG_EVERY.value or max(1, outer_steps // 20)
  image_every = _IMAGE_EVERY.value or max(1, outer_steps // 10)
  names = metaopt.coordinate_names(theta0)
  chunk = steps_per_call(_CHECKPOINT_EVERY.value)
  run = jax.jit(t.run, static_argnums=1)
  unravel = ravel_pytree(theta0)[1]
  natural = jax.jit(jax.vmap(lambda flat: problem.hyperparameters(unravel(flat))))
  evaluate = jax.jit(lambda s: problem.evaluate(_first_particle(s.estimator_state.inner))
                     ) if problem.evaluate else None
  print(f"{problem.description}\nestimator {_ESTIMATOR.value} (window {window}), "
        f"{_NUM_CHAINS.value} chain(s), {_META_OPTIMIZER.value}(lr={_META_LR.value}), "
        f"{outer_steps} outer steps; logdir {logdir}")
  wall_start, steps_done_here = time.time(), 0
  step = start
  while step < outer_steps:
    n = min(chunk - step % chunk, outer_steps - step)
    state, infos = run(state, n)
    infos, hyper = jax.device_get((infos, natural(infos["theta"])))
    for i, s in enumerate(range(step + 1, step + n + 1)):
      metaopt.log_tuner_info(writer, {k: v[i] for k, v in infos.items()}, s, names=names,
                             window=window)
      metaopt.log_hyperparameters(writer, {k: v[i] for k, v in hyper.items()}, s,
                                  image=s % image_every == 0 or s == 1)
    for k, v in (jax.device_get(evaluate(state)) if evaluate else {}).items():
      writer.scalar(f"eval/{k}", v, step + n)
    step += n
    steps_done_here += n
    skipped = int(infos["num_skipped"][-1])
    if step % _CHECKPOINT_EVERY.value == 0 or step == outer_steps or skipped > _MAX_SKIPPED.value:
      writer.flush()
      metaopt.checkpoint.save(checkpoint_path, state, config=config)
    if skipped > _MAX_SKIPPED.value:
      writer.close()
      sys.exit(f"stopped at outer step {step}: {skipped} outer steps had non-finite "
               f"hypergradients or inner losses (limit --max_skipped={_MAX_SKIPPED.value}); "
               f"theta stayed at its last finite value {np.asarray(infos['theta'][-1])}. "
               "Lower --meta_lr or set --max_grad_norm.")
    if step % log_every < n or step == outer_steps:
      eta = (time.time() - wall_start) / steps_done_here * (outer_steps - step)
      hp = ", ".join(f"{k}={_short(v[-1])}" for k, v in hyper.items()
                     if not k.endswith(("_curve", "_knots")))
      line = (f"step {step}/{outer_steps} | window loss {float(infos['loss'][-1]):.4g} | {hp}"
              f" | skipped {skipped} | ETA {eta:.0f}s")
      print(line, flush=True)
      logging.info(line)
  summary = {"config": config, "outer_steps": step, "num_skipped": int(state.num_skipped),
             "theta": np.asarray(ravel_pytree(state.theta)[0]).tolist(),
             "theta_names": names,
             "hyperparameters": jax.device_get(problem.hyperparameters(state.theta)),
             "wall_seconds_this_process": time.time() - wall_start}
  if _EVALUATE.value:
    # One fresh horizon per theta on the same keys: the difference is the tuning's alone.
    one = jax.jit(lambda th: metaopt.evaluate_horizon(
        problem.system, th, jax.random.key(_SEED.value + 1), evaluate=problem.evaluate))
    summary["untuned"], summary["tuned"] = (
        {k: float(v) for k, v in jax.device_get(one(th)).items()} for th in (theta0, state.theta))
    print_comparison(summary["untuned"], summary["tuned"], problem.hyperparameters(theta0),
                     problem.hyperparameters(state.theta))
  final_metrics = {f"final/{k}": float(v) for k, v in summary.get("tuned", {}).items()}
  final_metrics["final/num_skipped"] = float(state.num_skipped)
  writer.hparams({**config, "problem_option": " ".join(config["problem_option"])},
                 final_metrics, step, trial_id=os.path.basename(os.path.abspath(logdir)))
  writer.close()
  write_json(os.path.join(logdir, SUMMARY), summary)
  print(f"summary written to {os.path.join(logdir, SUMMARY)}")


def _first_particle(inner):
  """Chain 0's inner state; its particle 0's where the estimator stacks one per particle."""
  first = lambda tree: jax.tree.map(lambda x: x[0], tree)
  return first(first(inner)) if metaopt.estimator_info(_ESTIMATOR.value).particles else first(inner)


def _short(v):
  v = np.asarray(v)
  return f"{float(v):.4g}" if v.ndim == 0 else "[" + " ".join(f"{x:.3g}" for x in v.ravel()) + "]"


def print_comparison(untuned, tuned, hyper0, hyper):
  print("\none horizon of inner training, same keys:")
  print(f"{'':24s}{'untuned':>14s}{'tuned':>14s}")
  for k in untuned:
    print(f"{k:24s}{untuned[k]:14.5g}{tuned[k]:14.5g}")
  for k in hyper:
    a, b = np.asarray(hyper0[k]), np.asarray(hyper[k])
    if k.endswith("_curve"):  # a schedule: six points over the horizon
      idx = np.linspace(0, a.shape[-1] - 1, 6).astype(int)
      print(f"{k[:-len('_curve')].replace('_', '-')} schedule at inner steps {idx.tolist()}:")
      print(f"  untuned {_short(a[..., idx])}\n  tuned   {_short(b[..., idx])}")
    elif not k.endswith("_knots"):
      print(f"{k}: untuned {_short(a)}, tuned {_short(b)}")


if __name__ == "__main__":
  launch.run(main)
