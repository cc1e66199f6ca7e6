"""Estimators against jax.grad of the full unroll: exact ones to float tolerance,
unbiased ones statistically, truncated ones measurably biased."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
import systems

NUM_STEPS = {"linear_init_dependent": 2, "tanh_rnn": 2, "optax_regression": 2}

EXACT = {
    "full_bptt": lambda system, n: metaopt.full_bptt(system),
    "full_bptt_remat": lambda system, n: metaopt.full_bptt(system, remat=True),
    "full_bptt_unrolled": lambda system, n: metaopt.full_bptt(system, unroll=True),
    "tbptt_whole_horizon": lambda system, n: metaopt.tbptt(system, num_steps=system.horizon),
    "rtrl": lambda system, n: metaopt.rtrl(system, num_steps=n),
}
UNBIASED = {
    "uoro": lambda system, n: metaopt.uoro(system, num_steps=n),
    "uoro_one_step_variance": lambda system, n: metaopt.uoro(system, num_steps=n,
                                                             rho="one_step_variance"),
    "uoro_fixed_gaussian": lambda system, n: metaopt.uoro(system, num_steps=n, rho="fixed",
                                                          noise="gaussian"),
    "uoro_diagonal_shaping": lambda system, n: metaopt.uoro(system, num_steps=n,
                                                            shaping="diagonal"),
    "uoro_rank4": lambda system, n: metaopt.uoro(system, num_steps=n, rank=4),
    "pes": lambda system, n: metaopt.pes(system, num_steps=n, num_particles=4, sigma=0.01),
    "nres": lambda system, n: metaopt.nres(system, num_steps=n, num_particles=4, sigma=0.01),
    "forward_gradient": lambda system, n: metaopt.forward_gradient(system, num_steps=n),
    # Unbiased for the noisy loop; its O(sigma^2) bias is far below the test's resolution.
    "reinforce": lambda system, n: metaopt.reinforce(system, num_steps=n, sigma=1e-2),
}
ALL = {
    **EXACT, **UNBIASED,
    "tbptt": lambda system, n: metaopt.tbptt(system, num_steps=n),
    "truncated_es": lambda system, n: metaopt.truncated_es(system, num_steps=n, num_particles=4,
                                                           sigma=0.01),
}
ALL = {k: v for k, v in ALL.items() if not k.startswith("uoro_")}  # one uoro suffices here
# What `-m "not slow"` runs of the estimator x system matrices below (one system; reverse, forward,
# stochastic forward and ES estimators); the plain run covers all of them.
FAST_SYSTEMS = {"linear_init_dependent"}
FAST_ESTIMATORS = {"tbptt", "rtrl", "uoro", "pes"}


def per_horizon_grads(est, system, theta, key, num_steps, num_horizons=2):
  """Each horizon's summed window grads and its exact gradient, on the estimator's own keys.

  metaopt.sum_window_grads and metaopt.exact_grad sum over all windows; this keeps the horizons
  apart, so that the second one shows the accumulators were reset. Keys as metaopt.horizon.window_keys.
  """
  windows = system.horizon // num_steps
  init_key, window_keys = metaopt.horizon.window_keys(key, windows * num_horizons)
  unroll = jax.jit(est.unroll)
  exact = jax.jit(jax.grad(lambda th, k, s: jnp.sum(metaopt.full_unroll(system, th, k, s)[1])))
  state = est.init(init_key, theta)
  out = []
  for h in range(num_horizons):
    keys_h = window_keys[h * windows:(h + 1) * windows]
    total = jax.tree.map(jnp.zeros_like, theta)
    for k in keys_h:
      state, grad, metrics = unroll(state, theta, k)
      assert set(metrics) >= {"loss"}
      total = jax.tree.map(jnp.add, total, grad)
    step_keys = jnp.concatenate([metaopt.horizon.split_window_key(k, num_steps).steps for k in keys_h])
    out.append((total, exact(theta, init_key, step_keys)))
    init_key = metaopt.horizon.split_window_key(keys_h[-1], num_steps).next_init
  return out


@pytest.mark.parametrize("system_name", systems.slow_unless(sorted(systems.SYSTEMS), FAST_SYSTEMS))
@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_estimators_match_jax_grad_over_two_horizons(name, system_name):
  system, theta = systems.SYSTEMS[system_name]()
  est = EXACT[name](system, NUM_STEPS[system_name])
  num_steps = system.horizon if name.startswith("full") or "whole" in name else NUM_STEPS[system_name]
  for h, (total, exact) in enumerate(
      per_horizon_grads(est, system, theta, jax.random.key(7), num_steps)):
    total, exact = systems.flat(total), systems.flat(exact)
    err = np.linalg.norm(total - exact) / np.linalg.norm(exact)
    assert err <= 1e-4, f"horizon {h}: {total} vs exact {exact} (relative error {err:.2e})"


def test_rtrl_matches_jax_grad_in_float64():
  with jax.enable_x64(True):
    system, theta = systems.tanh_rnn()
    theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), theta)
    est = metaopt.rtrl(system, num_steps=2)
    for total, exact in per_horizon_grads(est, system, theta, jax.random.key(0), 2):
      chex.assert_tree_all_finite(exact)  # assert_trees_all_close takes NaN for equal to NaN
      chex.assert_trees_all_close(total, exact, rtol=1e-10)


# The original unbiased estimators on every system; the variants on two (one whose init depends
# on theta), which keeps the suite's time in bounds. Diagonal shaping also on optax_regression:
# the other two have a single state leaf, where its per-leaf scale (of unit mean square) is 1 and
# the estimates equal plain uoro's.
UNBIASED_CASES = sorted(
    [(name, system) for name in ("uoro", "pes") for system in systems.SYSTEMS]
    + [(name, system) for name in UNBIASED if name not in ("uoro", "pes")
       for system in ("linear_init_dependent", "tanh_rnn")]
    + [("uoro_diagonal_shaping", "optax_regression")])


@pytest.mark.slow
@pytest.mark.parametrize("name, system_name", UNBIASED_CASES)
def test_unbiased_estimators_mean_within_five_standard_errors(name, system_name):
  system, theta = systems.SYSTEMS[system_name]()
  num_steps = NUM_STEPS[system_name]
  est = UNBIASED[name](system, num_steps)
  estimates, exacts = systems.sample_estimates(est, system, theta, 2000, num_steps, seed=3)
  diff = np.asarray(estimates - exacts, np.float64)
  mean = diff.mean(0)
  stderr = diff.std(0, ddof=1) / np.sqrt(diff.shape[0])
  exact_mean = np.asarray(exacts).mean(0)
  print(f"\n{name} on {system_name}: exact {exact_mean}\n  mean error {mean}\n  stderr {stderr}\n"
        f"  |mean error| / stderr {np.abs(mean) / stderr}")
  assert np.all(np.abs(mean) <= 5 * stderr + 1e-5 * np.abs(exact_mean)), (mean, stderr)
  # The test has power: the estimates are informative, not drowned in noise.
  assert np.linalg.norm(stderr) < 0.2 * np.linalg.norm(exact_mean)


def test_tbptt_is_biased_on_long_memory():
  system, theta = systems.long_memory()
  windows = system.horizon  # one horizon of one-step windows
  total = metaopt.sum_window_grads(metaopt.tbptt(system, num_steps=1), theta, jax.random.key(0),
                                   num_windows=windows)
  exact = metaopt.exact_grad(system, theta, jax.random.key(0), num_steps=1, num_windows=windows)
  print(f"\ntbptt(1) {total} vs exact {exact}")
  assert np.abs(total - exact) > 0.5 * np.abs(exact)


@pytest.mark.slow
@pytest.mark.parametrize("unroll", [2, True])
def test_tbptt_unroll_changes_cost_not_the_estimate(unroll):
  system, theta = systems.optax_regression()
  grads = [metaopt.sum_window_grads(metaopt.tbptt(system, num_steps=2, unroll=u), theta,
                                    jax.random.key(4), num_windows=4) for u in (1, unroll)]
  chex.assert_trees_all_close(*grads, rtol=1e-5)
  with pytest.raises(ValueError, match="unroll"):
    metaopt.tbptt(system, num_steps=2, unroll=0)


def test_truncated_es_matches_tbptt_as_sigma_shrinks():
  """Truncated ES estimates the same truncated quantity as tbptt (smoothed)."""
  system, theta = systems.long_memory(horizon=8)
  tb = float(metaopt.sum_window_grads(metaopt.tbptt(system, num_steps=2), theta,
                                      jax.random.key(0), num_windows=4))
  est = metaopt.truncated_es(system, num_steps=2, num_particles=2, sigma=1e-2)
  samples, _ = systems.sample_estimates(est, system, theta, 2000, 2, seed=1)
  mean, stderr = float(samples.mean()), float(samples.std() / np.sqrt(samples.shape[0]))
  print(f"\ntruncated ES mean {mean} (stderr {stderr}) vs tbptt {tb}")
  assert abs(mean - tb) <= 5 * stderr + 1e-4 * abs(tb), (mean, stderr, tb)


@pytest.mark.parametrize("name", systems.slow_unless(sorted(ALL), FAST_ESTIMATORS))
def test_unroll_is_not_retraced(name):
  system, theta = systems.optax_regression()
  systems.jit_unroll_without_retracing(ALL[name](system, 2), theta)  # raises on a retrace


@pytest.mark.parametrize("name", systems.slow_unless(sorted(ALL), FAST_ESTIMATORS))
def test_vmap_over_keys_matches_separate_calls(name):
  system, theta = systems.linear_init_dependent()
  est = ALL[name](system, 2)
  keys = jax.random.split(jax.random.key(0), 3)
  # Jitted (one compilation each), which is much faster than op-by-op here.
  init, unroll = jax.jit(est.init), jax.jit(est.unroll)
  states = jax.jit(jax.vmap(est.init, in_axes=(0, None)))(keys, theta)
  _, grads, metrics = jax.jit(jax.vmap(est.unroll, in_axes=(0, None, 0)))(states, theta, keys)
  for i, key in enumerate(keys):
    _, grad, m = unroll(init(key, theta), theta, key)
    chex.assert_tree_all_finite(grad)  # assert_trees_all_close takes NaN for equal to NaN
    # ES divides loss differences by sigma^2: the batched program's other rounding shows at ~1e-5.
    rtol = 1e-4 if name in ("pes", "truncated_es", "nres") else 1e-5
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], grads), grad, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(FAST_ESTIMATORS))
def test_vmap_over_copies_out_of_step_matches_separate_calls(name):
  """Copies at different places in their horizons (one starts one, one does not) under vmap."""
  system, theta = systems.linear_init_dependent()  # horizon 6, windows of 2
  est = ALL[name](system, 2)
  unroll = jax.jit(est.unroll)
  states = [est.init(jax.random.key(i), theta) for i in range(2)]
  states[1] = unroll(states[1], theta, jax.random.key(9))[0]  # one window ahead
  batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
  keys = jax.random.split(jax.random.key(3), 2)
  for _ in range(4):  # across a horizon's end, for each copy at another window
    batched, grads, _ = jax.jit(jax.vmap(est.unroll, in_axes=(0, None, 0)))(batched, theta, keys)
    outs = [unroll(s, theta, k) for s, k in zip(states, keys)]
    # ES divides by sigma^2 = 1e-4: a batched sum's other rounding shows at ~1e-4.
    rtol = 1e-3 if name == "pes" else 1e-5
    for i, (state, grad, _) in enumerate(outs):
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], grads), grad, rtol=rtol,
                                  atol=1e-6)
    states = [o[0] for o in outs]
    keys = jax.random.split(keys[0], 2)


@pytest.mark.parametrize("name", sorted(FAST_ESTIMATORS))
def test_vmapped_copies_start_a_horizon_only_in_windows_that_need_one(name):
  """Under vmap a cond on a batched flag would run init in every window; here it does not."""
  calls = []
  base, theta = systems.linear_init_dependent()  # horizon 6, windows of 2: 3 per horizon

  def init(key, th):
    jax.debug.callback(lambda: calls.append(1))
    return base.init(key, th)

  system = base._replace(init=init)
  est = ALL[name](system, 2)
  keys = jax.random.split(jax.random.key(0), 3)
  states = jax.vmap(est.init, in_axes=(0, None))(keys, theta)
  unroll = jax.jit(jax.vmap(est.unroll, in_axes=(0, None, 0)))
  started = []
  for w in range(6):
    calls.clear()
    states = unroll(states, theta, jax.random.split(jax.random.key(w), 3))[0]
    jax.effects_barrier()
    started.append(bool(calls))
  assert started == [True, False, False, True, False, False]


def test_state_is_checkpointable_with_numpy():
  system, theta = systems.optax_regression()
  est = metaopt.uoro(system, num_steps=2)
  unroll = jax.jit(est.unroll)
  state = est.init(jax.random.key(0), theta)
  state, _, _ = unroll(state, theta, jax.random.key(1))
  restored = jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, state))
  a = unroll(state, theta, jax.random.key(2))[1]
  b = unroll(restored, theta, jax.random.key(2))[1]
  chex.assert_tree_all_finite(a)  # assert_trees_all_equal takes NaN for equal to NaN
  chex.assert_trees_all_equal(a, b)
