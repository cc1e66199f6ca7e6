r"""Cost of each estimator per inner step relative to the plain inner step, plus sweeps.

The plain step is a jit-compiled ``lax.scan`` of ``system.step`` with no
hypergradient (ratio 1, the floor). Each estimator's ``unroll`` is
jit-compiled and timed in the same process on the same problem, alternating
with the plain step so both see the same machine; a ratio is (estimator
seconds per inner step) / (plain seconds per inner step), each a median over
repeats (``metaopt.timing``). The problem is ``unrolled.digits_mlp`` (SGD with
momentum on scikit-learn's digits, meta-loss = validation loss after each step).

Suites (``--suites``, all by default; ``studies.benchmark_suites`` and
``studies.benchmark_online``):
  headline     every estimator at 26k and 1M parameters, H=2 (log lr, log weight decay),
               num_steps=20, with the compile time of its first unroll;
  breakdown    where the time goes on the headline problem: the step's primal, one JVP, one
               linearisation, a VJP w.r.t. theta, a VJP w.r.t. the state (each as a ratio);
  params       ratio against the parameter count P (~5k to ~1M);
  hyperparams  ratio against H = 1, 2, 8, 64 (constant lr; lr + wd; 8 or 64 schedule knots);
  particles    --particles_estimator against num_particles = 2 ... 256;
  chains       the tuner with 1, 4, 16 chains;
  memory       peak memory (XLA's buffer assignment of the compiled program) against the horizon
               T = 20, 200, 2000, with full_bptt's rematerialisation trade;
  tuner        wall time per outer step beyond the estimator's compute, on a 10-D quadratic;
  online_rnn   rtrl_elementwise / uoro / tbptt (and generic rtrl at 32 units) on an online eLSTM
               against its hidden size, seconds per step and ratio;
  learned_optimizers  meta-training's ms per outer step (learnable SGD and the MLP optimizer, PES
               and tbptt, 10 to 100,000 dims) beside learned_optimization's, and PES's cost per
               particle with the MLP optimizer (studies.benchmark_lopt; ~4 min).

Beside each ratio of the headline, params, hyperparams and particles suites: XLA's FLOP ratio
and bytes-accessed ratio (the same ratio of XLA's counts of the compiled programs, every loop
iteration counted: ``metaopt.timing.xla_counts``) and the measured ratio over the FLOP ratio,
the distance to the floor.

Writes results.json (after every suite), results.md and PNG plots to --output_dir.

Usage:
  python -m launch.benchmark                                   # everything (~26 min on 2 cores)
  python -m launch.benchmark --suites=headline --repeats=20
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile

from absl import app
import launch
from absl import flags

import metaopt
from metaopt.files import write_atomic
from studies import benchmark_online
from studies import benchmark_report
from studies import benchmark_suites
from studies import benchmarks

_SUITES = flags.DEFINE_list("suites", list(benchmarks.SUITES),
                           f"Which suites to run, from {benchmarks.SUITES}.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["tbptt", "rtrl", "uoro", "pes", "full_bptt", "truncated_es", "nres",
                   "forward_gradient"], "Estimators of the headline suite.")
_SWEEP_ESTIMATORS = flags.DEFINE_list("sweep_estimators", ["tbptt", "rtrl", "uoro", "pes"],
                                      "Estimators of the params and hyperparams suites.")
_PARTICLES_ESTIMATOR = flags.DEFINE_string(
    "particles_estimator", "pes", "Estimator of the particles suite (one taking num_particles).")
_MEMORY_ESTIMATORS = flags.DEFINE_list(
    "memory_estimators", ["tbptt", "rtrl", "uoro", "pes"],
    "Online estimators of the memory suite (the whole-horizon ones are always measured).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 20, "Inner steps per window.")
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 8, "Particles of the ES estimators.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed repeats (median reported); sweeps use "
                                "fewer on their largest problems.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Where results go (default runs/benchmark-<time>).")
_MEMORY_HORIZONS = flags.DEFINE_list("memory_horizons", ["20", "200", "2000"],
                                     "Horizons T of the memory suite (num_steps=20 must divide).")
_MEMORY_TIMING = flags.DEFINE_bool("memory_timing", True,
                                   "Also time full_bptt with and without remat (T <= 200).")
_MEMORY_PROBLEM = flags.DEFINE_enum("memory_problem", "digits", ["digits", "toy_regression"],
                                    "Inner problem of the memory suite (digits: the 5k MLP).")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the results JSON here.")


def config_from_flags() -> benchmarks.Config:
  """The flags as a checked :class:`studies.benchmarks.Config`; UsageError naming a bad flag."""
  if not _SUITES.value or set(_SUITES.value) - set(benchmarks.SUITES):
    raise app.UsageError(f"--suites={','.join(_SUITES.value)!r}: choose one or more of "
                         f"{list(benchmarks.SUITES)}")
  try:
    horizons = tuple(int(t) for t in _MEMORY_HORIZONS.value)
  except ValueError:
    raise app.UsageError(
        f"--memory_horizons must be integers, got {_MEMORY_HORIZONS.value}") from None
  window = benchmark_online.MEMORY_WINDOW
  if not horizons or any(t < window or t % window for t in horizons):
    raise app.UsageError(f"--memory_horizons must be positive multiples of {window} (the memory "
                         f"suite's window), got {_MEMORY_HORIZONS.value}")
  if _REPEATS.value < 1:
    raise app.UsageError(f"--repeats must be >= 1, got {_REPEATS.value}")
  specs = [(_ESTIMATORS, _ESTIMATORS.value), (_SWEEP_ESTIMATORS, _SWEEP_ESTIMATORS.value),
           (_MEMORY_ESTIMATORS, _MEMORY_ESTIMATORS.value),
           (_PARTICLES_ESTIMATOR, [_PARTICLES_ESTIMATOR.value])]
  for flag, values in specs:
    if not values:
      raise app.UsageError(f"--{flag.name} is empty")
    for spec in values:
      try:
        metaopt.estimator_info(spec)
      except ValueError as e:
        raise app.UsageError(f"--{flag.name}: {e}") from None
  if "num_particles" not in metaopt.estimator_info(_PARTICLES_ESTIMATOR.value).takes:
    raise app.UsageError(f"--particles_estimator={_PARTICLES_ESTIMATOR.value!r} must take "
                         "num_particles")
  system = benchmark_suites.digits().system  # as the headline suite builds them, no compute
  for flag, values in specs:
    for spec in values:
      try:
        metaopt.get_estimator(spec, system, num_steps=_NUM_STEPS.value,
                              num_particles=_NUM_PARTICLES.value)
      except ValueError as e:  # name --num_steps / --num_particles unless the spec set it
        own = metaopt.parse_spec(spec)[1]
        option = re.match(r"(num_steps|num_particles)\b", str(e))
        raise app.UsageError(f"--{e} (with {spec!r})" if option and option[1] not in own else
                             f"--{flag.name}: {spec!r}: {e}") from None
  config = benchmarks.Config(
      estimators=tuple(_ESTIMATORS.value), sweep_estimators=tuple(_SWEEP_ESTIMATORS.value),
      particles_estimator=_PARTICLES_ESTIMATOR.value,
      memory_estimators=tuple(_MEMORY_ESTIMATORS.value), num_steps=_NUM_STEPS.value,
      num_particles=_NUM_PARTICLES.value, repeats=_REPEATS.value, memory_horizons=horizons,
      memory_timing=_MEMORY_TIMING.value, memory_problem=_MEMORY_PROBLEM.value)
  try:  # the studies' own checks, should they grow beyond the above
    benchmarks.check(config, _SUITES.value)
  except ValueError as e:
    raise app.UsageError(f"--suites={','.join(_SUITES.value)}: {e}") from None
  return config


def validate_flags():
  """Every flag checked, then the output folder made (and checked writable) last.

  Returns the config and the output folder.
  """
  config = config_from_flags()
  if _OUTPUT_JSON.value:
    path = _OUTPUT_JSON.value
    folder = os.path.dirname(os.path.abspath(path))
    try:  # an anonymous file probes the folder: nothing named is written
      if os.path.islink(path) or os.path.isdir(path):
        raise OSError
      tempfile.TemporaryFile(dir=folder).close()
    except OSError:
      raise app.UsageError(f"--output_json {path!r} cannot be written: it is a link or a folder, "
                           "or its folder is missing or read-only") from None
  output_dir = _OUTPUT_DIR.value or os.path.join(
      "runs", f"benchmark-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  try:
    metaopt.files.make_folder(output_dir)
  except OSError as e:
    raise app.UsageError(f"--output_dir {output_dir!r} is not writable: {e}") from None
  return config, output_dir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, output_dir = validate_flags()
  try:
    lock = metaopt.files.lock_folder(output_dir)  # pylint: disable=unused-variable  # held to the end
    metaopt.files.remove_stale_temporaries(output_dir)
    metaopt.files.refuse_links(output_dir, ["results.json", "results.md"])
  except OSError as e:
    raise app.UsageError(f"--output_dir: {e.strerror or e}") from None
  save = lambda results: write_atomic(os.path.join(output_dir, "results.json"),
                                      json.dumps(results, indent=1))
  results = benchmarks.run(config, suites=_SUITES.value, save=save)
  table = benchmark_report.markdown(results)
  write_atomic(os.path.join(output_dir, "results.md"), table)
  if _OUTPUT_JSON.value:
    write_atomic(_OUTPUT_JSON.value, json.dumps(results, indent=1))
  # The plots are drawn elsewhere and copied in with write_atomic: savefig would follow a link.
  with tempfile.TemporaryDirectory() as scratch:
    written = benchmark_report.plots(results, scratch)
    for path in written:
      with open(path, "rb") as f:
        write_atomic(os.path.join(output_dir, os.path.basename(path)), f.read())
  print("\n" + table)
  print(f"written to {output_dir}: results.json, results.md, "
        + ", ".join(os.path.basename(p) for p in written))


if __name__ == "__main__":
  launch.run(main, compilation_cache=False)  # it times compilations: off unless the flag says
