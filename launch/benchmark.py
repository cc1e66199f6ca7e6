r"""Cost of each estimator per inner step relative to the plain inner step, plus sweeps.

The plain step is a jit-compiled ``lax.scan`` of ``system.step`` with no
hypergradient (ratio 1, the floor). Each estimator's ``unroll`` is
jit-compiled and timed in the same process on the same problem, alternating
with the plain step so both see the same machine; a ratio is (estimator
seconds per inner step) / (plain seconds per inner step), each a median over
repeats. The problem is ``unrolled.digits_mlp`` (SGD with momentum on
scikit-learn's digits, meta-loss = validation loss after each step).

Suites (``--suites``, all by default):
  headline     every estimator at 26k parameters, H=2 (log lr, log weight decay), num_steps=20,
               with the compile time of its first unroll;
  breakdown    where the time goes on the headline problem: the step's primal, one JVP, one
               linearisation, a VJP w.r.t. theta, a VJP w.r.t. the state (each as a ratio);
  params       ratio against the parameter count P (~5k to ~1M);
  hyperparams  ratio against H = 1, 2, 8, 64 (constant lr; lr + wd; 8 or 64 schedule knots);
  particles    pes against num_particles = 2 ... 256;
  chains       the tuner with 1, 4, 16 chains;
  memory       peak memory (XLA's buffer assignment of the compiled program) against the horizon
               T = 20, 200, 2000, with full_bptt's rematerialisation trade;
  tuner        wall time per outer step beyond the estimator's compute, on a 10-D quadratic;
  online_rnn   rtrl_elementwise / uoro / tbptt (and generic rtrl at 32 units) on an online eLSTM
               against its hidden size, seconds per step and ratio.

Writes results.json, results.md and PNG plots to --output_dir.

Usage:
  python -m launch.benchmark                                   # everything (~15 min on 2 cores)
  python -m launch.benchmark --suites=headline --repeats=20
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from launch.files import write_atomic
import metaopt
import unrolled
from unrolled import online_rnn

SUITES = ("headline", "breakdown", "params", "hyperparams", "particles", "chains", "memory", "tuner",
          "online_rnn")
_SUITES = flags.DEFINE_list("suites", list(SUITES), f"Which suites to run, from {SUITES}.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["tbptt", "rtrl", "uoro", "pes", "full_bptt", "truncated_es", "nres",
                   "forward_gradient"], "Estimators of the headline suite.")
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

PARTICLE = ("pes", "truncated_es", "nres")
PARAMS_SWEEP = ((64, 1), (128, 2), (256, 2), (512, 2), (700, 3))  # ~5k, 26k, 85k, 300k, 1M


def digits(*, width=128, depth=2, num_hyperparams=2, horizon=200):
  """The digits MLP with H hyperparameters: 1 lr; 2 lr + weight decay; else H schedule knots."""
  if num_hyperparams == 1:
    options = {}
  elif num_hyperparams == 2:
    options = {"weight_decay": 1e-4}
  else:
    options = {"schedule": "piecewise_linear", "num_knots": num_hyperparams}
  problem = unrolled.digits_mlp(width=width, depth=depth, horizon=horizon, **options)
  size = jax.flatten_util.ravel_pytree(problem.theta)[0].size
  assert size == num_hyperparams, (size, num_hyperparams)
  return problem


def num_params(problem):
  return int(problem.description.split("(")[1].split()[0])


def _timed(fn, args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def interleaved_medians(fns, args_fns, repeats):
  """Median wall time of each fn, timed in turn so drifts of the machine hit all alike.

  Each ``args_fn(previous_output)`` builds the next call's arguments (state fed
  back); the first call compiles and is not timed.
  """
  outs = [jax.block_until_ready(fn(*a(None))) for fn, a in zip(fns, args_fns)]
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, (fn, a) in enumerate(zip(fns, args_fns)):
      outs[i], seconds = _timed(fn, a(outs[i]))
      times[i].append(seconds)
  return [float(np.median(t)) for t in times]


def plain_runner(system, theta, num_steps):
  @jax.jit
  def plain(state, keys):
    return jax.lax.scan(lambda s, k: system.step(s, theta, k), state, keys)

  state0 = system.init(jax.random.key(0), theta)
  keys = jax.random.split(jax.random.key(1), num_steps)
  return plain, lambda out: (state0 if out is None else out[0], keys)


def estimator_runner(est, theta):
  state0 = est.init(jax.random.key(0), theta)
  counter = iter(range(10**9))
  return jax.jit(est.unroll), lambda out: (state0 if out is None else out[0], theta,
                                           jax.random.fold_in(jax.random.key(2), next(counter)))


def ratio(system, theta, est, window, num_steps, repeats):
  """(plain seconds per step, estimator seconds per step)."""
  plain, plain_args = plain_runner(system, theta, num_steps)
  unroll, est_args = estimator_runner(est, theta)
  plain_s, est_s = interleaved_medians([plain, unroll], [plain_args, est_args], repeats)
  return plain_s / num_steps, est_s / window


def label(name, num_particles):
  return f"{name}({num_particles})" if name in PARTICLE else name


def make(name, system, num_steps, num_particles):
  return (metaopt.get_estimator(name, system, num_steps=num_steps, num_particles=num_particles),
          metaopt.window_length(name, system, num_steps))


def compile_seconds(est, theta):
  state = est.init(jax.random.key(0), theta)
  fresh = jax.jit(lambda *args: est.unroll(*args))  # a new function: no cached executable
  start = time.perf_counter()
  fresh.lower(state, theta, jax.random.key(1)).compile()
  return time.perf_counter() - start


# --------------------------------------------------------------------------- suites


def suite_headline(repeats):
  problem = digits()
  rows, plain_times = [], []
  for name in _ESTIMATORS.value:
    est, window = make(name, problem.system, _NUM_STEPS.value, _NUM_PARTICLES.value)
    compile_s = compile_seconds(est, problem.theta)
    plain_s, est_s = ratio(problem.system, problem.theta, est, window, _NUM_STEPS.value, repeats)
    plain_times.append(plain_s)
    rows.append({"estimator": label(name, _NUM_PARTICLES.value), "seconds_per_step": est_s,
                 "ratio": est_s / plain_s, "compile_seconds": compile_s})
    print(f"  {rows[-1]['estimator']}: {est_s / plain_s:.2f} (compile {compile_s:.2f} s)",
          flush=True)
  rows.insert(0, {"estimator": "plain step", "seconds_per_step": float(np.median(plain_times)),
                  "ratio": 1.0, "compile_seconds": None})
  return {"problem": problem.description, "num_params": num_params(problem),
          "num_hyperparams": 2, "num_steps": _NUM_STEPS.value, "rows": rows}


def _sweep(points, build, estimators, repeats, num_steps=None):
  num_steps = num_steps or _NUM_STEPS.value
  rows = []
  for point in points:
    problem, reps = build(point)
    for name in estimators:
      est, window = make(name, problem.system, num_steps, _NUM_PARTICLES.value)
      plain_s, est_s = ratio(problem.system, problem.theta, est, window, num_steps,
                             max(3, repeats // reps))
      rows.append({"point": point, "num_params": num_params(problem),
                   "estimator": label(name, _NUM_PARTICLES.value),
                   "plain_seconds_per_step": plain_s, "seconds_per_step": est_s,
                   "ratio": est_s / plain_s})
      print(f"  {point} {rows[-1]['estimator']}: {est_s / plain_s:.2f}", flush=True)
  return rows


def suite_breakdown(repeats):
  """Times the pieces estimators are made of, per inner step, against the plain step."""
  from metaopt._src import base  # pylint: disable=g-import-not-at-top
  problem = digits()
  system, theta = problem.system, problem.theta
  theta_vec, unravel = base.ravel(theta)
  state0 = system.init(jax.random.key(0), theta)
  split = base.StateSplit.of(state0)
  floats0, others = split.split(state0)
  keys = jax.random.split(jax.random.key(1), _NUM_STEPS.value)
  tangent = [0.01 * jnp.ones_like(x) for x in floats0]

  def scanned(piece):
    def body(floats, key):
      f = base.flat_step(system, split, unravel, others, key)
      new, extra = piece(f, floats)
      # Keep every result alive (XLA would drop unused work), without changing the state.
      keep = sum(jnp.sum(x) for x in jax.tree.leaves(extra))
      return [x + 0 * keep for x in new], None
    return jax.jit(lambda fl: jax.lax.scan(body, fl, keys)[0])

  def primal(f, fl):
    return f(fl, theta_vec)[0]

  def jvp_state(f, fl):
    (new, _), tan = jax.jvp(lambda s: f(s, theta_vec)[0], (fl,), (tangent,))
    return new, tan

  def linearize_jvp(f, fl):
    (new, loss), lin, _ = jax.linearize(f, fl, theta_vec, has_aux=True)
    return new, lin(tangent, jnp.zeros_like(theta_vec))

  def vjp_theta_loss(f, fl):
    (new, loss), pull = jax.vjp(lambda th: f(fl, th)[0], theta_vec)
    return new, pull(([jnp.zeros_like(x) for x in new], jnp.ones_like(loss)))

  def vjp_state(f, fl):  # what tbptt's backward pass does per step
    (new, loss), pull = jax.vjp(lambda s: f(s, theta_vec)[0], fl)
    return new, pull((tangent, jnp.ones_like(loss)))

  pieces = {"primal step": primal, "JVP w.r.t. state": jvp_state,
            "linearize + JVP": linearize_jvp, "VJP of loss w.r.t. theta": vjp_theta_loss,
            "VJP of step w.r.t. state": vjp_state}
  fns = [scanned(p) for p in pieces.values()]
  args = [lambda out: (floats0 if out is None else out,)] * len(fns)
  times = interleaved_medians(fns, args, repeats)
  rows = [{"piece": name, "seconds_per_step": t / _NUM_STEPS.value, "ratio": t / times[0]}
          for name, t in zip(pieces, times)]
  for r in rows:
    print(f"  {r['piece']}: {r['ratio']:.2f}", flush=True)
  return {"problem": problem.description, "rows": rows}


def suite_params(repeats):
  build = lambda wd: (digits(width=wd[0], depth=wd[1]), 1 if wd[0] <= 128 else 3)
  rows = _sweep(PARAMS_SWEEP, build, ["tbptt", "rtrl", "uoro", "pes"], repeats)
  for r in rows:
    r["point"] = f"{r['point'][0]}x{r['point'][1]}"
  return {"x": "num_params", "rows": rows}


def suite_hyperparams(repeats):
  build = lambda h: (digits(num_hyperparams=h), 1)
  return {"x": "num_hyperparams",
          "rows": _sweep((1, 2, 8, 64), build, ["tbptt", "rtrl", "uoro", "pes"], repeats)}


def suite_particles(repeats):
  problem = digits(width=64, depth=1)
  rows = []
  for n in (2, 8, 32, 128, 256):
    est = metaopt.pes(problem.system, num_steps=10, num_particles=n, sigma=0.01)
    plain_s, est_s = ratio(problem.system, problem.theta, est, 10, 10,
                           max(3, repeats // (1 + n // 32)))
    rows.append({"point": n, "num_params": num_params(problem), "estimator": "pes",
                 "plain_seconds_per_step": plain_s, "seconds_per_step": est_s,
                 "ratio": est_s / plain_s, "ratio_per_particle": est_s / plain_s / n})
    print(f"  pes({n}): {est_s / plain_s:.2f}", flush=True)
  return {"x": "num_particles", "rows": rows}


def suite_chains(repeats):
  problem = digits(width=64, depth=1)
  rows = []
  for name in ("uoro", "rtrl"):
    for chains in (1, 4, 16):
      est = metaopt.get_estimator(name, problem.system, num_steps=10)
      t = metaopt.tuner(est, optax.adam(1e-3), num_chains=chains)
      state0 = t.init(jax.random.key(0), problem.theta)
      run = jax.jit(lambda s: t.run(s, 1)[0])
      plain, plain_args = plain_runner(problem.system, problem.theta, 10)
      plain_s, run_s = interleaved_medians(
          [plain, run], [plain_args, lambda out: (state0 if out is None else out,)],
          max(3, repeats // (1 + chains // 4)))
      rows.append({"point": chains, "estimator": name, "num_params": num_params(problem),
                   "plain_seconds_per_step": plain_s / 10, "seconds_per_step": run_s / 10,
                   "ratio": run_s / plain_s, "ratio_per_chain": run_s / plain_s / chains})
      print(f"  tuner({name}, {chains} chains): {run_s / plain_s:.2f}", flush=True)
  return {"x": "num_chains", "rows": rows}


def peak_bytes(fn, *args):
  """Peak memory of the compiled program as XLA assigns its buffers (args + outputs + temps)."""
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def suite_memory(repeats):
  rows = []
  window = 20
  for horizon in sorted(int(t) for t in _MEMORY_HORIZONS.value):
    problem = (digits(width=64, depth=1, horizon=horizon) if _MEMORY_PROBLEM.value == "digits"
               else unrolled.toy_regression(horizon=horizon))
    theta, system = problem.theta, problem.system
    for name, est in [("full_bptt", metaopt.full_bptt(system)),
                      ("full_bptt(remat)", metaopt.full_bptt(system, remat=True))]:
      state = est.init(jax.random.key(0), theta)
      row = {"horizon": horizon, "estimator": name,
             "peak_bytes": peak_bytes(est.unroll, state, theta, jax.random.key(1))}
      if horizon <= 200 and _MEMORY_TIMING.value:  # the compute side of the trade
        plain_s, est_s = ratio(system, theta, est, horizon, window, max(3, repeats // 3))
        row["ratio"] = est_s / plain_s
      rows.append(row)
    for name in ("tbptt", "rtrl", "uoro", "pes"):
      est = metaopt.get_estimator(name, system, num_steps=window, num_particles=8)

      def whole_horizon(state, theta, key, est=est, windows=horizon // window):
        # The online run over T steps; keys made inside, so no input grows with T.
        def body(carry, _):  # a tuner consumes each window's grad; here they are summed
          s, total, i = carry
          s, grad, _ = est.unroll(s, theta, jax.random.fold_in(key, i))
          return (s, jax.tree.map(jnp.add, total, grad), i + 1), None
        zeros = jax.tree.map(jnp.zeros_like, theta)
        return jax.lax.scan(body, (state, zeros, 0), None, length=windows)[0][:2]

      state = est.init(jax.random.key(0), theta)
      rows.append({"horizon": horizon, "estimator": label(name, 8),
                   "peak_bytes": peak_bytes(whole_horizon, state, theta, jax.random.key(1))})
    print(f"  T={horizon}: " + ", ".join(f"{r['estimator']} {r['peak_bytes'] / 2**20:.3f} MiB"
                                         for r in rows if r["horizon"] == horizon), flush=True)
  return {"x": "horizon", "rows": rows}


def quadratic10(horizon=100):
  """A 10-D noisy quadratic with per-coordinate log step sizes: compute is negligible."""
  curvature = jnp.linspace(0.1, 2.0, 10)

  def init(key, theta):
    del theta
    return jnp.ones(10) + 0.1 * jax.random.normal(key, (10,))

  def step(x, theta, key):
    x = x - jnp.exp(theta) * curvature * x + 0.01 * jax.random.normal(key, (10,))
    return x, 0.5 * jnp.sum(curvature * x**2)

  return metaopt.UnrolledSystem(init, step, horizon), jnp.full((10,), -2.0)


def suite_tuner(repeats):
  system, theta = quadratic10()
  rows = []
  num_outer = 1000
  for name in ("tbptt", "rtrl", "uoro"):
    est = metaopt.get_estimator(name, system, num_steps=10)
    t = metaopt.tuner(est, optax.adam(1e-2))
    tstate = t.init(jax.random.key(0), theta)
    run = jax.jit(lambda s: t.run(s, num_outer)[0])
    est_state = est.init(jax.random.key(0), theta)

    @jax.jit
    def compute_only(s, est=est):  # the same windows, no outer update, no bookkeeping
      def body(carry, k):  # sum the grads: XLA would drop unused gradient work
        s, total = carry
        s, grad, _ = est.unroll(s, theta, k)
        return (s, total + grad), None
      keys = jax.random.split(jax.random.key(3), num_outer)
      return jax.lax.scan(body, (s, jnp.zeros_like(theta)), keys)[0]

    run_s, compute_s = interleaved_medians(
        [run, compute_only], [lambda out: (tstate if out is None else out,),
                              lambda out: (est_state if out is None else out[0],)],
        max(3, repeats // 3))
    update = jax.jit(t.update)
    s = jax.block_until_ready(update(tstate))
    start = time.perf_counter()
    for _ in range(200):  # one host call per outer step, as a Python training loop would
      s = update(s[0] if isinstance(s, tuple) else s)
    jax.block_until_ready(s)
    python_loop_s = (time.perf_counter() - start) / 200
    rows.append({"estimator": name, "seconds_per_outer_step": run_s / num_outer,
                 "compute_seconds_per_outer_step": compute_s / num_outer,
                 "overhead_seconds": (run_s - compute_s) / num_outer,
                 "python_loop_seconds_per_outer_step": python_loop_s})
    print(f"  tuner({name}): {1e3 * rows[-1]['seconds_per_outer_step']:.3f} ms per outer step, "
          f"overhead {1e3 * rows[-1]['overhead_seconds']:.3f} ms", flush=True)
  return {"rows": rows}


def suite_online_rnn(repeats):
  rows = []
  window = 20
  for hidden in (32, 256, 2048, 8192):
    problem = online_rnn.online_rnn(cell="elstm", task="delayed_recall", hidden_size=hidden,
                                    task_options={"delay": 10})
    names = ["rtrl_elementwise", "uoro", "tbptt"] + (["rtrl"] if hidden == 32 else [])
    for name in names:
      est = metaopt.get_estimator(name, problem.system, num_steps=window)
      plain_s, est_s = ratio(problem.system, problem.theta, est, window, window,
                             max(3, repeats // (10 if name == "rtrl" else 1)))
      rows.append({"hidden_size": hidden, "num_params": int(problem.num_params),
                   "estimator": name, "plain_seconds_per_step": plain_s,
                   "seconds_per_step": est_s, "ratio": est_s / plain_s})
      print(f"  eLSTM {hidden} units ({problem.num_params} weights) {name}: "
            f"{est_s / plain_s:.2f} ({1e6 * est_s:.1f} µs per step)", flush=True)
  return {"x": "hidden_size", "rows": rows}


# --------------------------------------------------------------------------- output


def machine():
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
          "num_devices": jax.device_count(), "cpu_count": cores, "machine": platform.machine(),
          "jax": jax.__version__, "optax": optax.__version__}


def markdown(results):
  m = results["machine"]
  out = [f"Measured on {m['backend']} ({m['device']}, {m['cpu_count']} cores, "
         f"{m['num_devices']} device(s)), jax {m['jax']}.", ""]
  if "headline" in results:
    h = results["headline"]
    out += [f"### Headline: {h['problem']}, H={h['num_hyperparams']}, "
            f"num_steps={h['num_steps']}", "",
            "| estimator | ms per inner step | ratio to plain step | compile s |",
            "|---|---|---|---|"]
    for r in h["rows"]:
      c = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"
      out.append(f"| {r['estimator']} | {1e3 * r['seconds_per_step']:.3f} | {r['ratio']:.2f} | "
                 f"{c} |")
    out.append("")
  for suite, x in (("params", "point"), ("hyperparams", "point"), ("particles", "point"),
                   ("chains", "point"), ("online_rnn", "hidden_size")):
    if suite not in results:
      continue
    rows = results[suite]["rows"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    points = list(dict.fromkeys(r[x] for r in rows))
    out += [f"### Ratio to the plain step against {results[suite].get('x', x)}", "",
            f"| {results[suite].get('x', x)} | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|"]
    for p in points:
      cells = []
      for n in names:
        r = [r for r in rows if r[x] == p and r["estimator"] == n]
        cells.append(f"{r[0]['ratio']:.2f}" if r else "")
      extra = ""
      if suite in ("params", "online_rnn"):
        extra = f" ({[r for r in rows if r[x] == p][0]['num_params']} params)"
      out.append(f"| {p}{extra} | " + " | ".join(cells) + " |")
    out.append("")
  if "online_rnn" in results:
    rows = results["online_rnn"]["rows"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    out += ["### Online eLSTM: µs per inner step against hidden size (window 20)", "",
            "| hidden size (weights) | plain step | " + " | ".join(names) + " |",
            "|---" * (len(names) + 2) + "|"]
    for h in dict.fromkeys(r["hidden_size"] for r in rows):
      at = [r for r in rows if r["hidden_size"] == h]
      cells = [next((f"{1e6 * r['seconds_per_step']:.1f}" for r in at if r["estimator"] == n), "")
               for n in names]
      plain = 1e6 * float(np.median([r["plain_seconds_per_step"] for r in at]))
      out.append(f"| {h} ({at[0]['num_params']}) | {plain:.1f} | " + " | ".join(cells) + " |")
    out.append("")
  if "memory" in results:
    rows = results["memory"]["rows"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    horizons = sorted({r["horizon"] for r in rows})
    out += ["### Peak memory (MiB, XLA buffer assignment) against the horizon T", "",
            "| estimator | " + " | ".join(f"T={t}" for t in horizons) + " | "
            + " | ".join(f"growth T×{t // horizons[0]}" for t in horizons[1:]) + " |",
            "|---" * (2 * len(horizons)) + "|"]
    for n in names:
      mem = [next(r["peak_bytes"] for r in rows if r["estimator"] == n and r["horizon"] == t)
             for t in horizons]
      out.append(f"| {n} | " + " | ".join(f"{b / 2**20:.2f}" for b in mem) + " | "
                 + " | ".join(f"{100 * (b / mem[0] - 1):+.1f}%" for b in mem[1:]) + " |")
    trade = [r for r in rows if "ratio" in r]
    if trade:
      out.append("\nfull_bptt compute ratio (remat trade): " + ", ".join(
          f"{r['estimator']} T={r['horizon']}: {r['ratio']:.2f}" for r in trade))
    out.append("")
  if "breakdown" in results:
    out += ["### Where the time goes (headline problem, per inner step)", "",
            "| piece | ms per step | ratio to the primal step |", "|---|---|---|"]
    for r in results["breakdown"]["rows"]:
      out.append(f"| {r['piece']} | {1e3 * r['seconds_per_step']:.3f} | {r['ratio']:.2f} |")
    out.append("")
  if "tuner" in results:
    out += ["### Tuner overhead per outer step, 10-D quadratic (num_steps=10)", "",
            "| estimator | ms per outer step | ms estimator compute | overhead ms | "
            "ms with one host call per step |", "|---|---|---|---|---|"]
    for r in results["tuner"]["rows"]:
      out.append(f"| {r['estimator']} | {1e3 * r['seconds_per_outer_step']:.4f} | "
                 f"{1e3 * r['compute_seconds_per_outer_step']:.4f} | "
                 f"{1e3 * r['overhead_seconds']:.4f} | "
                 f"{1e3 * r['python_loop_seconds_per_outer_step']:.4f} |")
  return "\n".join(out) + "\n"


def plots(results, output_dir):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  specs = [("params", "num_params", "parameters P", True, "ratio"),
           ("hyperparams", "point", "hyperparameters H", True, "ratio"),
           ("particles", "point", "particles", True, "ratio"),
           ("chains", "point", "chains", True, "ratio"),
           ("online_rnn", "hidden_size", "eLSTM hidden size", True, "seconds_per_step"),
           ("memory", "horizon", "horizon T", True, "peak_bytes")]
  for suite, x, xlabel, logx, y in specs:
    if suite not in results:
      continue
    rows = results[suite]["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in dict.fromkeys(r["estimator"] for r in rows):
      pts = [(r[x], r[y]) for r in rows if r["estimator"] == name and y in r]
      ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel({"ratio": "ratio to plain step", "peak_bytes": "peak bytes",
                   "seconds_per_step": "seconds per inner step"}[y])
    if logx:
      ax.set_xscale("log")
    if y != "ratio":
      ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(output_dir, f"{suite}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = sorted(set(_SUITES.value) - set(SUITES))
  if unknown:
    raise app.UsageError(f"--suites: unknown {unknown}; choose from {list(SUITES)}")
  unknown = sorted(set(_ESTIMATORS.value) - set(metaopt.ESTIMATORS))
  if unknown:
    raise app.UsageError(f"--estimators: unknown {unknown}; choose from {metaopt.ESTIMATORS}")
  if _REPEATS.value < 1:
    raise app.UsageError(f"--repeats must be >= 1, got {_REPEATS.value}")
  if _NUM_STEPS.value < 1 or 200 % _NUM_STEPS.value:
    raise app.UsageError(f"--num_steps must divide the headline horizon 200, got {_NUM_STEPS.value}")
  if _NUM_PARTICLES.value < 2 or _NUM_PARTICLES.value % 2:
    raise app.UsageError(f"--num_particles must be even and >= 2, got {_NUM_PARTICLES.value}")
  try:
    horizons = [int(t) for t in _MEMORY_HORIZONS.value]
  except ValueError:
    raise app.UsageError(f"--memory_horizons must be integers, got {_MEMORY_HORIZONS.value}") from None
  if not horizons or any(t < 20 or t % 20 for t in horizons):
    raise app.UsageError(f"--memory_horizons must be multiples of 20 (the memory suite's window), "
                         f"got {_MEMORY_HORIZONS.value}")
  output_dir = _OUTPUT_DIR.value or os.path.join(
      "runs", f"benchmark-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(output_dir, exist_ok=True)
  results = {"machine": machine()}
  for suite in SUITES:
    if suite in _SUITES.value:
      print(f"suite {suite}", flush=True)
      start = time.perf_counter()
      results[suite] = globals()[f"suite_{suite}"](_REPEATS.value)
      results[suite]["wall_seconds"] = time.perf_counter() - start
      # Partial results survive a crash in a later suite.
      write_atomic(os.path.join(output_dir, "results.json"), json.dumps(results, indent=1))
  table = markdown(results)
  write_atomic(os.path.join(output_dir, "results.md"), table)
  if _OUTPUT_JSON.value:
    write_atomic(_OUTPUT_JSON.value, json.dumps(results, indent=1))
  written = plots(results, output_dir)
  print("\n" + table)
  print(f"written to {output_dir}: results.json, results.md, "
        + ", ".join(os.path.basename(p) for p in written))


if __name__ == "__main__":
  app.run(main)
