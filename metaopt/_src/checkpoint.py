"""Checkpoints of pytrees of arrays: plain numpy files, written atomically (write, then rename)."""

from __future__ import annotations

import io
from typing import Any

import jax
import numpy as np

from metaopt._src import files


def save(path: str, tree: Any) -> None:
  """Saves the leaves of ``tree`` to ``path`` (.npz) with :func:`~metaopt.write_atomic`.

  A crash leaves the old file intact, and a symbolic link at ``path`` is refused.
  """
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
  buffer = io.BytesIO()  # serialised in memory: write_atomic then writes and renames it whole
  np.savez(buffer, *leaves)
  files.write_atomic(path, buffer.getvalue())


def restore(path: str, template: Any) -> Any:
  """Loads a :func:`save`d file into the structure, shapes and dtypes of ``template``."""
  leaves, treedef = jax.tree.flatten(template)
  with np.load(path) as data:
    arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
  if len(arrays) != len(leaves):
    raise ValueError(f"checkpoint {path} has {len(arrays)} arrays, expected {len(leaves)}: "
                     "it was written by a different configuration")
  for i, (a, t) in enumerate(zip(arrays, leaves)):
    if a.shape != np.shape(t) or a.dtype != np.asarray(t).dtype:
      raise ValueError(f"checkpoint {path}: array {i} is {a.shape} {a.dtype}, expected "
                       f"{np.shape(t)} {np.asarray(t).dtype}: a different configuration")
  return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in arrays])
