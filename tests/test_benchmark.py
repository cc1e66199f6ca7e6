"""The benchmark: its timing harness takes interleaved medians, its memory suite shows memory
flat in the horizon for online estimators and rematerialisation cutting full_bptt's memory, the
tuner's run is one on-device loop at little more than the windows' FLOPs; files written. No test
here reads a wall clock: the timings themselves are the benchmark's (python -m launch.benchmark)."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import metaopt
from studies import benchmark_online
from studies import benchmark_report as studies_report
from studies import benchmark_suites
from studies import benchmarks
import unrolled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interleaved_medians_time_each_function_in_turn_and_report_its_median(monkeypatch):
  # A fake clock, not wall-clock time: each call of function i advances it by its own sequence
  # of durations; the harness must take the medians of the timed calls (not the first, which
  # compiles) and keep each function's outputs flowing into its next call.
  from metaopt._src.devices import timing as timing_lib  # pylint: disable=g-import-not-at-top
  now = [0.0]
  monkeypatch.setattr(timing_lib.time, "perf_counter", lambda: now[0])
  durations = {"one": iter([100.0, 1.0, 3.0, 2.0]), "eight": iter([100.0, 8.0, 9.0, 30.0])}
  seen = {"one": [], "eight": []}

  def timed(name):
    def fn(x):
      seen[name].append(int(x))
      now[0] += next(durations[name])
      return x + 1
    return fn
  args = lambda out: (jnp.int32(0) if out is None else out,)
  one, eight = metaopt.timing.interleaved_medians([timed("one"), timed("eight")], [args, args],
                                                  repeats=3)
  assert (one, eight) == (2.0, 9.0)
  assert seen == {"one": [0, 1, 2, 3], "eight": [0, 1, 2, 3]}


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


HEADLINE = ("tbptt", "tbptt[unroll=True]", "rtrl", "uoro", "pes", "full_bptt", "truncated_es",
            "nres", "forward_gradient")


@pytest.mark.parametrize("estimator", HEADLINE)
def test_xla_counts_count_every_scan_iteration_like_the_straight_line_program(estimator):
  """XLA's cost_analysis counts a loop's body once; the benchmark's FLOP column must count
  every inner step: xla_counts of the rolled window matches the count of the same window with
  every scan unrolled into straight-line code."""
  from metaopt._src.devices import counts  # pylint: disable=g-import-not-at-top
  problem = unrolled.digits_mlp(width=64, depth=1, horizon=12, weight_decay=1e-4)
  est, window = benchmark_suites.make(estimator, problem.system, 6, 4)
  args = (est.init(jax.random.key(0), problem.theta), problem.theta, jax.random.key(1))
  got = metaopt.timing.xla_counts(est.unroll, *args, num_steps=window)["flops"]
  jax.clear_caches()
  with counts._scans_unrolled(True):  # pylint: disable=protected-access
    lowered = jax.jit(lambda *a: est.unroll(*a)).lower(*args)
  straight = lowered.compile().cost_analysis()
  straight = (straight[0] if isinstance(straight, list) else straight)["flops"]
  rolled = jax.jit(est.unroll).lower(*args).compile().cost_analysis()
  rolled = (rolled[0] if isinstance(rolled, list) else rolled)["flops"]
  # Straight-line code lets XLA simplify across steps (e.g. the truncated last step's zero
  # cotangent): measured 1.0-4.6% apart here, 0.1-0.6% on the benchmark's 26k and 1M MLPs.
  assert got == pytest.approx(straight, rel=0.06), (got, straight)
  if estimator.endswith("[unroll=True]"):  # no loop left: XLA's own count is the whole count
    assert got == rolled == straight
  else:
    assert rolled < 0.5 * straight  # what the column would read without counting iterations


def test_the_report_prints_xla_counts_beside_every_measured_ratio():
  machine = {"backend": "cpu", "device": "cpu", "cpu_count": 2, "num_devices": 1, "jax": "x"}
  row = lambda name, p, ratio, flops: {
      "estimator": name, "num_params": p, "seconds_per_step": 1e-3, "ratio": ratio,
      "compile_seconds": 2.0, "flop_ratio": flops, "bytes_ratio": 5.0,
      "over_flops": ratio / flops}
  results = {"machine": machine,
             "headline": {"problems": [{"problem": "small", "num_params": 10},
                                       {"problem": "large", "num_params": 1000}],
                          "num_hyperparams": 2, "num_steps": 20,
                          "rows": [row("tbptt", 10, 3.0, 2.5), row("tbptt", 1000, 3.6, 3.0)]},
             "params": {"x": "num_params", "rows": [
                 {**row("tbptt", 1000, 3.6, 3.0), "point": "700x3"}]}}
  md = studies_report.markdown(results)
  assert "| XLA FLOP ratio | XLA bytes ratio | ratio / FLOP ratio |" in md
  assert "| tbptt | 1.000 | 3.00 | 2.50 | 5.00 | 1.20 | 2.00 |" in md
  assert "| tbptt | 1.000 | 3.60 | 3.00 | 5.00 | 1.20 | 2.00 |" in md
  assert "| 700x3 (1000 params) | 3.60 (3.00, 5.0; 1.20) |" in md


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("bench")
  out = subprocess.run(
      [sys.executable, "-m", "launch.benchmark", "--suites=memory",
       "--memory_horizons=200,2000", "--memory_timing=false",
       "--memory_problem=toy_regression", f"--output_dir={out_dir}",
       "--repeats=1"],
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


@pytest.mark.parametrize("estimator", ["tbptt", "rtrl", "uoro"])
def test_the_tuner_runs_its_outer_steps_in_one_loop_on_device_at_little_more_than_the_windows(
    estimator):
  """What the benchmark's tuner suite times, checked without a clock: ``tuner.run`` compiles
  to one program that loops over the outer steps on the device (no host round trip, no call
  out of XLA), and its arithmetic per outer step (XLA's FLOP count) is the windows' own plus a
  small outer update: running the estimator twice per outer step would double it."""
  system, theta = benchmark_online.quadratic10()
  est = metaopt.get_estimator(estimator, system, num_steps=10)
  t = metaopt.tuner(est, optax.adam(1e-2))
  state = t.init(jax.random.key(0), theta)
  compiled = jax.jit(lambda s: t.run(s, 100)[0]).lower(state).compile()
  hlo = compiled.as_text()
  assert re.search(r"\bwhile\b", hlo)
  assert not re.search(r"outfeed|infeed|send|recv|host_callback|python_callback", hlo)
  flops = lambda c: (lambda a: (a[0] if isinstance(a, list) else a)["flops"])(c.cost_analysis())
  # XLA counts a loop's body once: the 100-step run costs what one outer step does (measured
  # within 2%; a second window per outer step would add 60-70%).
  run = flops(compiled)
  update = flops(jax.jit(lambda s: t.update(s)[0]).lower(state).compile())
  window = flops(jax.jit(lambda s: est.unroll(s, theta, jax.random.key(1))[1]).lower(
      est.init(jax.random.key(0), theta)).compile())
  assert run <= 1.05 * update, (run, update)
  # Measured 1.4-1.7 times one window (adam, the chains' mean, finite checks, keys).
  assert window < update < 2 * window, (update, window)


@pytest.mark.slow
def test_files_are_written(results):
  out_dir, _ = results
  assert "Peak memory" in (out_dir / "results.md").read_text()
  assert (out_dir / "memory.png").stat().st_size > 1000
