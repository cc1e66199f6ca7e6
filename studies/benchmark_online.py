"""The benchmark's suites of whole online runs: tuner chains, peak memory, tuner overhead, eLSTM.

Each is ``suite(config) -> {"rows": [...], ...}`` like those of
:mod:`studies.benchmark_suites`, whose problems and labels they share.
"""

from __future__ import annotations

import inspect
import time

import jax
import jax.numpy as jnp
import optax

import metaopt
from metaopt import timing
from studies.benchmark_suites import digits
from studies.benchmark_suites import label
import unrolled
from unrolled import online_rnn as online_rnn_lib

MEMORY_WINDOW = 20


def chains(config):
  """The tuner's run (one outer step of 10 inner steps) with 1, 4, 16 chains."""
  problem = digits(width=64, depth=1)
  rows = []
  for name in ("uoro", "rtrl"):
    for num_chains in (1, 4, 16):
      est = metaopt.get_estimator(name, problem.system, num_steps=10)
      t = metaopt.tuner(est, optax.adam(1e-3), num_chains=num_chains)
      state0 = t.init(jax.random.key(0), problem.theta)
      run = jax.jit(lambda s, t=t: t.run(s, 1)[0])
      plain, plain_args = timing.plain_runner(problem.system, problem.theta, num_steps=10)
      plain_s, run_s = timing.interleaved_medians(
          [plain, run], [plain_args, lambda out, s0=state0: (s0 if out is None else out,)],
          repeats=max(3, config.repeats // (1 + num_chains // 4)))
      rows.append({"point": num_chains, "estimator": name, "num_params": problem.num_params,
                   "plain_seconds_per_step": plain_s / 10, "seconds_per_step": run_s / 10,
                   "ratio": run_s / plain_s, "ratio_per_chain": run_s / plain_s / num_chains})
      print(f"  tuner({name}, {num_chains} chains): {run_s / plain_s:.2f}", flush=True)
  return {"x": "num_chains", "rows": rows}


def _whole_horizon_estimators(system):
  """(label, estimator) of the table's whole-horizon estimators, plus their remat variants."""
  for info in metaopt.ESTIMATOR_TABLE.values():
    if info.whole_horizon:
      yield info.name, metaopt.get_estimator(info.name, system, num_steps=MEMORY_WINDOW)
      if "remat" in inspect.signature(info.make).parameters:
        yield (f"{info.name}(remat)",
               metaopt.get_estimator(f"{info.name}[remat=True]", system, num_steps=MEMORY_WINDOW))


def memory(config):
  """Peak memory (XLA's buffer assignment) against the horizon T, and the remat trade."""
  rows = []
  for horizon in sorted(config.memory_horizons):
    problem = (digits(width=64, depth=1, horizon=horizon) if config.memory_problem == "digits"
               else unrolled.toy_regression(horizon=horizon))
    theta, system = problem.theta, problem.system
    for name, est in _whole_horizon_estimators(system):
      state = est.init(jax.random.key(0), theta)
      row = {"horizon": horizon, "estimator": name,
             "peak_bytes": timing.peak_bytes(est.unroll, state, theta, jax.random.key(1))}
      if horizon <= 200 and config.memory_timing:  # the compute side of the trade
        plain_s, est_s = timing.seconds_per_step(system, theta, est, window=horizon,
                                                 num_steps=MEMORY_WINDOW,
                                                 repeats=max(3, config.repeats // 3))
        row["ratio"] = est_s / plain_s
      rows.append(row)
    for spec in config.memory_estimators:
      est = metaopt.get_estimator(spec, system, num_steps=MEMORY_WINDOW,
                                  num_particles=config.num_particles)

      def online(state, theta, key, est=est, windows=horizon // MEMORY_WINDOW):
        # The online run over T steps; keys made inside, so no input grows with T.
        def body(carry, _):  # a tuner consumes each window's grad; here they are summed
          s, total, i = carry
          s, grad, _ = est.unroll(s, theta, jax.random.fold_in(key, i))
          return (s, jax.tree.map(jnp.add, total, grad), i + 1), None
        zeros = jax.tree.map(jnp.zeros_like, theta)
        return jax.lax.scan(body, (state, zeros, 0), None, length=windows)[0][:2]

      state = est.init(jax.random.key(0), theta)
      rows.append({"horizon": horizon, "estimator": label(spec, config.num_particles),
                   "peak_bytes": timing.peak_bytes(online, state, theta, jax.random.key(1))})
    print(f"  T={horizon}: " + ", ".join(f"{r['estimator']} {r['peak_bytes'] / 2**20:.3f} MiB"
                                         for r in rows if r["horizon"] == horizon), flush=True)
  return {"x": "horizon", "rows": rows}


def quadratic10(horizon=100):
  """A 10-D noisy quadratic with per-coordinate log step sizes: compute is negligible.

  Examples:
    >>> from studies import benchmark_online
    >>> system, theta = benchmark_online.quadratic10()
    >>> system.horizon, theta.shape
    (100, (10,))
  """
  curvature = jnp.linspace(0.1, 2.0, 10)

  def init(key, theta):
    del theta
    return jnp.ones(10) + 0.1 * jax.random.normal(key, (10,))

  def step(x, theta, key):
    x = x - jnp.exp(theta) * curvature * x + 0.01 * jax.random.normal(key, (10,))
    return x, 0.5 * jnp.sum(curvature * x**2)

  return metaopt.UnrolledSystem(init, step, horizon), jnp.full((10,), -2.0)


def tuner(config):
  """Wall time per outer step of ``tuner.run`` beyond the estimator's compute, 10-D quadratic."""
  system, theta = quadratic10()
  rows = []
  num_outer = 1000
  for name in ("tbptt", "rtrl", "uoro"):
    est = metaopt.get_estimator(name, system, num_steps=10)
    t = metaopt.tuner(est, optax.adam(1e-2))
    tstate = t.init(jax.random.key(0), theta)
    run = jax.jit(lambda s, t=t: t.run(s, num_outer)[0])
    est_state = est.init(jax.random.key(0), theta)

    @jax.jit
    def compute_only(s, est=est):  # the same windows, no outer update, no bookkeeping
      def body(carry, k):  # sum the grads: XLA would drop unused gradient work
        s, total = carry
        s, grad, _ = est.unroll(s, theta, k)
        return (s, total + grad), None
      keys = jax.random.split(jax.random.key(3), num_outer)
      return jax.lax.scan(body, (s, jnp.zeros_like(theta)), keys)[0]

    run_s, compute_s = timing.interleaved_medians(
        [run, compute_only], [lambda out: (tstate if out is None else out,),
                              lambda out: (est_state if out is None else out[0],)],
        repeats=max(3, config.repeats // 3))
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


def online_rnn(config):
  """rtrl_elementwise / uoro / tbptt (and generic rtrl at 32 units) on an online eLSTM."""
  rows = []
  window = 20
  for hidden in (32, 256, 2048, 8192):
    problem = online_rnn_lib.online_rnn(cell="elstm", task="delayed_recall", hidden_size=hidden,
                                        task_options={"delay": 10})
    for name in ["rtrl_elementwise", "uoro", "tbptt"] + (["rtrl"] if hidden == 32 else []):
      est = metaopt.get_estimator(name, problem.system, num_steps=window)
      plain_s, est_s = timing.seconds_per_step(
          problem.system, problem.theta, est, num_steps=window,
          repeats=max(3, config.repeats // (10 if name == "rtrl" else 1)))
      rows.append({"hidden_size": hidden, "num_params": int(problem.num_params),
                   "estimator": name, "plain_seconds_per_step": plain_s,
                   "seconds_per_step": est_s, "ratio": est_s / plain_s})
      print(f"  eLSTM {hidden} units ({problem.num_params} weights) {name}: "
            f"{est_s / plain_s:.2f} ({1e6 * est_s:.1f} µs per step)", flush=True)
  return {"x": "hidden_size", "rows": rows}
