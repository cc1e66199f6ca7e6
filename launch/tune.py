r"""Tune hyperparameters online while the inner training runs; log everything to TensorBoard.

Examples:
  python -m launch.tune --flagfile=launch/configs/digits_schedule.flags
  python -m launch.tune --problem=mymodel:make_problem --problem_option=hidden=64
  python -m launch.tune --problem=influence_balancing --problem_option=horizon=3000 \
      --estimator=rtrl --num_steps=1 --meta_optimizer=sgd --meta_lr=1e-4 --outer_steps=3000

(mymodel.py, on the Python path, defines make_problem(hidden=32) returning an
unrolled.Problem; see docs/guides/own_model.md.)

The flags map one to one onto metaopt.tune: --meta_optimizer, --meta_lr,
--max_grad_norm, --max_update, --warmup_steps and --decay_steps onto
metaopt.meta_optimizer(name, learning_rate, ...); --logdir, --checkpoint_every,
--log_every and --image_every onto metaopt.tuning.RunOutput(...); the others
onto tune's options of the same name (--validate_every, --significance and
--trust_radius onto its Validation).

Rerunning the same command on an existing --logdir resumes from its last
checkpoint; a logdir written by a different configuration is refused.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import sys

from absl import app
import launch
from absl import flags

import metaopt
import unrolled

# Which estimators take an option, from the table (for the flags' help).
_TAKING = {option: ", ".join(name for name, info in metaopt.ESTIMATOR_TABLE.items()
                             if option in info.takes) for option in ("num_particles", "sigma")}

_PROBLEM = flags.DEFINE_string(
    "problem", "digits_mlp", "Inner problem: a name of unrolled.names(), or the import path "
    "package.module:factory of a function returning an unrolled.Problem.")
_PROBLEM_OPTION = flags.DEFINE_multi_string(
    "problem_option", [], "key=value option of the problem (repeatable), e.g. horizon=300.")
_ESTIMATOR = flags.DEFINE_string(
    "estimator", "rtrl", f"Hypergradient estimator: one of {', '.join(metaopt.ESTIMATORS)}, "
    "optionally with options, e.g. uoro[rho=one_step_variance,rank=4].")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Inner steps per window (must divide the horizon).")
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 8,
                                      f"Particles (even) of {_TAKING['num_particles']}.")
_SIGMA = flags.DEFINE_float("sigma", 0.01, f"Perturbation scale (> 0) of {_TAKING['sigma']}.")
_NUM_CHAINS = flags.DEFINE_integer("num_chains", 1, "Independent estimator chains, averaged.")
_META_OPTIMIZER = flags.DEFINE_enum("meta_optimizer", "adam", sorted(metaopt.META_OPTIMIZERS),
                                    "Outer optimiser of theta.")
_META_LR = flags.DEFINE_float("meta_lr", metaopt.tuning.DEFAULT_META_LR, "Outer learning rate.")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", None, "Clip the hypergradient's global norm.")
_MAX_UPDATE = flags.DEFINE_float(
    "max_update", metaopt.tuning.DEFAULT_MAX_UPDATE,
    "Bound on each coordinate of theta's change per outer step (0: no bound).")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", metaopt.tuning.DEFAULT_WARMUP_STEPS,
                                     "Outer steps of linear meta learning-rate warm-up.")
_ROLLBACK = flags.DEFINE_float(
    "rollback_factor", 1.5, "With --validate_every=0 only: after a horizon whose mean loss "
    "exceeds this multiple of the best horizon's, set theta back to the best horizon's (0: never).")
_VALIDATE_EVERY = flags.DEFINE_integer(
    "validate_every", None, "Outer steps between validations of theta (one fresh training run "
    "at fixed theta; default: one horizon; 0: no validation). The tuned theta is the best "
    "validated one; a theta worse than it by more than the noise is sent back to it.")
_TRUST_RADIUS = flags.DEFINE_float(
    "trust_radius", metaopt.tuning.DEFAULT_TRUST_RADIUS, "Every coordinate of theta (log / logit units) "
    "stays within this of the best validated theta, times the step's shrink (0: none).")
_SIGNIFICANCE = flags.DEFINE_float(
    "significance", metaopt.tuning.DEFAULT_SIGNIFICANCE, "Standard errors of the paired validation "
    "difference a theta must win by to become the best, or lose by to be sent back.")
_DECAY_STEPS = flags.DEFINE_integer(
    "decay_steps", metaopt.tuning.DEFAULT_DECAY_STEPS, "Time scale (outer steps) of the meta learning "
    "rate's 1/sqrt(1 + t/decay_steps) decay (0: constant).")
_MODE = flags.DEFINE_enum(
    "mode", "restarts", list(metaopt.tuning.MODES),
    "restarts: the inner training restarts every horizon while tuning goes on; single_run: "
    "tune during ONE training run (the horizon), then report its own final model and a fresh "
    "retrain with the final theta.")
_OUTER_STEPS = flags.DEFINE_integer(
    "outer_steps", None, "Outer steps, one window each (default 100; single_run: one horizon, "
    "and no other value).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same run.")
_LOGDIR = flags.DEFINE_string(
    "logdir", None, "Run folder (default runs/tune/<problem>-<estimator>-<time>: apart from "
    "studies, so `tensorboard --logdir runs/tune` shows tuning runs alone).")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 100, "Outer steps between checkpoints.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 0, "Outer steps between progress lines (0: ~20 lines).")
_IMAGE_EVERY = flags.DEFINE_integer("image_every", 0,
                                    "Outer steps between schedule images (0: one per progress line).")
_MAX_SKIPPED = flags.DEFINE_integer(
    "max_skipped", 100, "Stop once this many outer steps had non-finite hypergradients or losses.")
_EVALUATE = flags.DEFINE_bool("evaluate", True,
                              "At the end, train one horizon with the initial and the tuned theta.")


def validate_flags():
  """Every check that needs no compute; raises app.UsageError naming the flag.

  Returns the problem and the logdir, which is made (and checked writable)
  last: a bad flag leaves no file behind.
  """
  try:
    unrolled.options(_PROBLEM.value)  # the name or import path alone, before its options
  except unrolled.ProblemError as e:
    raise app.UsageError(f"--problem={e.name!r}{e.reason}") from None
  try:
    metaopt.estimator_info(_ESTIMATOR.value)
  except ValueError as e:
    raise app.UsageError(f"--estimator={_ESTIMATOR.value!r}: {e}") from None
  for flag in (_NUM_STEPS, _NUM_CHAINS, _OUTER_STEPS, _CHECKPOINT_EVERY):
    if flag.value is not None and flag.value < 1:
      raise app.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  for flag in (_LOG_EVERY, _IMAGE_EVERY, _MAX_SKIPPED, _WARMUP_STEPS, _DECAY_STEPS,
               _VALIDATE_EVERY):
    if flag.value is not None and flag.value < 0:
      raise app.UsageError(f"--{flag.name} must be >= 0, got {flag.value}")
  if _MAX_UPDATE.value is not None and not (math.isfinite(_MAX_UPDATE.value)
                                            and _MAX_UPDATE.value >= 0):
    raise app.UsageError(f"--max_update must be a finite number >= 0 (0: no bound), got "
                         f"{_MAX_UPDATE.value}")
  for flag in (_SIGNIFICANCE, _TRUST_RADIUS):
    if not (math.isfinite(flag.value) and flag.value >= 0):
      raise app.UsageError(f"--{flag.name} must be a finite number >= 0, got {flag.value}")
  if not (_ROLLBACK.value == 0 or _ROLLBACK.value >= 1):
    raise app.UsageError(f"--rollback_factor must be 0 (never) or >= 1, got {_ROLLBACK.value}")
  for flag in (_META_LR, _MAX_GRAD_NORM):
    if flag.value is not None and not (math.isfinite(flag.value) and flag.value > 0):
      raise app.UsageError(f"--{flag.name} must be a finite number > 0, got {flag.value}")
  if not 0 <= _SEED.value < 2**32:
    raise app.UsageError(f"--seed must be in [0, 2**32), got {_SEED.value}")
  try:
    problem = unrolled.get(_PROBLEM.value, **unrolled.parse_options(_PROBLEM_OPTION.value))
  except unrolled.ProblemError as e:
    raise app.UsageError(f"--problem={e.name!r}{e.reason}") from None
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--problem_option: {e}") from None
  try:
    estimator = metaopt.get_estimator(_ESTIMATOR.value, problem.system, num_steps=_NUM_STEPS.value,
                                      num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value)
    metaopt.devices.check_memory(estimator, problem.theta, num_chains=_NUM_CHAINS.value,
                         what="--num_chains")
    window = metaopt.horizon.window_length(_ESTIMATOR.value, problem.system, _NUM_STEPS.value)
  except ValueError as e:  # its messages start with the option's name: name the flag that set it
    if str(e).startswith("system."):  # the problem's own value, e.g. horizon=0
      raise app.UsageError(f"--problem_option: {e}") from None
    own = metaopt.parse_spec(_ESTIMATOR.value)[1]
    flag = [o for o in metaopt.estimator_info(_ESTIMATOR.value).takes
            if o not in own and re.match(rf"{o}\b", str(e))]
    raise app.UsageError(f"--{e}" if flag or str(e).startswith("--") else
                         f"--estimator={_ESTIMATOR.value!r}: {e}") from None
  one_run = problem.system.horizon // window
  if _MODE.value == "single_run" and _OUTER_STEPS.value not in (None, one_run):
    raise app.UsageError(f"--outer_steps={_OUTER_STEPS.value} with --mode=single_run: one "
                         f"training run is {one_run} outer steps (horizon "
                         f"{problem.system.horizon} / window {window}); leave --outer_steps out")
  logdir = _LOGDIR.value or os.path.join(
      "runs", "tune", f"{re.sub(r'[^A-Za-z0-9_.=-]', '_', _PROBLEM.value)}-"
      f"{re.sub(r'[^A-Za-z0-9_.=-]', '_', _ESTIMATOR.value)}-"
      f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  try:
    metaopt.files.make_folder(logdir)
  except OSError as e:
    raise app.UsageError(f"--logdir {logdir!r} is not writable: {e}") from None
  return problem, logdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  problem, logdir = validate_flags()
  try:
    metaopt.tune(
        problem.system, problem.theta, estimator=_ESTIMATOR.value, num_steps=_NUM_STEPS.value,
        num_particles=_NUM_PARTICLES.value, sigma=_SIGMA.value,
        # The meta-optimiser's flags, one to one.
        meta_optimizer=metaopt.meta_optimizer(
            _META_OPTIMIZER.value, _META_LR.value, max_grad_norm=_MAX_GRAD_NORM.value,
            max_update=_MAX_UPDATE.value or None, warmup_steps=_WARMUP_STEPS.value,
            decay_steps=_DECAY_STEPS.value or None),
        rollback_factor=_ROLLBACK.value or None, mode=_MODE.value, outer_steps=_OUTER_STEPS.value,
        validation=_VALIDATE_EVERY.value != 0 and unrolled.validation(
            problem, every=_VALIDATE_EVERY.value or None, seed=(_SEED.value + 1) % 2**32,
            significance=_SIGNIFICANCE.value, radius=_TRUST_RADIUS.value or None),
        num_chains=_NUM_CHAINS.value, seed=_SEED.value,
        # Where and how often the run writes, one to one.
        output=metaopt.tuning.RunOutput(logdir, checkpoint_every=_CHECKPOINT_EVERY.value,
                                        log_every=_LOG_EVERY.value,
                                        image_every=_IMAGE_EVERY.value),
        max_skipped=_MAX_SKIPPED.value,
        evaluate=problem.evaluate, hyperparameters=problem.hyperparameters,
        compare=_EVALUATE.value, description=problem.description,
        # With metaopt.tune's own settings, what defines the run: a logdir of others is refused.
        config={"problem": _PROBLEM.value, "problem_option": _PROBLEM_OPTION.value})
  except (metaopt.files.RunFolderError, metaopt.checkpoint.CheckpointError) as e:
    raise app.UsageError(f"--{e}" if str(e).startswith("logdir") else f"--logdir: {e}") from None
  except metaopt.TuningStopped as e:
    sys.exit(f"stopped at outer step {e.step}: {e.num_skipped} outer steps had non-finite "
             f"hypergradients or inner losses (limit --max_skipped={_MAX_SKIPPED.value}); theta "
             f"stayed at its last finite value {e.theta}. Lower --meta_lr or set --max_grad_norm.")


if __name__ == "__main__":
  launch.run(main)
