"""The benchmark: its timing harness tells more work from less, its memory and tuner suites
show memory flat in the horizon for online estimators, rematerialisation cutting full_bptt's
memory and the tuner's run costing less than one host call per outer step; files written."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import metaopt
from studies import benchmark_suites
from studies import benchmarks
import unrolled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmuls(count):
  """A jitted chain of ``count`` dependent 256 x 256 matmuls (none can be skipped or fused)."""
  def f(x):
    return jax.lax.fori_loop(0, count, lambda _, y: jnp.tanh(y @ x), x)
  return jax.jit(f)


def test_interleaved_medians_time_eight_times_the_work_as_slower():
  x = jax.random.normal(jax.random.key(0), (256, 256)) / 16
  args = lambda out: (x,)
  one, eight = metaopt.timing.interleaved_medians([matmuls(1), matmuls(8)], [args, args],
                                                  repeats=7)
  assert 3 < eight / one < 20, (one, eight)


def test_peak_bytes_counts_arguments_and_outputs():
  x = jnp.zeros(2**20)
  assert 2 * x.nbytes <= metaopt.timing.peak_bytes(lambda x: 2 * x, x) < 2.1 * x.nbytes


def test_labels_count_particles_only_for_estimators_that_take_them():
  assert benchmark_suites.label("pes", 8) == "pes(8)"
  assert benchmark_suites.label("truncated_es", 4) == "truncated_es(4)"
  assert benchmark_suites.label("uoro", 8) == "uoro"
  assert benchmark_suites.label("full_bptt", 8) == "full_bptt"


CONFIG = benchmarks.Config(
    estimators=("tbptt",), sweep_estimators=("tbptt",), particles_estimator="pes",
    memory_estimators=("tbptt",), num_steps=20, num_particles=8, repeats=1,
    memory_horizons=(20, 200), memory_timing=False, memory_problem="digits")


@pytest.mark.parametrize("change,message", [
    ({"particles_estimator": "uoro"}, "takes num_particles"),
    ({"estimators": ("tbptt", "bptt")}, "unknown estimator 'bptt'"),
    ({"num_steps": 30}, "must divide the system.s horizon=200"),
    ({"num_particles": 3}, "even"),
    ({"memory_horizons": (20, 30)}, "multiples of 20"),
    ({"repeats": 0}, "repeats"),
])
def test_bad_options_are_refused_before_any_compute(change, message):
  with pytest.raises(ValueError, match=message):
    benchmarks.run(CONFIG._replace(**change), suites=["headline"])


def test_unknown_suites_are_refused():
  with pytest.raises(ValueError, match=r"unknown suites \['speed'\]"):
    benchmarks.check(CONFIG, ["headline", "speed"])


def test_step_breakdown_backward_pieces_cost_more_than_the_primal_step():
  # XLA's FLOP counts, not wall-clock times: a timing ratio (1.2x) failed a CI run at 1.10 while
  # another job shared the cores. The timed breakdown stays in the benchmark.
  problem = unrolled.digits_mlp(width=64, depth=1, horizon=20)
  pieces = metaopt.timing.step_breakdown(problem.system, problem.theta, num_steps=20, repeats=1,
                                         measure="flops")
  primal = pieces.pop("primal step")
  assert primal > 0
  for name, flops in pieces.items():  # each also runs the primal step, plus a pass
    assert flops > 1.2 * primal, (name, flops, primal)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("bench")
  out = subprocess.run(
      [sys.executable, "-m", "launch.benchmark", "--suites=memory,tuner",
       "--memory_horizons=200,2000", "--memory_timing=false",
       "--memory_problem=toy_regression", f"--output_dir={out_dir}",
       "--repeats=30"],  # 10 timed repeats of 1000 outer steps: cheap, and a stable median
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out_dir, json.load(open(out_dir / "results.json"))


def peak(rows, name, horizon):
  return next(r["peak_bytes"] for r in rows if r["estimator"] == name and r["horizon"] == horizon)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["tbptt", "rtrl", "uoro", "pes(8)"])
def test_online_estimators_memory_is_flat_in_the_horizon(results, estimator):
  rows = results[1]["memory"]["rows"]
  assert peak(rows, estimator, 2000) < 1.10 * peak(rows, estimator, 200)


@pytest.mark.slow
def test_full_bptt_memory_grows_with_the_horizon_and_remat_cuts_it(results):
  rows = results[1]["memory"]["rows"]
  assert peak(rows, "full_bptt", 2000) > 5 * peak(rows, "full_bptt", 200)
  assert peak(rows, "full_bptt(remat)", 2000) < peak(rows, "full_bptt", 2000) / 4


@pytest.mark.slow
def test_tuner_run_costs_less_than_a_host_call_per_outer_step(results):
  rows = results[1]["tuner"]["rows"]
  assert [r["estimator"] for r in rows] == ["tbptt", "rtrl", "uoro"]
  for row in rows:
    # One compiled scan over outer steps: a host round trip, a retrace or a copy to the host
    # per outer step would cost at least what one jitted update called from Python does.
    assert row["seconds_per_outer_step"] < row["python_loop_seconds_per_outer_step"] / 2, row
    # The outer update on a 10-D theta adds little to the windows' own compute (measured
    # 0.7-1.5 times it): running the estimator twice per outer step would double it.
    assert row["seconds_per_outer_step"] < 2 * row["compute_seconds_per_outer_step"], row


@pytest.mark.slow
def test_files_are_written(results):
  out_dir, _ = results
  assert "Peak memory" in (out_dir / "results.md").read_text()
  assert (out_dir / "memory.png").stat().st_size > 1000
