"""Checkpoints of pytrees of arrays: plain numpy files, written atomically (write, then rename).

A checkpoint may carry the configuration of the run that wrote it (a JSON
object, with its sha256 fingerprint): :func:`restore` then refuses a
checkpoint of another configuration, naming the options that differ. Files
are always loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any, Mapping

import jax
import numpy as np

from metaopt._src.files import files

_CONFIG_KEY = "__config__"
_FINGERPRINT_KEY = "__fingerprint__"


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored: damaged, or written by another configuration."""


def canonical_json(config: Mapping[str, Any]) -> str:
  """The configuration as JSON with sorted keys (non-JSON values as their ``str``)."""
  default = lambda x: x.tolist() if isinstance(x, (np.ndarray, np.generic)) else str(x)
  return json.dumps(config, sort_keys=True, separators=(",", ":"), default=default)


def fingerprint(config: Mapping[str, Any]) -> str:
  """sha256 (hex) of the configuration's :func:`canonical_json`.

  Examples:
    >>> from metaopt import checkpoint
    >>> checkpoint.fingerprint({"a": 1, "b": 2}) == checkpoint.fingerprint({"b": 2, "a": 1})
    True
  """
  return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def save(path: str, tree: Any, *, config: Mapping[str, Any] | None = None) -> None:
  """Saves the leaves of ``tree`` to ``path`` (.npz) with :func:`~metaopt.files.write_atomic`.

  A crash leaves the old file intact, and a symbolic link at ``path`` is refused.

  Args:
    path: the .npz file.
    tree: a pytree of arrays.
    config: the run's configuration (JSON-able): stored with its fingerprint,
      so that :func:`restore` with another configuration is refused.

  Examples:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from metaopt import checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> checkpoint.save(path, {"w": jnp.ones(2)}, config={"lr": 0.1})
    >>> checkpoint.restore(path, {"w": jnp.zeros(2)}, config={"lr": 0.1})["w"]
    Array([1., 1.], dtype=float32)
    >>> checkpoint.restore(path, {"w": jnp.zeros(2)}, config={"lr": 0.2})
    Traceback (most recent call last):
    ...
    metaopt._src.files.checkpoint.CheckpointError: ... was written by another configuration (lr: 0.1 there, 0.2 now); ...
  """
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
  extra = {}
  if config is not None:
    extra = {_CONFIG_KEY: np.array(canonical_json(config)),
             _FINGERPRINT_KEY: np.array(fingerprint(config))}
  buffer = io.BytesIO()  # serialised in memory: write_atomic then writes and renames it whole
  np.savez(buffer, *leaves, **extra)
  files.write_atomic(path, buffer.getvalue())


def restore(path: str, template: Any, *, config: Mapping[str, Any] | None = None) -> Any:
  """Loads a :func:`save`d file into the structure, shapes and dtypes of ``template``.

  Args:
    path: the .npz file.
    template: a pytree with the leaves' shapes and dtypes (arrays, or
      ``jax.ShapeDtypeStruct`` from :func:`jax.eval_shape`: nothing is computed).
    config: the configuration of the run restoring it. A checkpoint saved with
      another configuration is refused; one saved without any is accepted.

  Raises:
    CheckpointError: (a ``ValueError``) one line naming the file and what to
      do, if the file is damaged (truncated, not an .npz, pickled objects) or
      from another configuration or shapes.
  """
  leaves, treedef = jax.tree.flatten(template)
  stored_config, arrays = _load(path)
  if config is not None and stored_config is not None:
    if stored_config["fingerprint"] != fingerprint(config):
      new = json.loads(canonical_json(config))
      old = stored_config["config"]
      diff = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                       for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
      raise CheckpointError(f"checkpoint {path} was written by another configuration "
                            f"({diff or 'fingerprint differs'}); delete it or use the matching "
                            "configuration")
  if len(arrays) != len(leaves):
    raise CheckpointError(f"checkpoint {path} has {len(arrays)} arrays, expected {len(leaves)}: "
                          "it was written by a different configuration")
  for i, (a, t) in enumerate(zip(arrays, leaves)):
    dtype = t.dtype if hasattr(t, "dtype") else np.asarray(t).dtype
    if a.shape != tuple(np.shape(t)) or a.dtype != dtype:
      raise CheckpointError(f"checkpoint {path}: array {i} is {a.shape} {a.dtype}, expected "
                            f"{np.shape(t)} {dtype}: a different configuration")
  return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in arrays])


def _load(path):
  """(stored config and fingerprint or None, arrays in order); CheckpointError if damaged."""
  damaged = (f"checkpoint {path} is damaged or not a checkpoint ({{}}); delete it to start "
             "afresh, or choose another folder")
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array
      raise CheckpointError(damaged.format("not an .npz archive"))
    with data:
      count = sum(1 for k in data.files if k.startswith("arr_"))
      arrays = [data[f"arr_{i}"] for i in range(count)]
      stored = None
      if _CONFIG_KEY in data.files:
        stored = {"config": json.loads(str(data[_CONFIG_KEY])),
                  "fingerprint": str(data[_FINGERPRINT_KEY])}
  except CheckpointError:
    raise
  except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError, UnicodeDecodeError,
          zipfile.LargeZipFile) as e:
    if isinstance(e, FileNotFoundError):
      raise
    reason = ("not a numpy archive; loading it would unpickle it, which is never done"
              if "pickle" in str(e)
              else f"{type(e).__name__}: {e}".splitlines()[0])
    raise CheckpointError(damaged.format(reason)) from None
  return stored, arrays
