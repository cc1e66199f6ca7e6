"""tune's grouped options: where a run writes (RunOutput), and the options the groups replaced."""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import optax

from metaopt._src.core import base
from metaopt._src.tuning import meta_optimizer as meta_optimizer_lib
from metaopt._src.tuning.meta_optimizer import META_OPTIMIZERS


class RunOutput(NamedTuple):
  """Where a tuning run writes and how often: :func:`~metaopt.tune`'s ``output``.

  Attributes:
    logdir: the run folder (made if missing): TensorBoard logs,
      ``checkpoint.npz``, ``config.json``, ``summary.json``.
    checkpoint_every: outer steps between checkpoints.
    log_every: outer steps between progress lines (0: ~20 lines).
    image_every: outer steps between schedule images (0: one per progress line).

  Examples:
    >>> import metaopt
    >>> metaopt.tuning.RunOutput("runs/mine", checkpoint_every=50)
    RunOutput(logdir='runs/mine', checkpoint_every=50, log_every=0, image_every=0)
  """
  logdir: str | os.PathLike | None = None
  checkpoint_every: int = 100
  log_every: int = 0
  image_every: int = 0


def check_output(output: Any) -> RunOutput:
  """``tune``'s ``output`` as a checked RunOutput (a path is its logdir; None writes nothing)."""
  if output is None or isinstance(output, (str, os.PathLike)):
    output = RunOutput(output)
  if not isinstance(output, RunOutput):
    raise ValueError(f"output must be a metaopt.tuning.RunOutput, a folder or None, got "
                     f"{base.describe(output)}")
  base.check_count(output.checkpoint_every, "checkpoint_every")
  for value, name in ((output.log_every, "log_every"), (output.image_every, "image_every")):
    base.check_count(value, name, minimum=0)
  return output._replace(logdir=None if output.logdir is None else os.fspath(output.logdir))


def describe_optimizer(opt):
  options = getattr(opt, "options", None)
  return f"{options['name']}(lr={options['learning_rate']})" if options else "custom"


# tune's options before they were grouped, by the group that holds them now.
_MOVED_META = ("meta_lr", "max_grad_norm", "max_update", "warmup_steps", "decay_steps")
_MOVED_OUTPUT = ("logdir", "checkpoint_every", "log_every", "image_every")


def moved_options(meta_optimizer, output, moved):
  """The meta-optimiser and the RunOutput, from the groups or from the options they replaced."""
  unknown = sorted(set(moved) - set(_MOVED_META) - set(_MOVED_OUTPUT))
  if unknown:
    raise TypeError(f"tune() got an unexpected keyword argument {unknown[0]!r}")
  meta = {k: moved[k] for k in _MOVED_META if k in moved}
  out = {k: moved[k] for k in _MOVED_OUTPUT if k in moved}
  if meta:
    warnings.warn(f"tune's {sorted(meta)} moved into meta_optimizer=metaopt.meta_optimizer("
                  "name, learning_rate, ...); the old options will be removed in the next release",
                  DeprecationWarning, stacklevel=3)
    if isinstance(meta_optimizer, str):
      meta["learning_rate"] = meta.pop("meta_lr", meta_optimizer_lib.DEFAULT_META_LR)
      meta_optimizer = meta_optimizer_lib.meta_optimizer(meta_optimizer, **meta)
    elif set(meta) - {"max_grad_norm"}:
      raise ValueError(f"{sorted(set(meta) - {'max_grad_norm'})} configure a named "
                       "meta-optimiser; a custom one is used as given")
    elif meta["max_grad_norm"] is not None:
      meta_optimizer = optax.chain(optax.clip_by_global_norm(
          base.check_float(meta["max_grad_norm"], "max_grad_norm")), meta_optimizer)
  if out:
    warnings.warn(f"tune's {sorted(out)} moved into output=metaopt.tuning.RunOutput(logdir, ...); "
                  "the old options will be removed in the next release", DeprecationWarning,
                  stacklevel=3)
    if output is not None:
      raise ValueError(f"pass either output or {sorted(out)}, not both")
    output = RunOutput(**out)
  if isinstance(meta_optimizer, str):
    meta_optimizer = meta_optimizer_lib.meta_optimizer(meta_optimizer)
  elif not (hasattr(meta_optimizer, "init") and hasattr(meta_optimizer, "update")):
    raise ValueError(f"meta_optimizer must be a name of {sorted(META_OPTIMIZERS)}, "
                     f"metaopt.meta_optimizer(...) or an optax.GradientTransformation, got "
                     f"{base.describe(meta_optimizer)}")
  return meta_optimizer, check_output(output)
