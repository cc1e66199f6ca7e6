"""metaopt.files.write_atomic and the checkpoints written with it: never through a link, never half
written, no temporary file left behind."""

import errno
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import metaopt


def test_writes_text_and_bytes_and_leaves_nothing_else(tmp_path):
  path = tmp_path / "summary.json"
  metaopt.files.write_atomic(path, "größe")
  assert path.read_bytes() == "größe".encode("utf-8")
  metaopt.files.write_atomic(str(path), b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01"
  assert os.listdir(tmp_path) == ["summary.json"]


def test_a_symlink_at_the_path_is_refused_and_its_target_untouched(tmp_path):
  target = tmp_path / "elsewhere.txt"
  target.write_text("precious")
  link = tmp_path / "summary.json"
  link.symlink_to(target)
  with pytest.raises(OSError, match="symbolic link") as error:
    metaopt.files.write_atomic(link, "new")
  assert error.value.errno == errno.ELOOP
  assert target.read_text() == "precious" and link.is_symlink()
  dangling = tmp_path / "dangling.json"
  dangling.symlink_to(tmp_path / "missing")
  with pytest.raises(OSError, match="symbolic link"):
    metaopt.files.write_atomic(dangling, "new")
  assert not (tmp_path / "missing").exists()
  assert sorted(os.listdir(tmp_path)) == ["dangling.json", "elsewhere.txt", "summary.json"]


def test_a_link_planted_after_the_check_is_replaced_not_written_through(tmp_path, monkeypatch):
  """The check is only for a clear message: the rename never follows a link, whatever the timing."""
  target = tmp_path / "elsewhere.txt"
  target.write_text("precious")
  path = tmp_path / "summary.json"
  monkeypatch.setattr(os.path, "islink", lambda p: (path.symlink_to(target), False)[1])
  metaopt.files.write_atomic(path, "new")
  assert target.read_text() == "precious"
  assert not path.is_symlink() and path.read_text() == "new"


def test_a_linked_folder_is_followed(tmp_path):
  (tmp_path / "disk").mkdir()
  (tmp_path / "runs").symlink_to(tmp_path / "disk")
  metaopt.files.write_atomic(tmp_path / "runs" / "summary.json", "ok")
  assert (tmp_path / "disk" / "summary.json").read_text() == "ok"
  assert os.listdir(tmp_path / "disk") == ["summary.json"]


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "disk full"), KeyboardInterrupt()])
def test_a_crash_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch,
                                                                    failure):
  path = tmp_path / "checkpoint.npz"
  path.write_bytes(b"old")

  def crash(fd):
    raise failure

  monkeypatch.setattr(os, "fsync", crash)  # after the data went to the temporary file
  with pytest.raises(type(failure)):
    metaopt.files.write_atomic(path, b"new" * 1000)
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
  folder = tmp_path / "summary.json"
  folder.mkdir()  # a folder where the file should go: os.replace fails
  with pytest.raises(OSError):
    metaopt.files.write_atomic(folder, "new")
  assert os.listdir(tmp_path) == ["summary.json"] and folder.is_dir()


def test_modes_follow_the_umask_and_a_replaced_file_keeps_its_mode(tmp_path):
  old = os.umask(0o027)
  try:
    metaopt.files.write_atomic(tmp_path / "new.json", "x")
  finally:
    os.umask(old)
  assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
  existing = tmp_path / "existing.json"
  existing.write_text("x")
  existing.chmod(0o604)
  metaopt.files.write_atomic(existing, "y")
  assert existing.stat().st_mode & 0o777 == 0o604


def test_checkpoint_save_is_atomic_and_refuses_a_link(tmp_path, monkeypatch):
  tree = {"a": jnp.arange(3.0), "b": (jnp.int32(4),)}
  path = tmp_path / "checkpoint.npz"
  metaopt.checkpoint.save(str(path), tree)
  restored = metaopt.checkpoint.restore(str(path), tree)
  np.testing.assert_array_equal(restored["a"], tree["a"])
  assert int(restored["b"][0]) == 4
  before = path.read_bytes()

  def crash(fd):
    raise OSError(errno.EIO, "I/O error")

  monkeypatch.setattr(os, "fsync", crash)
  with pytest.raises(OSError):
    metaopt.checkpoint.save(str(path), {"a": jnp.zeros(3), "b": (jnp.int32(0),)})
  monkeypatch.undo()
  assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.npz"]
  link = tmp_path / "link.npz"
  link.symlink_to(path)
  with pytest.raises(OSError, match="symbolic link"):
    metaopt.checkpoint.save(str(link), tree)
  assert path.read_bytes() == before


def test_a_locked_folder_is_refused_until_its_holder_ends(tmp_path):
  lock = metaopt.files.lock_folder(tmp_path)
  with pytest.raises(metaopt.files.FolderLockedError, match=rf"in use by another process \(pid "
                     rf"{os.getpid()}\)") as error:
    metaopt.files.lock_folder(tmp_path)  # flock is per open file: a second open conflicts, same process
  assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
  lock.release()
  with metaopt.files.lock_folder(tmp_path):
    pass


def test_a_killed_holder_leaves_no_lock(tmp_path):
  code = f"import metaopt, os; metaopt.files.lock_folder({str(tmp_path)!r}); os._exit(0)"
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0
  metaopt.files.lock_folder(tmp_path).release()


def test_a_link_at_the_lock_file_is_refused_and_not_followed(tmp_path):
  target = tmp_path / "elsewhere"
  target.write_text("precious")
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / ".lock").symlink_to(target)
  with pytest.raises(OSError, match="symbolic link"):
    metaopt.files.lock_folder(tmp_path / "run")
  assert target.read_text() == "precious"


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "target").write_text("precious")
  run = tmp_path / "run"
  run.mkdir()
  stale = [".checkpoint.npz.a1b2c3d4.tmp", ".summary.json.x_9zzzzz.tmp", ".tmp-k3j.npz",
           ".write-test"]
  kept = ["checkpoint.npz", "config.json", "notes.tmp", ".summary.json.tmp", "a.b.c1234567.tmp"]
  for name in stale + kept:
    (run / name).write_text("x")
  (run / ".config.json.linkedaa.tmp").symlink_to(outside / "target")
  (run / ".tmp-dir.npz").mkdir()
  assert metaopt.files.remove_stale_temporaries(run) == sorted(stale)
  assert sorted(os.listdir(run)) == sorted(kept + [".config.json.linkedaa.tmp", ".tmp-dir.npz"])
  assert (outside / "target").read_text() == "precious"


def test_write_atomic_temporaries_match_the_stale_pattern(tmp_path, monkeypatch):
  """If write_atomic's temporary names change, remove_stale_temporaries must follow."""
  seen = []
  real = os.replace
  monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real(a, b)))
  metaopt.files.write_atomic(tmp_path / "summary.json", "x")
  (tmp_path / seen[0]).write_text("left by a kill")
  assert metaopt.files.remove_stale_temporaries(tmp_path) == seen


def test_make_folder_writes_no_named_file_and_refuses_a_file(tmp_path):
  target = tmp_path / "elsewhere"
  target.write_text("precious")
  run = tmp_path / "run"
  run.mkdir()
  (run / ".write-test").symlink_to(target)
  assert metaopt.files.make_folder(run) == str(run)
  assert target.read_text() == "precious" and os.listdir(run) == [".write-test"]
  with pytest.raises(OSError):
    metaopt.files.make_folder(target)


def test_refuse_links_names_the_link(tmp_path):
  (tmp_path / "summary.json").symlink_to(tmp_path / "missing")
  metaopt.files.refuse_links(tmp_path, ["config.json"])
  with pytest.raises(OSError, match="summary.json is a symbolic link") as error:
    metaopt.files.refuse_links(tmp_path, ["config.json", "summary.json"])
  assert error.value.errno == errno.ELOOP
