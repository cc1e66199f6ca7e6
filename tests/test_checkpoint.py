"""metaopt.checkpoint: a checkpoint of another configuration or a damaged file is refused in one
line naming the file; nothing is ever unpickled."""

import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt import checkpoint

TREE = {"a": jnp.arange(3.0), "b": (jnp.int32(4),)}
CONFIG = {"estimator": "rtrl", "meta_lr": 0.01, "seed": 0, "problem_option": ["horizon=20"]}


def test_a_checkpoint_of_another_configuration_is_refused_naming_the_differences(tmp_path):
  path = str(tmp_path / "checkpoint.npz")
  checkpoint.save(path, TREE, config=CONFIG)
  restored = checkpoint.restore(path, TREE, config=dict(reversed(CONFIG.items())))
  np.testing.assert_array_equal(restored["a"], TREE["a"])
  other = {**CONFIG, "meta_lr": 0.02, "seed": 3}
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.restore(path, TREE, config=other)
  message = str(error.value)
  assert "meta_lr: 0.01 there, 0.02 now" in message and "seed: 0 there, 3 now" in message
  assert "estimator" not in message and path in message and "\n" not in message


def test_templates_may_be_shapes_alone_and_old_checkpoints_still_restore(tmp_path):
  path = str(tmp_path / "checkpoint.npz")
  np.savez(path, *jax.tree.leaves(TREE))  # written before configurations were stored
  shapes = jax.eval_shape(lambda: TREE)
  restored = checkpoint.restore(path, shapes, config=CONFIG)
  assert int(restored["b"][0]) == 4
  with pytest.raises(checkpoint.CheckpointError, match=r"array 0 is \(3,\) float32, expected"):
    checkpoint.restore(path, {"a": jnp.zeros(4), "b": (jnp.int32(0),)})


def _damaged(tmp_path):
  path = tmp_path / "good.npz"
  checkpoint.save(str(path), TREE, config=CONFIG)
  good = path.read_bytes()
  corrupt = bytearray(good)
  corrupt[60:70] = b"x" * 10  # inside the first member's data: its CRC fails
  np.save(tmp_path / "lone.npy", np.arange(3))
  objects = tmp_path / "objects.npz"
  np.savez(objects, np.array([{"a": 1}], dtype=object))
  return {"truncated": good[: len(good) // 2], "short": good[:10], "empty": b"",
          "random": np.random.default_rng(0).bytes(500), "pickle": pickle.dumps(TREE),
          "corrupt": bytes(corrupt), "npy": (tmp_path / "lone.npy").read_bytes(),
          "object_arrays": objects.read_bytes()}


@pytest.mark.parametrize("kind", ["truncated", "short", "empty", "random", "pickle", "corrupt",
                                  "npy", "object_arrays"])
def test_a_damaged_checkpoint_is_refused_in_one_line_and_never_unpickled(kind, tmp_path,
                                                                         monkeypatch):
  path = tmp_path / "checkpoint.npz"
  path.write_bytes(_damaged(tmp_path)[kind])
  before = path.read_bytes()
  monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
  monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.restore(str(path), TREE, config=CONFIG)
  message = str(error.value)
  assert str(path) in message and "delete it" in message and "\n" not in message, message
  assert "load it unsafely" not in message and "allow_pickle" not in message
  assert path.read_bytes() == before


def test_a_missing_checkpoint_is_a_file_not_found_error(tmp_path):
  with pytest.raises(FileNotFoundError):
    checkpoint.restore(str(tmp_path / "none.npz"), TREE)
