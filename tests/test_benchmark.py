"""The benchmark's memory and tuner suites: memory flat in the horizon for online estimators,
rematerialisation trades memory for compute, the tuner adds little per outer step; files written."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("bench")
  out = subprocess.run(
      [sys.executable, "-m", "launch.benchmark", "--suites=memory,tuner",
       "--memory_horizons=200,2000", "--memory_timing=false",
       "--memory_problem=toy_regression", "--repeats=1", f"--output_dir={out_dir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out_dir, json.load(open(out_dir / "results.json"))


def peak(rows, name, horizon):
  return next(r["peak_bytes"] for r in rows if r["estimator"] == name and r["horizon"] == horizon)


@pytest.mark.parametrize("estimator", ["tbptt", "rtrl", "uoro", "pes(8)"])
def test_online_estimators_memory_is_flat_in_the_horizon(results, estimator):
  rows = results[1]["memory"]["rows"]
  assert peak(rows, estimator, 2000) < 1.10 * peak(rows, estimator, 200)


def test_full_bptt_memory_grows_with_the_horizon_and_remat_cuts_it(results):
  rows = results[1]["memory"]["rows"]
  assert peak(rows, "full_bptt", 2000) > 5 * peak(rows, "full_bptt", 200)
  assert peak(rows, "full_bptt(remat)", 2000) < peak(rows, "full_bptt", 2000) / 4


def test_tuner_overhead_per_outer_step_is_small(results):
  for row in results[1]["tuner"]["rows"]:
    assert row["seconds_per_outer_step"] > 0
    assert row["overhead_seconds"] < 0.5e-3, row  # the target; measured ~0.01 ms


def test_files_are_written(results):
  out_dir, _ = results
  assert "Peak memory" in (out_dir / "results.md").read_text()
  assert (out_dir / "memory.png").stat().st_size > 1000
