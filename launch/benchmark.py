r"""Cost of each estimator per inner step, relative to the plain inner step.

The plain step is a jit-compiled ``lax.scan`` of ``system.step`` with no
hypergradient. Each estimator's ``unroll`` is jit-compiled and timed in the
same process on the same problem, alternating with the plain step so that both
see the same machine; the ratio is (estimator seconds per inner step) /
(plain seconds per inner step), each a median over repeats.

The problem: an MLP classifier (64-128-128-10, 26,122 parameters) trained by
SGD with momentum 0.9 on generated 64-feature data, theta = (log learning
rate, log weight decay), meta-loss = validation loss after each step.

Usage:
  python -m launch.benchmark [--num_steps=20] [--num_particles=8] [--repeats=15]
"""

from __future__ import annotations

import json
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt

_NUM_STEPS = flags.DEFINE_integer("num_steps", 20, "Inner steps per window.")
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 8, "Particles for pes / truncated_es.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed repeats per estimator (median reported).")
_HORIZON = flags.DEFINE_integer("horizon", 200, "Inner horizon (full_bptt unrolls all of it).")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["full_bptt", "tbptt", "rtrl", "uoro", "pes", "truncated_es"],
    "Which estimators to time.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the results to this file.")


def mlp_classifier(horizon: int, sizes=(64, 128, 128, 10), batch_size=128, seed=0):
  """The benchmark's inner problem: returns (system, theta, num_params)."""
  rng = np.random.default_rng(seed)
  num_in, num_classes = sizes[0], sizes[-1]
  centers = rng.normal(size=(num_classes, num_in)).astype(np.float32)

  def make_data(n):
    labels = rng.integers(0, num_classes, n)
    x = centers[labels] + 1.5 * rng.normal(size=(n, num_in)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(labels)

  x_train, y_train = make_data(4096)
  x_val, y_val = make_data(512)
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)

  def init_params(key):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
      params.append((jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), jnp.zeros(n)))
    return params

  def loss_fn(params, x, y):
    h = x
    for w, b in params[:-1]:
      h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    logits = h @ w + b
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  def init(key, theta):
    del theta
    params = init_params(key)
    return params, opt.init(params)

  def step(state, theta, key):
    params, opt_state = state
    idx = jax.random.randint(key, (batch_size,), 0, x_train.shape[0])
    grads = jax.grad(loss_fn)(params, x_train[idx], y_train[idx])
    wd = jnp.exp(theta[1])
    grads = jax.tree.map(lambda g, p: g + wd * p, grads, params)
    opt_state = optax.tree.set(opt_state, learning_rate=jnp.exp(theta[0]))
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), loss_fn(params, x_val, y_val)

  theta = jnp.array([np.log(0.05), np.log(1e-4)], jnp.float32)
  num_params = sum(w.size + b.size for w, b in init_params(jax.random.key(0)))
  return metaopt.UnrolledSystem(init, step, horizon), theta, num_params


def _timed(fn, args):
  start = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return out, time.perf_counter() - start


def _interleaved_medians(fns, args_fns, repeats):
  """Median wall time of each fn, timing them in turn so drifts of the machine hit all alike.

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


def run(num_steps, num_particles, repeats, horizon, estimators):
  system, theta, num_params = mlp_classifier(horizon)
  key = jax.random.key(0)
  step_keys = jax.random.split(key, num_steps)

  @jax.jit
  def plain(state, keys):
    return jax.lax.scan(lambda s, k: system.step(s, theta, k), state, keys)

  state0 = system.init(key, theta)
  plain_args = lambda out: (state0 if out is None else out[0], step_keys)
  rows = []
  plain_times = []
  for name in estimators:
    est = metaopt.get_estimator(name, system, num_steps=num_steps, num_particles=num_particles)
    steps = metaopt.window_length(name, system, num_steps)
    est_state = est.init(key, theta)
    counter = iter(range(10**9))
    est_args = lambda out: (est_state if out is None else out[0], theta,
                            jax.random.fold_in(key, next(counter)))
    plain_s, est_s = _interleaved_medians([plain, jax.jit(est.unroll)], [plain_args, est_args],
                                          repeats)
    plain_s, est_s = plain_s / num_steps, est_s / steps
    plain_times.append(plain_s)
    label = f"{name}({num_particles})" if name in ("pes", "truncated_es", "nres") else name
    rows.append({"estimator": label, "seconds_per_step": est_s, "ratio": est_s / plain_s})
  rows.insert(0, {"estimator": "plain step", "seconds_per_step": float(np.median(plain_times)),
                  "ratio": 1.0})
  meta = {"num_params": num_params, "num_hyperparams": int(theta.size), "num_steps": num_steps,
          "horizon": horizon, "backend": jax.default_backend(),
          "device": str(jax.devices()[0].device_kind), "cpu_count": _cpu_count(),
          "machine": platform.machine(), "jax": jax.__version__}
  return meta, rows


def _cpu_count():
  import os
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count()


def format_table(meta, rows):
  lines = [f"MLP classifier, {meta['num_params']} parameters, H={meta['num_hyperparams']}, "
           f"num_steps={meta['num_steps']}, on {meta['backend']} ({meta['device']}, "
           f"{meta['cpu_count']} cores), jax {meta['jax']}",
           "| estimator | ms per inner step | ratio to plain step |", "|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['estimator']} | {1e3 * r['seconds_per_step']:.3f} | {r['ratio']:.2f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  meta, rows = run(_NUM_STEPS.value, _NUM_PARTICLES.value, _REPEATS.value, _HORIZON.value,
                   _ESTIMATORS.value)
  print(format_table(meta, rows))
  if _OUTPUT_JSON.value:
    with open(_OUTPUT_JSON.value, "w") as f:
      json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
