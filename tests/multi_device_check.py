"""Runs the vmapped parts of metaopt on N host CPU devices; prints JSON.

Usage: python tests/multi_device_check.py N. tests/test_sharding.py runs it with
N = 1 and N = 4 and compares.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt
import systems
import unrolled
from studies import bias_variance


def num_devices(x):
  return len(jax.tree.leaves(x)[0].sharding.device_set)


def quadratic8(horizon=4):
  """8 hyperparameters (per-coordinate log step sizes) on a 8-D quadratic: rtrl has 8 tangents."""
  def init(key, theta):
    return jnp.ones(8) + 0.1 * jax.random.normal(key, (8,))

  def step(x, theta, key):
    x = x - jnp.exp(theta) * (jnp.linspace(0.5, 2.0, 8) * x) + 0.01 * jax.random.normal(key, (8,))
    return x, 0.5 * jnp.sum(x**2)

  return metaopt.UnrolledSystem(init, step, horizon), jnp.full((8,), -1.0)


def main():
  out = {"devices": jax.device_count()}
  system, theta = systems.linear_init_dependent()
  pes = metaopt.pes(system, num_steps=2, num_particles=8, sigma=0.1)
  unroll = jax.jit(pes.unroll)
  state = pes.init(jax.random.key(0), theta)
  grads = []
  for i in range(3):
    state, grad, _ = unroll(state, theta, jax.random.key(i + 1))
    grads.append(np.ravel(jax.flatten_util.ravel_pytree(grad)[0]).tolist())
  out["pes"] = grads
  out["pes_devices"] = num_devices(state.inner)

  t = metaopt.tuner(metaopt.uoro(system, num_steps=2), optax.sgd(0.01), num_chains=4)
  tstate, info = jax.jit(t.run, static_argnums=1)(t.init(jax.random.key(3), theta), 3)
  out["tuner"] = np.asarray(info["theta"]).tolist()
  out["tuner_devices"] = num_devices(tstate.estimator_state.s_tilde)

  # pes inside a tuner with 4 chains: the chains are spread, the particles are not (one layout).
  t = metaopt.tuner(metaopt.pes(system, num_steps=2, num_particles=8, sigma=0.1,
                                spread_copies=False), optax.sgd(0.01), num_chains=4)
  tstate = t.init(jax.random.key(7), theta)
  update = jax.jit(t.update)
  tstate, info = update(tstate)
  out["tuner_pes"] = np.asarray(info["theta"]).tolist()
  out["tuner_pes_devices"] = num_devices(tstate.estimator_state.inner)
  hlo = update.lower(tstate).compile().as_text()
  out["tuner_pes_collectives"] = hlo.count("all-to-all") + hlo.count("all-gather")

  qsys, qtheta = quadratic8()
  rtrl = metaopt.rtrl(qsys, num_steps=2)
  rstate, rgrad, _ = jax.jit(rtrl.unroll)(rtrl.init(jax.random.key(4), qtheta), qtheta,
                                          jax.random.key(5))
  out["rtrl"] = np.asarray(rgrad).tolist()
  out["rtrl_devices"] = num_devices(rstate.influence)

  problem = unrolled.toy_regression(horizon=20)
  est = metaopt.pes(problem.system, num_steps=10, num_particles=2, sigma=0.1)
  keys = jax.random.split(jax.random.key(6), 12)
  samples = jax.jit(lambda ks: bias_variance.estimates(problem, est, 10, 1, ks, batch_size=8))(keys)
  out["study"] = np.asarray(samples).tolist()
  out["study_devices"] = num_devices(samples)
  print(json.dumps(out))


if __name__ == "__main__":
  # JAX fixes its CPU device count when its backend starts (at the first JAX operation, which
  # the imports above do not make), so this must come first.
  jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
  main()
