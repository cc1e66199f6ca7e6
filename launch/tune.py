r"""Tune hyperparameters online while the inner training runs; log everything to TensorBoard.

Examples:
  python -m launch.tune --flagfile=launch/configs/digits_schedule.flags
  python -m launch.tune --problem=influence_balancing --problem_option=horizon=3000 \
      --estimator=pes --num_steps=1 --meta_optimizer=sgd --meta_lr=1e-4 --outer_steps=3000

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
from absl import flags
from absl import logging

from launch.files import write_atomic

_PROBLEM = flags.DEFINE_string("problem", "digits_mlp", "Inner problem, from unrolled.names().")
_PROBLEM_OPTION = flags.DEFINE_multi_string(
    "problem_option", [], "key=value option of the problem (repeatable), e.g. horizon=300.")
_ESTIMATOR = flags.DEFINE_string(
    "estimator", "rtrl", "Hypergradient estimator: one of metaopt.ESTIMATORS, optionally with "
    "options, e.g. uoro[rho=variance,rank=4].")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Inner steps per window (must divide the horizon).")
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 8, "Particles of pes / truncated_es (even).")
_SIGMA = flags.DEFINE_float("sigma", 0.01, "Perturbation scale of pes / truncated_es (> 0).")
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


def parse_problem_options(items):
  import unrolled  # pylint: disable=g-import-not-at-top
  try:
    return unrolled.parse_options(items)
  except ValueError as e:
    raise app.UsageError(f"--problem_option: {e}") from None


def check_logdir_writable(logdir):
  try:
    os.makedirs(logdir, exist_ok=True)
    probe = os.path.join(logdir, ".write-test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise app.UsageError(f"--logdir {logdir!r} is not writable: {e}") from None


def validate_flags():
  """Every check that needs no compilation; raises app.UsageError with the flag's name."""
  import unrolled  # pylint: disable=g-import-not-at-top
  if _PROBLEM.value not in unrolled.names():
    raise app.UsageError(f"--problem={_PROBLEM.value!r} is unknown; choose one of {unrolled.names()}")
  import metaopt  # pylint: disable=g-import-not-at-top
  try:
    estimator = metaopt.parse_spec(_ESTIMATOR.value)[0]
  except ValueError as e:
    raise app.UsageError(f"--estimator: {e}") from None
  if estimator not in metaopt.ESTIMATORS:
    raise app.UsageError(f"--estimator={_ESTIMATOR.value!r} is unknown; choose one of "
                         f"{list(metaopt.ESTIMATORS)}")
  if estimator in ("pes", "truncated_es", "nres") and (
      _NUM_PARTICLES.value < 2 or _NUM_PARTICLES.value % 2):
    raise app.UsageError(f"--num_particles must be a positive even number (antithetic pairs), "
                         f"got {_NUM_PARTICLES.value}")
  if estimator in ("pes", "truncated_es", "nres", "reinforce") and not _SIGMA.value > 0:
    raise app.UsageError(f"--sigma must be > 0, got {_SIGMA.value}")
  for flag in (_NUM_STEPS, _NUM_CHAINS, _OUTER_STEPS, _CHECKPOINT_EVERY):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  if not _META_LR.value > 0:
    raise app.UsageError(f"--meta_lr must be > 0, got {_META_LR.value}")
  options = parse_problem_options(_PROBLEM_OPTION.value)
  try:
    problem = unrolled.get(_PROBLEM.value, **options)
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--problem_option: {e}") from None
  horizon = problem.system.horizon
  if estimator != "full_bptt" and horizon % _NUM_STEPS.value:
    raise app.UsageError(f"--num_steps={_NUM_STEPS.value} must divide the horizon of "
                         f"{_PROBLEM.value} ({horizon}); set --num_steps or "
                         f"--problem_option=horizon=...")
  logdir = _LOGDIR.value or os.path.join(
      "runs", f"{_PROBLEM.value}-{re.sub(r'[^A-Za-z0-9_.=-]', '_', _ESTIMATOR.value)}-"
      f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  check_logdir_writable(logdir)
  return problem, options, logdir


def run_config():
  return {name: flags.FLAGS[name].value for name in CONFIG_FLAGS}


def write_json_atomic(path, obj):
  write_atomic(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(x):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return str(x)


def claim_logdir(logdir, config):
  """Writes config.json into a new logdir, or checks that an existing one matches."""
  path = os.path.join(logdir, CONFIG)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != _jsonable(v)}
    if diff:
      details = ", ".join(f"--{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
      raise app.UsageError(f"--logdir {logdir!r} holds a run of a different configuration "
                           f"({details}); pick another --logdir to start a new run")
    return True
  if os.path.exists(os.path.join(logdir, CHECKPOINT)):
    raise app.UsageError(f"--logdir {logdir!r} has a checkpoint but no {CONFIG}; refusing to "
                         "overwrite it")
  write_json_atomic(path, config)
  return False


def _jsonable(v):
  return json.loads(json.dumps(v, default=_json_default))


def make_meta_optimizer(name, lr):
  import optax  # pylint: disable=g-import-not-at-top
  return {"sgd": lambda: optax.sgd(lr), "adam": lambda: optax.adam(lr),
          "rmsprop": lambda: optax.rmsprop(lr), "momentum": lambda: optax.sgd(lr, momentum=0.9)
          }[name]()


def steps_per_call(checkpoint_every):
  """The largest divisor of checkpoint_every up to MAX_STEPS_PER_CALL: calls never straddle a
  checkpoint, so a resumed run makes exactly the calls an uninterrupted one makes."""
  return max(d for d in range(1, min(checkpoint_every, MAX_STEPS_PER_CALL) + 1)
             if checkpoint_every % d == 0)


def coordinate_names(theta):
  import jax  # pylint: disable=g-import-not-at-top
  names = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
    base = jax.tree_util.keystr(path).strip("[]'\"").replace("']['", "/") or "theta"
    size = int(leaf.size) if hasattr(leaf, "size") else 1
    names.extend([base] if size == 1 else [f"{base}/{i}" for i in range(size)])
  return names


def log_hyperparameters(writer, values, step, image_every):
  """Natural-unit hyperparameters: scalars, per-group scalars, schedule curve and knots."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  curve = values.get("learning_rate_curve")
  knots = values.get("learning_rate_knots")
  for name, value in values.items():
    if name in ("learning_rate_curve", "learning_rate_knots"):
      continue
    value = np.asarray(value)
    if value.ndim == 0:
      writer.scalar(f"hyperparameters/{name}", value, step)
    elif name == "learning_rate" and curve is not None:
      continue  # a schedule: its curve and knots below
    else:
      for i, v in enumerate(value.reshape(-1)):
        writer.scalar(f"hyperparameters/{name}/{i}", v, step)
  if curve is not None:
    curve = np.asarray(curve)
    if knots is not None:
      knots = np.asarray(knots)
      knot_values = np.exp(np.interp(knots, np.arange(curve.shape[-1]), np.log(curve)))
      for k, v in enumerate(knot_values.reshape(-1)):
        writer.scalar(f"schedule/knot_{k}", v, step)
    if step % image_every == 0 or step == 1:
      writer.curve("schedule/learning_rate", np.arange(curve.shape[-1]), curve, step,
                   xlabel="inner step", ylabel="learning rate", log_y=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  problem, options, logdir = validate_flags()
  # Heavy imports after validation: a bad flag costs no JAX start-up.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top

  try:
    estimator = metaopt.get_estimator(_ESTIMATOR.value, problem.system, num_steps=_NUM_STEPS.value,
                                      num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  window = metaopt.window_length(_ESTIMATOR.value, problem.system, _NUM_STEPS.value)
  config = run_config()
  resuming = claim_logdir(logdir, config)
  t = metaopt.tuner(estimator, make_meta_optimizer(_META_OPTIMIZER.value, _META_LR.value),
                    num_chains=_NUM_CHAINS.value, max_grad_norm=_MAX_GRAD_NORM.value)
  theta0 = problem.theta
  state = jax.jit(t.init)(jax.random.key(_SEED.value), theta0)
  checkpoint_path = os.path.join(logdir, CHECKPOINT)
  start = 0
  if resuming and os.path.exists(checkpoint_path):
    state = metaopt.checkpoint.restore(checkpoint_path, state)
    start = int(state.step)
    logging.info("resuming %s from outer step %d", logdir, start)
    print(f"resuming {logdir} from outer step {start}")
  writer = metaopt.SummaryWriter(logdir, resume_step=start + 1 if start else None)
  outer_steps = _OUTER_STEPS.value
  log_every = _LOG_EVERY.value or max(1, outer_steps // 20)
  image_every = _IMAGE_EVERY.value or max(1, outer_steps // 10)
  names = coordinate_names(theta0)
  chunk = steps_per_call(_CHECKPOINT_EVERY.value)
  run = jax.jit(t.run, static_argnums=1)
  natural = jax.jit(jax.vmap(problem.hyperparameters))
  chain0_inner = lambda s: jax.tree.map(lambda x: x[0], s.estimator_state.inner)
  evaluate = jax.jit(lambda s: problem.evaluate(_first_particle(chain0_inner(s), _ESTIMATOR.value))
                     ) if problem.evaluate else None
  print(f"{problem.description}\nestimator {_ESTIMATOR.value} (window {window}), "
        f"{_NUM_CHAINS.value} chain(s), {_META_OPTIMIZER.value}(lr={_META_LR.value}), "
        f"{outer_steps} outer steps; logdir {logdir}")
  wall_start, steps_done_here = time.time(), 0
  step = start
  while step < outer_steps:
    n = min(chunk - step % chunk, outer_steps - step)
    state, infos = run(state, n)
    infos = jax.device_get(infos)
    hyper = jax.device_get(natural(jax.vmap(_unravel_like(theta0))(infos["theta"])))
    evals = jax.device_get(evaluate(state)) if evaluate else {}
    for i in range(n):
      s = step + i + 1
      info = {k: v[i] for k, v in infos.items()}
      log_step(writer, info, {k: v[i] for k, v in hyper.items()}, names, window, s, image_every)
    for k, v in evals.items():
      writer.scalar(f"eval/{k}", v, step + n)
    step += n
    steps_done_here += n
    if step % _CHECKPOINT_EVERY.value == 0 or step == outer_steps:
      writer.flush()
      metaopt.checkpoint.save(checkpoint_path, state)
    skipped = int(infos["num_skipped"][-1])
    if skipped > _MAX_SKIPPED.value:
      writer.flush()
      metaopt.checkpoint.save(checkpoint_path, state)
      writer.close()
      sys.exit(f"stopped at outer step {step}: {skipped} outer steps had non-finite "
               f"hypergradients or inner losses (limit --max_skipped={_MAX_SKIPPED.value}); "
               f"theta stayed at its last finite value {np.asarray(infos['theta'][-1])}. "
               "Lower --meta_lr or set --max_grad_norm.")
    if step % log_every < n or step == outer_steps:
      elapsed = time.time() - wall_start
      eta = elapsed / steps_done_here * (outer_steps - step)
      hp = ", ".join(f"{k}={_short(v[-1])}" for k, v in hyper.items()
                     if not k.startswith("learning_rate_"))
      line = (f"step {step}/{outer_steps} | window loss {float(infos['loss'][-1]):.4g} | {hp}"
              f" | skipped {skipped} | ETA {eta:.0f}s")
      print(line, flush=True)
      logging.info(line)
  summary = {"config": config, "outer_steps": step, "num_skipped": int(state.num_skipped),
             "theta": np.asarray(jax.flatten_util.ravel_pytree(state.theta)[0]).tolist(),
             "theta_names": names,
             "hyperparameters": jax.device_get(problem.hyperparameters(state.theta)),
             "wall_seconds_this_process": time.time() - wall_start}
  if _EVALUATE.value:
    summary["untuned"], summary["tuned"] = compare(problem, theta0, state.theta, _SEED.value)
    print_comparison(summary["untuned"], summary["tuned"], problem.hyperparameters(theta0),
                     problem.hyperparameters(state.theta))
  final_metrics = {f"final/{k}": float(v) for k, v in summary.get("tuned", {}).items()}
  final_metrics["final/num_skipped"] = float(state.num_skipped)
  writer.hparams({**config, "problem_option": " ".join(config["problem_option"])},
                 final_metrics, step, trial_id=os.path.basename(os.path.abspath(logdir)))
  writer.close()
  write_json_atomic(os.path.join(logdir, SUMMARY), summary)
  print(f"summary written to {os.path.join(logdir, SUMMARY)}")


def _first_particle(inner, estimator):
  import jax  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  if metaopt.parse_spec(estimator)[0] in ("pes", "nres"):  # one inner state per particle
    return jax.tree.map(lambda x: x[0], inner)
  return inner


def _unravel_like(theta):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.flatten_util.ravel_pytree(theta)[1]


def _short(v):
  import numpy as np  # pylint: disable=g-import-not-at-top
  v = np.asarray(v)
  if v.ndim == 0:
    return f"{float(v):.4g}"
  return "[" + " ".join(f"{x:.3g}" for x in v.reshape(-1)) + "]"


def log_step(writer, info, hyper, names, window, step, image_every):
  import numpy as np  # pylint: disable=g-import-not-at-top
  writer.scalar("loss/window_sum", info["loss"], step)
  writer.scalar("loss/per_inner_step", info["loss"] / window, step)
  writer.scalar("tuner/finite", float(info["finite"]), step)
  writer.scalar("tuner/num_skipped", info["num_skipped"], step)
  for k, v in info.items():
    if k in ("loss", "grad", "chain_grads", "chain_variance", "finite", "num_skipped", "step",
             "theta", "grad_ema_mean", "grad_ema_var"):
      continue
    writer.scalar(f"estimator/{k}", v, step)
  log_hyperparameters(writer, hyper, step, image_every)
  grad, chains = np.asarray(info["grad"]), np.asarray(info["chain_grads"])
  ema_mean, ema_var = np.asarray(info["grad_ema_mean"]), np.asarray(info["grad_ema_var"])
  chain_var = np.asarray(info["chain_variance"])
  for i, name in enumerate(names):
    writer.scalar(f"hypergrad/{name}", grad[i], step)
    writer.scalar(f"hypergrad_time/mean/{name}", ema_mean[i], step)
    writer.scalar(f"hypergrad_time/variance/{name}", ema_var[i], step)
    writer.scalar(f"hypergrad_time/snr/{name}", abs(ema_mean[i]) / math.sqrt(ema_var[i] + 1e-30),
                  step)
    if chains.shape[0] > 1:
      writer.scalar(f"hypergrad_chains/variance/{name}", chain_var[i], step)
      writer.scalar(f"hypergrad_chains/snr/{name}",
                    abs(grad[i]) / math.sqrt(chain_var[i] / chains.shape[0] + 1e-30), step)
      writer.histogram(f"hypergrad_chains/samples/{name}", chains[:, i], step)


def compare(problem, theta0, theta, seed):
  """One horizon from init with fixed theta0 and with the tuned theta, on the same keys."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  key = jax.random.key(seed + 1)
  keys = jax.random.split(key, problem.system.horizon)

  @jax.jit
  def one(th):
    final, losses = metaopt.full_unroll(problem.system, th, key, keys)
    out = {"meta_loss_mean": jnp.mean(losses), "meta_loss_last": losses[-1]}
    if problem.evaluate:
      out.update(problem.evaluate(final))
    return out

  return ({k: float(v) for k, v in jax.device_get(one(theta0)).items()},
          {k: float(v) for k, v in jax.device_get(one(theta)).items()})


def print_comparison(untuned, tuned, hyper0, hyper):
  import numpy as np  # pylint: disable=g-import-not-at-top
  print("\none horizon of inner training, same keys:")
  print(f"{'':24s}{'untuned':>14s}{'tuned':>14s}")
  for k in untuned:
    print(f"{k:24s}{untuned[k]:14.5g}{tuned[k]:14.5g}")
  for k in hyper:
    if k == "learning_rate_knots":
      continue
    a, b = np.asarray(hyper0[k]), np.asarray(hyper[k])
    if k == "learning_rate_curve":
      idx = np.linspace(0, a.shape[-1] - 1, 6).astype(int)
      print(f"learning-rate schedule at inner steps {idx.tolist()}:")
      print(f"  untuned {_short(a[..., idx])}\n  tuned   {_short(b[..., idx])}")
    else:
      print(f"{k}: untuned {_short(a)}, tuned {_short(b)}")


if __name__ == "__main__":
  app.run(main)
