r"""Meta-train a learned optimizer over a family of tasks; compare it on held-out tasks.

Examples:
  python -m launch.meta_train --flagfile=launch/configs/meta_train_mnist1d_mlp.flags
  python -m launch.meta_train --family=quadratic --family_option=dim=10 --estimator=pes

Across processes, one command per process, each with its own --process_id and all
with process 0's address (README, "Learned optimizers"):
  python -m launch.meta_train --flagfile=... --num_processes=2 --process_id=0 \
      --coordinator_address=10.0.0.1:29517

Rerunning the same command on an existing --logdir resumes from its last
checkpoint (and, once meta-training is done, only compares again); a logdir
written by a different configuration is refused.
"""

from __future__ import annotations

import datetime
import math
import os
import re

from absl import app
from absl import flags

import launch

_FAMILY = flags.DEFINE_string("family", "quadratic",
                              "Task family: quadratic, mnist1d_mlp or digits_mlp.")
_FAMILY_OPTION = flags.DEFINE_multi_string(
    "family_option", [], "key=value option of the family (repeatable), e.g. dim=1000.")
_LOPT = flags.DEFINE_string("learned_optimizer", "mlp_lopt",
                            "Learned optimizer: mlp_lopt, learnable_adam or learnable_sgd.")
_LOPT_OPTION = flags.DEFINE_multi_string(
    "learned_optimizer_option", [], "key=value option of the learned optimizer (repeatable), "
    "e.g. hidden=(32,32).")
_ESTIMATOR = flags.DEFINE_string(
    "estimator", "pes", "Meta-gradient estimator: pes, truncated_es, nres, tbptt or full_bptt "
    "(options in brackets, e.g. pes[num_particles=4]).")
_HORIZON = flags.DEFINE_integer("horizon", 100, "Inner steps of one task's training (T).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Inner steps per window (K); divides T.")
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 2,
                                      "Particles (even) per task of the ES estimators.")
_SIGMA = flags.DEFINE_float("sigma", 0.01, "Perturbation scale of the ES estimators.")
_NUM_TASKS = flags.DEFINE_integer(
    "num_tasks", 8, "Tasks trained side by side (tuner chains), each sampling a new task every "
    "horizon; spread over the processes.")
_META_OPTIMIZER = flags.DEFINE_enum("meta_optimizer", "adam", ["adam", "sgd", "rmsprop",
                                                               "momentum"], "Outer optimiser.")
_META_LR = flags.DEFINE_float("meta_lr", 1e-3, "Outer learning rate.")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", 0.0,
                                    "Clip the meta-gradient's global norm (0: no clipping).")
_OUTER_STEPS = flags.DEFINE_integer("outer_steps", 1000, "Meta-gradient steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same run.")
_LOGDIR = flags.DEFINE_string(
    "logdir", None, "Run folder (default runs/meta_train/<family>-<optimizer>-<estimator>-<time>).")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 500,
                                         "Outer steps between checkpoints (0: at the end only).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 100, "Outer steps between progress lines.")
_TEST_EVERY = flags.DEFINE_integer(
    "test_every", 500, "Outer steps between held-out test evaluations (0: at the end only).")
_NUM_TEST_TASKS = flags.DEFINE_integer("num_test_tasks", 8,
                                       "Held-out tasks of the test evaluations and comparison.")
_VALIDATE_EVERY = flags.DEFINE_integer(
    "validate_every", 50, "Outer steps between validations of the weights on held-out validation "
    "tasks (their own stream, not the test tasks); the product is the best validated weights, "
    "and weights worse than them beyond the noise are sent back (0: no validation, the product "
    "is the last weights).")
_SHRINK = flags.DEFINE_float(
    "shrink", 0.5, "Factor on the meta step after each validation that sends the weights back "
                   "to the best ones, in (0, 1] (1: never shrink).")
_NUM_VALIDATION_TASKS = flags.DEFINE_integer("num_validation_tasks", 8,
                                             "Validation tasks (with --validate_every).")
_COMPARE = flags.DEFINE_bool(
    "compare", True, "At the end, train the held-out tasks with the meta-trained optimizer and "
    "with Adam and SGD at every rate of their grids; write comparison.{json,md,png}.")
_ADAM_LRS = flags.DEFINE_list("adam_lrs", ["3e-4", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1"],
                              "Adam's learning-rate grid of the comparison.")
_SGD_LRS = flags.DEFINE_list("sgd_lrs", ["1e-2", "3e-2", "0.1", "0.3", "1"],
                             "SGD's learning-rate grid of the comparison.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1,
                                      "Processes of a multi-process run (JAX's distributed runtime).")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index, 0 .. num_processes-1.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (with --num_processes > 1).")


def _check_distributed():
  """Pure-Python checks of the process flags, then the distributed runtime (before JAX works)."""
  if _NUM_PROCESSES.value < 1:
    raise app.UsageError(f"--num_processes must be >= 1, got {_NUM_PROCESSES.value}")
  if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    raise app.UsageError(f"--process_id must be in [0, {_NUM_PROCESSES.value}), got "
                         f"{_PROCESS_ID.value}")
  if _NUM_PROCESSES.value == 1:
    if _COORDINATOR.value:
      raise app.UsageError("--coordinator_address is for --num_processes > 1")
    return
  if (not _COORDINATOR.value or not re.fullmatch(r"[^\s:]+:\d{1,5}", _COORDINATOR.value)
      or not 0 < int(_COORDINATOR.value.rsplit(":", 1)[1]) < 65536):
    raise app.UsageError(f"--coordinator_address must be host:port with --num_processes > 1, "
                         f"got {_COORDINATOR.value!r}")
  import jax  # pylint: disable=g-import-not-at-top
  # CPU collectives across processes (GPU and TPU backends bring their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)


def _floats(flag):
  try:
    values = [float(v) for v in flag.value]
  except ValueError:
    raise app.UsageError(f"--{flag.name} must be a comma-separated list of numbers, got "
                         f"{','.join(flag.value)!r}") from None
  if not values or not all(math.isfinite(v) and v > 0 for v in values):
    raise app.UsageError(f"--{flag.name} must list learning rates > 0, got {flag.value}")
  return values


def validate_flags():
  """Every check, before any file is written; returns what main needs.

  The process flags come first: with several processes the distributed runtime
  starts before anything else touches JAX.
  """
  _check_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  from metaopt import learned_optimizers  # pylint: disable=g-import-not-at-top
  import unrolled  # pylint: disable=g-import-not-at-top
  from unrolled import families  # pylint: disable=g-import-not-at-top
  from studies import meta_training  # pylint: disable=g-import-not-at-top

  if _FAMILY.value not in families.FAMILIES:
    raise app.UsageError(f"--family={_FAMILY.value!r} is unknown; choose one of "
                         f"{sorted(families.FAMILIES)}")
  if _LOPT.value not in learned_optimizers.LEARNED_OPTIMIZERS:
    raise app.UsageError(f"--learned_optimizer={_LOPT.value!r} is unknown; choose one of "
                         f"{sorted(learned_optimizers.LEARNED_OPTIMIZERS)}")
  name = _ESTIMATOR.value.split("[")[0]
  if name not in meta_training.ESTIMATORS:
    raise app.UsageError(f"--estimator={_ESTIMATOR.value!r}: meta-training takes one of "
                         f"{list(meta_training.ESTIMATORS)}")
  for flag in (_HORIZON, _NUM_STEPS, _NUM_TASKS, _OUTER_STEPS, _NUM_TEST_TASKS, _LOG_EVERY,
               _NUM_VALIDATION_TASKS):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  for flag in (_CHECKPOINT_EVERY, _TEST_EVERY, _VALIDATE_EVERY):
    if flag.value < 0:
      raise app.UsageError(f"--{flag.name} must be >= 0, got {flag.value}")
  if not (math.isfinite(_META_LR.value) and _META_LR.value > 0):
    raise app.UsageError(f"--meta_lr must be a finite number > 0, got {_META_LR.value}")
  if not 0 < _SHRINK.value <= 1:
    raise app.UsageError(f"--shrink must lie in (0, 1], got {_SHRINK.value}")
  if not (math.isfinite(_MAX_GRAD_NORM.value) and _MAX_GRAD_NORM.value >= 0):
    raise app.UsageError(f"--max_grad_norm must be a finite number >= 0, got "
                         f"{_MAX_GRAD_NORM.value}")
  if not 0 <= _SEED.value < 2**32:
    raise app.UsageError(f"--seed must be in [0, 2**32), got {_SEED.value}")
  adam_lrs, sgd_lrs = _floats(_ADAM_LRS), _floats(_SGD_LRS)
  if _NUM_TASKS.value % jax.device_count():
    raise app.UsageError(f"--num_tasks={_NUM_TASKS.value} must be a multiple of the devices of "
                         f"all processes ({jax.device_count()}), which share the tasks")
  try:
    family = families.FAMILIES[_FAMILY.value](**unrolled.parse_options(_FAMILY_OPTION.value))
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--family_option: {e}") from None
  try:
    lopt = learned_optimizers.LEARNED_OPTIMIZERS[_LOPT.value](
        **unrolled.parse_options(_LOPT_OPTION.value))
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--learned_optimizer_option: {e}") from None
  system = families.family_system(family, lopt, horizon=_HORIZON.value)
  theta = lopt.init(jax.random.key(_SEED.value))
  try:
    est = metaopt.get_estimator(_ESTIMATOR.value, system, num_steps=_NUM_STEPS.value,
                                num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value)
    metaopt.devices.check_memory(est, theta, num_chains=_NUM_TASKS.value, what="--num_tasks")
  except ValueError as e:
    text = str(e)
    if text.startswith("system.horizon"):
      raise app.UsageError(f"--horizon: {text}") from None
    own = metaopt.parse_spec(_ESTIMATOR.value)[1]  # options the spec itself sets
    flag = [o for o in ("num_steps", "num_particles", "sigma")
            if o not in own and re.match(rf"{o}\b", text)]
    raise app.UsageError(f"--{text}" if flag else
                         f"--estimator={_ESTIMATOR.value!r}: {text}") from None
  logdir = _LOGDIR.value or os.path.join(
      "runs", "meta_train", f"{_FAMILY.value}-{_LOPT.value}-{launch.safe_name(_ESTIMATOR.value)}-"
      f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  if jax.process_index() == 0:
    try:
      metaopt.files.make_folder(logdir)
    except OSError as e:
      raise app.UsageError(f"--logdir {logdir!r} is not writable: {e}") from None
  return family, lopt, system, theta, logdir, adam_lrs, sgd_lrs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  family, lopt, system, theta, logdir, adam_lrs, sgd_lrs = validate_flags()
  import jax  # pylint: disable=g-import-not-at-top  (after the distributed runtime started)
  import metaopt  # pylint: disable=g-import-not-at-top
  from studies import meta_training  # pylint: disable=g-import-not-at-top
  meta_optimizer = metaopt.meta_optimizer(
      _META_OPTIMIZER.value, _META_LR.value, max_grad_norm=_MAX_GRAD_NORM.value or None,
      decay_steps=None)
  test = meta_training.evaluation_fn(family, lopt, num_tasks=_NUM_TEST_TASKS.value,
                                     num_steps=_HORIZON.value, seed=_SEED.value)
  validation = None if not _VALIDATE_EVERY.value else meta_training.validation(
      family, lopt, num_tasks=_NUM_VALIDATION_TASKS.value, num_steps=_HORIZON.value,
      seed=_SEED.value, every=_VALIDATE_EVERY.value, shrink=_SHRINK.value)
  config = {"family": _FAMILY.value, "family_option": _FAMILY_OPTION.value,
            "learned_optimizer": _LOPT.value, "learned_optimizer_option": _LOPT_OPTION.value,
            "horizon": _HORIZON.value, "meta_optimizer": _META_OPTIMIZER.value,
            "meta_lr": _META_LR.value, "max_grad_norm": _MAX_GRAD_NORM.value,
            "checkpoint_every": _CHECKPOINT_EVERY.value,
            "num_validation_tasks": _NUM_VALIDATION_TASKS.value if validation else None,
            "shrink": _SHRINK.value if validation else None}
  if meta_training.is_main():
    print(f"{family.description}\nlearned optimizer {lopt.name} "
          f"({metaopt.learned_optimizers.num_weights(theta)} weights), estimator "
          f"{_ESTIMATOR.value}, {_NUM_TASKS.value} tasks, {_OUTER_STEPS.value} outer steps; "
          f"logdir {logdir}", flush=True)
  try:
    result = meta_training.meta_train(
        system, theta, estimator=_ESTIMATOR.value, num_steps=_NUM_STEPS.value,
        num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value, num_tasks=_NUM_TASKS.value,
        meta_optimizer=meta_optimizer, outer_steps=_OUTER_STEPS.value, seed=_SEED.value,
        logdir=logdir, checkpoint_every=_CHECKPOINT_EVERY.value, log_every=_LOG_EVERY.value,
        test_every=_TEST_EVERY.value, test=test, validation=validation, config=config)
  except (metaopt.files.RunFolderError, metaopt.checkpoint.CheckpointError) as e:
    raise app.UsageError(f"--{e}" if str(e).startswith("logdir") else f"--logdir: {e}") from None
  if _COMPARE.value:  # on every process (local work): none waits alone at the shutdown barrier
    comparison = meta_training.compare(
        family, lopt, result.theta, num_tasks=_NUM_TEST_TASKS.value, num_steps=_HORIZON.value,
        seed=_SEED.value, adam_lrs=adam_lrs, sgd_lrs=sgd_lrs)
    if meta_training.is_main():
      paths = meta_training.write_comparison(logdir, comparison)
      print(meta_training.comparison_markdown(comparison) + f"written: {', '.join(paths)}",
            flush=True)
  if _NUM_PROCESSES.value > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  launch.run(main)
