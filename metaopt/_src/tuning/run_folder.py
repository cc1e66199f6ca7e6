"""A tuning run's folder: claimed and locked, its configuration written or checked on resume."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping

import numpy as np

from metaopt._src.core import base
from metaopt._src.estimators import registry
from metaopt._src.files import files

# Files of a run folder.
CHECKPOINT, CONFIG, SUMMARY = "checkpoint.npz", "config.json", "summary.json"


class RunFolderError(ValueError):
  """The run folder cannot be used: locked, a link, or a run of another configuration."""


def session_hparams(run_config):
  """The hparams session's values: the run's config without the shared options its estimator
  does not take (rtrl has no particles) and without theta's digest."""
  unused = {"theta_init"}
  if run_config["estimator"] != "custom":
    takes = registry.estimator_info(run_config["estimator"]).takes
    unused |= {o for o in ("num_steps", "num_particles", "sigma") if o not in takes}
  flat = {}
  for k, v in run_config.items():
    if isinstance(v, dict):  # e.g. validation: {"every": 10, ...} -> validation_every
      flat.update({f"{k}_{kk}": vv for kk, vv in v.items()})
    elif k not in unused:
      flat[k] = " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
  # HParams checks its first columns: what a reader compares runs by comes first.
  first = [k for k in ("problem", "estimator", "num_steps", "num_particles", "sigma",
                       "num_chains", "meta_optimizer", "meta_lr", "seed") if k in flat]
  return {k: flat[k] for k in first + [k for k in flat if k not in first]}


def run_config(spec, num_steps, num_particles, sigma, meta_optimizer, num_chains, seed,
               checkpoint_every, theta, extra):
  """What defines the run (config.json; a logdir holding other values is refused)."""
  own = {"estimator": spec or "custom"}
  if spec is not None:
    own.update(num_steps=num_steps, num_particles=num_particles, sigma=sigma)
  own["num_chains"] = num_chains
  # The keys of the options tune took before they were grouped: old run folders still resume.
  options = getattr(meta_optimizer, "options", None)
  if options:
    own.update(meta_optimizer=options["name"], meta_lr=options["learning_rate"])
  else:
    own["meta_optimizer"] = "custom"
  own.update(max_grad_norm=(options or {}).get("max_grad_norm"), seed=int(seed),
             checkpoint_every=checkpoint_every)
  if options:
    own.update({k: options[k] for k in ("max_update", "warmup_steps", "decay_steps")})
  flat = np.asarray(base.ravel(theta)[0])
  # The initial theta, as a digest: a resumed run must start from the same values.
  own["theta_init"] = hashlib.sha256(flat.tobytes() + str(flat.dtype).encode()).hexdigest()[:16]
  if extra is not None:
    if not isinstance(extra, Mapping):
      raise ValueError(f"config must be a dict, got {base.describe(extra)}")
    clash = sorted(k for k in extra if k in own and extra[k] != own[k])
    if clash:
      raise ValueError(f"config sets {clash}, which tune's own arguments set differently")
    own = {**extra, **own}
  try:  # JSON values only: a str() of an object (its address) would never match on resume
    return json.loads(json.dumps(own, default=lambda x: x.tolist() if isinstance(
        x, (np.ndarray, np.generic)) else _not_json(x)))
  except (TypeError, ValueError) as e:
    raise ValueError(f"config must hold JSON values (numbers, strings, lists, dicts): {e}"
                     ) from None


def _not_json(x):
  raise TypeError(f"{type(x).__name__} {x!r} is not one")


def claim(logdir, run_config):
  """Makes and locks the logdir, then writes config.json or checks the one there.

  Returns (lock, whether a run is resumed).
  """
  try:
    files.make_folder(logdir)
    lock = files.lock_folder(logdir)  # a second process on this logdir is refused
  except OSError as e:
    raise RunFolderError(_os_message(logdir, e)) from None
  try:
    files.remove_stale_temporaries(logdir)  # ours alone now: what killed runs left behind
    # Refused now, not when written after the run's compute.
    files.refuse_links(logdir, (CONFIG, CHECKPOINT, SUMMARY, "untuned"))
    path = os.path.join(logdir, CONFIG)
    if os.path.exists(path):
      try:
        with open(path) as f:
          old = json.load(f)
      except (OSError, ValueError) as e:
        raise RunFolderError(f"logdir {logdir!r}: {CONFIG} is unreadable ({e}); delete it (and "
                             "the checkpoint) or pick another logdir") from None
      diff = {k: (old.get(k), v) for k, v in run_config.items() if old.get(k) != v}
      diff.update({k: (v, None) for k, v in old.items() if k not in run_config})
      if diff:
        details = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise RunFolderError(f"logdir {logdir!r} holds a run of a different configuration "
                             f"({details}); pick another logdir to start a new run")
      return lock, True
    if os.path.exists(os.path.join(logdir, CHECKPOINT)):
      raise RunFolderError(f"logdir {logdir!r} has a checkpoint but no {CONFIG}; refusing to "
                           "overwrite it")
    files.write_atomic(path, to_json(run_config))
    return lock, False
  except OSError as e:
    lock.release()
    raise RunFolderError(_os_message(logdir, e)) from None
  except BaseException:
    lock.release()
    raise


def _os_message(logdir, e):
  if e.filename and e.strerror and str(e.filename) not in e.strerror:
    return f"logdir {logdir!r}: {e.strerror} ({e.filename})"
  return f"logdir {logdir!r}: {e.strerror or e}"


def to_json(obj) -> str:
  return json.dumps(obj, indent=2, default=lambda x: x.tolist() if isinstance(
      x, (np.ndarray, np.generic)) else str(x))
