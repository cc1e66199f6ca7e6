"""The launch scripts' persistent compilation cache: on by default, moved or turned off by a flag
or an environment variable; a second run of the same command loads its executables."""

import os
import subprocess
import sys

import pytest

import metaopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--problem=influence_balancing", "--problem_option=horizon=20", "--num_steps=5",
        "--outer_steps=4", "--checkpoint_every=4", "--meta_optimizer=sgd", "--meta_lr=1e-4"]


@pytest.mark.parametrize("flag, env, expected", [
    (None, {}, "{cache}/metaopt/xla"),
    (None, {"METAOPT_COMPILATION_CACHE": "/a"}, "/a"),
    (None, {"JAX_COMPILATION_CACHE_DIR": "/j"}, "/j"),
    (None, {"METAOPT_COMPILATION_CACHE": "/a", "JAX_COMPILATION_CACHE_DIR": "/j"}, "/a"),
    ("/f", {"METAOPT_COMPILATION_CACHE": "/a", "JAX_COMPILATION_CACHE_DIR": "/j"}, "/f"),
    ("off", {"JAX_COMPILATION_CACHE_DIR": "/j"}, None),
    (None, {"METAOPT_COMPILATION_CACHE": "OFF"}, None),
])
def test_the_flag_wins_then_ours_then_jaxs_variable_then_the_users_cache_folder(
    flag, env, expected, monkeypatch, tmp_path):
  for name in ("METAOPT_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  want = expected and expected.format(cache=tmp_path)
  assert metaopt.devices.compilation_cache_folder(flag) == want


def run(*args, cache):
  return subprocess.run([sys.executable, "-m", "launch.tune", *TINY, *args,
                         f"--compilation_cache={cache}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.slow
def test_a_second_run_loads_what_the_first_compiled(tmp_path):
  cache = tmp_path / "cache"
  first = run(f"--logdir={tmp_path / 'a'}", cache=cache)
  assert first.returncode == 0, first.stderr[-3000:]
  # The outer step (seconds to compile, always stored) and whichever helpers took 0.1 s or more
  # this time (a helper near the threshold may be stored by one run and not by another).
  outer_step = lambda: {f for f in os.listdir(cache) if f.startswith("jit_run-")}
  stored = {f: (cache / f).read_bytes() for f in os.listdir(cache)}
  assert outer_step()
  second = run(f"--logdir={tmp_path / 'b'}", cache=cache)
  assert second.returncode == 0, second.stderr[-3000:]
  assert outer_step() == {f for f in stored if f.startswith("jit_run-")}  # loaded, not compiled
  assert all((cache / f).read_bytes() == data for f, data in stored.items())  # none rewritten
  listed = sorted(os.listdir(cache))
  off = run(f"--logdir={tmp_path / 'c'}", cache="off")
  assert off.returncode == 0 and sorted(os.listdir(cache)) == listed  # nothing written


def test_a_file_as_the_cache_folder_is_refused_in_one_line_before_any_write(tmp_path):
  (tmp_path / "file").write_text("mine")
  out = run(f"--logdir={tmp_path / 'run'}", cache=tmp_path / "file")
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
      f"launch.tune: error: --compilation_cache: cannot use '{tmp_path / 'file'}': "
      f"{tmp_path / 'file'} is not a folder (--helpshort lists the flags)"]
  assert not (tmp_path / "run").exists() and (tmp_path / "file").read_text() == "mine"
