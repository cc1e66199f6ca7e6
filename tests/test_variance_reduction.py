"""What the variance reductions and the wider estimator family do (Cooijmans & Martens 2019;
Li et al. 2023; Silver et al. 2022): measured, with the exact gradient as reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
import systems


def spread(make, system_name="tanh_rnn", num_steps=2, samples=2000, seed=5):
  """(mean error, its standard error, total variance) of an estimator against the exact gradient."""
  system, theta = systems.SYSTEMS[system_name]()
  estimates, exacts = systems.sample_estimates(make(system, num_steps), system, theta, samples,
                                               num_steps, seed)
  d = np.asarray(estimates - exacts, np.float64)
  return d.mean(0), d.std(0, ddof=1) / np.sqrt(len(d)), float(np.sum(d.var(0, ddof=1)))


@pytest.mark.slow
def test_rank_k_uoro_divides_the_variance_by_k():
  _, _, v1 = spread(lambda s, n: metaopt.uoro(s, num_steps=n))
  _, _, v4 = spread(lambda s, n: metaopt.uoro(s, num_steps=n, rank=4))
  print(f"\nuoro variance: rank 1 {v1:.4g}, rank 4 {v4:.4g} (ratio {v4 / v1:.3f})")
  assert 0.15 < v4 / v1 < 0.4


@pytest.mark.slow
@pytest.mark.parametrize("system_name", ["linear_init_dependent", "tanh_rnn"])
def test_reinforce_on_state_noise_tends_to_uoro_as_sigma_shrinks(system_name):
  """C&M: REINFORCE with a noise-free baseline -> UORO with fixed rhos and Gaussian noise."""
  _, _, v_uoro = spread(lambda s, n: metaopt.uoro(s, num_steps=n, rho="fixed", noise="gaussian"),
                        system_name)
  mean, se, v_small = spread(lambda s, n: metaopt.reinforce(s, num_steps=n, sigma=1e-3),
                             system_name)
  _, _, v_large = spread(lambda s, n: metaopt.reinforce(s, num_steps=n, sigma=0.3),
                         system_name)
  _, _, v_no_baseline = spread(
      lambda s, n: metaopt.reinforce(s, num_steps=n, sigma=1e-2, baseline=False), system_name)
  print(f"\n{system_name}: variance uoro(fixed, gaussian) {v_uoro:.4g}; reinforce sigma=1e-3 "
        f"{v_small:.4g}, sigma=0.3 {v_large:.4g}, no baseline sigma=1e-2 {v_no_baseline:.4g}")
  assert np.all(np.abs(mean) <= 5 * se + 1e-6)
  assert abs(v_small / v_uoro - 1) < 0.15
  assert v_no_baseline > 10 * v_uoro


@pytest.mark.slow
def test_nres_variance_does_not_grow_with_the_number_of_windows_but_pes_does():
  horizon = systems.tanh_rnn()[0].horizon
  v = {}
  for name, make in [("nres", metaopt.nres), ("pes", metaopt.pes)]:
    for n in (1, horizon):
      v[name, n] = spread(lambda s, k: make(s, num_steps=k, num_particles=4, sigma=0.01),
                          num_steps=n)[2]
  print(f"\nvariance over one horizon of 8 steps: {v}")
  assert 0.8 < v["nres", 1] / v["nres", horizon] < 1.25
  assert v["pes", 1] > 2 * v["pes", horizon]


@pytest.mark.slow
def test_forward_gradient_variance_grows_with_the_number_of_hyperparameters():
  """|grad|^2 (H + 1) for Gaussian directions: tanh_rnn has H = 5."""
  system, theta = systems.tanh_rnn()
  estimates, exacts = systems.sample_estimates(metaopt.forward_gradient(system, num_steps=2),
                                               system, theta, 4000, 2, seed=1)
  d = np.asarray(estimates - exacts, np.float64)
  g2 = float(np.mean(np.sum(np.asarray(exacts, np.float64) ** 2, axis=1)))
  variance = float(np.sum(d.var(0)))
  print(f"\nforward gradient variance {variance:.4g}, |grad|^2 (H+1) = {g2 * 6:.4g}")
  assert 0.7 * g2 * 6 < variance < 1.3 * g2 * 6


@pytest.mark.parametrize("kwargs, option", [
    (dict(rho="greedy"), "rho"), (dict(noise="uniform"), "noise"),
    (dict(shaping="full"), "shaping"), (dict(rank=0), "rank"), (dict(fixed_rho=0.0), "fixed_rho"),
])
def test_bad_uoro_options(kwargs, option):
  system, _ = systems.tanh_rnn()
  with pytest.raises(ValueError, match=option):
    metaopt.uoro(system, num_steps=2, **kwargs)


def test_estimator_specs():
  system, _ = systems.tanh_rnn()
  est = metaopt.get_estimator("uoro[rho=one_step_variance;rank=2]", system, num_steps=2)
  state = est.init(jax.random.key(0), systems.tanh_rnn()[1])
  assert state.theta_tilde.shape[0] == 2
  with pytest.raises(ValueError, match="rnak"):
    metaopt.get_estimator("uoro[rnak=2]", system, num_steps=2)
  with pytest.raises(ValueError, match="unknown estimator"):
    metaopt.get_estimator("oruo", system, num_steps=2)


# --- Cooijmans & Martens (2019): noise shaping Q_t = alpha_t Q_0, preactivation-space UORO. ---

def dense_memory_rnn(hidden_size=4, learned_h0=True, horizon=12):
  """A small dense tanh RNN on delayed recall (theta = its weights); h0 learned: theta-dependent init."""
  from unrolled import online_rnn
  model = online_rnn.online_rnn(cell="dense_tanh", task="delayed_recall", hidden_size=hidden_size,
                                horizon=horizon, task_options={"delay": 3})
  theta = model.theta
  if learned_h0:
    theta = {"cell": {**theta["cell"], "h0": jnp.full(hidden_size, 0.1)},
             "readout": theta["readout"]}
  return model.system, theta


def horizon_draws(est, system, theta, num_horizons, samples=2000, seed=3, num_steps=None):
  """(estimate - exact) over ``num_horizons`` horizons, (samples, dim) float64, and each draw's
  metrics of the last window."""
  num_steps = num_steps or system.horizon
  num_windows = num_horizons * system.horizon // num_steps

  def one(key):
    total = metaopt.sum_window_grads(est, theta, key, num_windows=num_windows)
    exact = metaopt.exact_grad(system, theta, key, num_steps=num_steps, num_windows=num_windows)
    init_key, keys = metaopt.horizon.window_keys(key, 1)
    _, _, metrics = est.unroll(est.init(init_key, theta), theta, keys[0])
    return systems.flat(total) - systems.flat(exact), metrics

  d, metrics = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), samples))
  return np.asarray(d, np.float64), metrics


def whole(system, option):
  return {**option, "num_steps": system.horizon}


# Every new option, on a theta-dependent init and on a multi-leaf state (with an integer leaf);
# the online shaping over 3 horizons, so that horizons 2-3 use the shape learned before them.
CM_OPTIONS = {
    "uoro_oracle_shaping": (lambda s: metaopt.uoro(s, **whole(s, {"shaping": "oracle"})), 1),
    "uoro_oracle_shaping_fixed_rho": (
        lambda s: metaopt.uoro(s, **whole(s, {"shaping": "oracle", "rho": "fixed"})), 1),
    "uoro_variance_rho": (lambda s: metaopt.uoro(s, **whole(s, {"rho": "variance"})), 1),
    "uoro_online_shaping": (lambda s: metaopt.uoro(s, num_steps=2, shaping="online"), 3),
    # Q_0 refreshed mid-horizon, after every 2-step block.
    "uoro_online_shaping_blocks": (
        lambda s: metaopt.uoro(s, num_steps=2, shaping="online", shaping_period=2), 1),
    "reinforce_oracle_shaping": (
        lambda s: metaopt.reinforce(s, **whole(s, {"sigma": 1e-2, "shaping": "oracle"})), 1),
}


def _mean_and_se(name, system_name):
  system, theta = systems.SYSTEMS[system_name]()
  make, num_horizons = CM_OPTIONS[name]
  num_steps = 2 if "online" in name else None
  d, _ = horizon_draws(make(system), system, theta, num_horizons, num_steps=num_steps)
  return d.mean(0), d.std(0, ddof=1) / np.sqrt(len(d))


@pytest.mark.slow
@pytest.mark.parametrize("system_name", ["linear_init_dependent", "optax_regression"])
@pytest.mark.parametrize("name", sorted(CM_OPTIONS))
def test_cooijmans_martens_options_are_unbiased(name, system_name):
  mean, se = _mean_and_se(name, system_name)
  print(f"\n{name} on {system_name}: |mean error| / se {np.abs(mean) / se}")
  assert np.all(np.abs(mean) <= 5 * se + 1e-6)


@pytest.mark.slow
def test_uoro_preactivation_is_unbiased_with_a_learned_initial_state():
  system, theta = dense_memory_rnn()
  est = metaopt.uoro_preactivation(system, num_steps=4)
  d, _ = horizon_draws(est, system, theta, 2, num_steps=4)
  mean, se = d.mean(0), d.std(0, ddof=1) / np.sqrt(len(d))
  noisy = se > 1e-6  # h0 and the readout are exact (zero variance): compare those absolutely
  print(f"\nuoro_preactivation: max |mean error| / se {np.max(np.abs(mean[noisy]) / se[noisy]):.2f}"
        f" over {noisy.sum()} noisy coordinates; exact ones max |error| "
        f"{np.max(np.abs(mean[~noisy])):.2e}")
  assert np.all(np.abs(mean[noisy]) <= 5 * se[noisy])
  assert np.max(np.abs(d[:, ~noisy])) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("system_name", ["tanh_rnn", "dense_memory_rnn"])
def test_oracle_shaping_cuts_the_variance_by_the_predicted_factor(system_name):
  """C&M (b): Q_0 = B^{-1/4} against Q_0 = I at the same alpha (fixed rhos): measured variance ratio
  against the predicted tr(B^{1/2})^2 / (tr(B) tr(I)) (averaged over the keys: E[num] / E[den])."""
  system, theta = (systems.tanh_rnn() if system_name == "tanh_rnn"
                   else dense_memory_rnn(hidden_size=8, learned_h0=False))
  d_identity, _ = horizon_draws(metaopt.uoro(system, num_steps=system.horizon, rho="fixed"),
                                system, theta, 1)
  d_shaped, metrics = horizon_draws(
      metaopt.uoro(system, num_steps=system.horizon, rho="fixed", shaping="oracle"),
      system, theta, 1)
  measured = d_shaped.var(0).sum() / d_identity.var(0).sum()
  predicted = float(np.mean(metrics["variance_bound_shaped"])
                    / np.mean(metrics["variance_bound_identity"]))
  print(f"\n{system_name}: variance ratio B^-1/4 : I measured {measured:.3f}, predicted "
        f"{predicted:.3f}")
  assert measured < 0.7
  assert 0.75 < measured / predicted < 1.33


@pytest.mark.slow
def test_preactivation_uoro_divides_the_variance_by_about_the_preactivation_count():
  """C&M (c): variance of the recurrent weights' estimate, uoro_preactivation : uoro, at N = 4, 16."""
  ratios = {}
  for n in (4, 16):
    system, theta = dense_memory_rnn(hidden_size=n, learned_h0=False)
    v = {}
    for name, est in (("uoro", metaopt.uoro(system, num_steps=4)),
                      ("preactivation", metaopt.uoro_preactivation(system, num_steps=4))):
      d, _ = horizon_draws(est, system, theta, 1, samples=1000, num_steps=4)
      v[name] = d.var(0).sum()  # the readout's part is exact in both
    ratios[n] = v["preactivation"] / v["uoro"]
  print(f"\nvariance uoro_preactivation / uoro: {ratios} (1/P: 0.25, 0.0625)")
  for n, ratio in ratios.items():
    assert 0.5 / n < ratio < 3 / n
  assert ratios[16] < ratios[4] / 2


@pytest.mark.slow
def test_reinforce_with_shaped_noise_tends_to_uoro_with_the_same_shape():
  """C&M: REINFORCE on state noise sigma Q_t u with a baseline -> UORO with that Q_t as sigma -> 0."""
  system, theta = systems.tanh_rnn()
  horizon = system.horizon
  d_uoro, _ = horizon_draws(
      metaopt.uoro(system, num_steps=horizon, shaping="oracle", noise="gaussian"), system, theta, 1)
  d_small, _ = horizon_draws(
      metaopt.reinforce(system, num_steps=horizon, sigma=1e-3, shaping="oracle"), system, theta, 1)
  d_plain, _ = horizon_draws(metaopt.reinforce(system, num_steps=horizon, sigma=1e-3),
                             system, theta, 1)
  v_uoro, v_small, v_plain = (d.var(0).sum() for d in (d_uoro, d_small, d_plain))
  print(f"\nvariance: uoro(oracle, gaussian) {v_uoro:.4g}, reinforce(oracle, sigma=1e-3) "
        f"{v_small:.4g}, reinforce(no shaping) {v_plain:.4g}")
  assert abs(v_small / v_uoro - 1) < 0.05
  assert v_small < 0.5 * v_plain


@pytest.mark.parametrize("make, match", [
    (lambda s: metaopt.uoro(s, num_steps=2, rho="variance"), "one_step_variance"),
    (lambda s: metaopt.uoro(s, num_steps=2, shaping="oracle"), "whole horizon"),
    (lambda s: metaopt.reinforce(s, num_steps=2, sigma=0.1, shaping="oracle"), "whole horizon"),
    (lambda s: metaopt.reinforce(s, num_steps=8, sigma=0.1, shaping="online"), "shaping"),
    (lambda s: metaopt.uoro_preactivation(s, num_steps=2), "DenseSystem"),
    (lambda s: metaopt.uoro(s, num_steps=2, shaping="online", shaping_period=0), "shaping_period"),
])
def test_bad_cooijmans_martens_options(make, match):
  system, _ = systems.tanh_rnn()
  with pytest.raises(ValueError, match=match):
    make(system)


def test_online_shaping_learns_its_shape_after_each_block():
  """The first block runs with Q = I; after it, Q_0 follows the hindsight diag(B) (unit mean square)."""
  system, theta = systems.optax_regression(horizon=8)
  est = metaopt.uoro(system, num_steps=2, shaping="online", shaping_period=4)
  state = est.init(jax.random.key(0), theta)
  for i, key in enumerate(jax.random.split(jax.random.key(1), 3)):
    state, _, _ = est.unroll(state, theta, key)
    q = jnp.concatenate([x.ravel() for x in state.shaping.q])
    if i == 0:  # 2 of the block's 4 steps taken
      chex.assert_trees_all_equal(q, jnp.ones_like(q))
  assert float(jnp.std(q)) > 1e-3
  np.testing.assert_allclose(float(jnp.mean(q**2)), 1.0, rtol=1e-5)


def test_oracle_refuses_a_large_state_before_any_compute():
  system = metaopt.UnrolledSystem(init=lambda key, th: jnp.zeros(2000) + th,
                                  step=lambda s, th, key: (s * th, jnp.sum(s)), horizon=2)
  est = metaopt.uoro(system, num_steps=2, shaping="oracle")
  with pytest.raises(ValueError, match="n=2000"):
    est.init(jax.random.key(0), jnp.float32(0.5))


def test_dense_system_refuses_a_bad_theta_layout():
  system, theta = dense_memory_rnn()
  bad = {"cell": {k: v for k, v in theta["cell"].items() if k != "b"}, "readout": theta["readout"]}
  with pytest.raises(ValueError, match="W_h"):
    metaopt.uoro_preactivation(system, num_steps=4).init(jax.random.key(0), bad)


def test_oracle_eigh_runs_one_matrix_at_a_time_under_vmap():
  """jaxlib's CPU eigh spreads a batch over XLA's intra-op pool and blocks a pool thread while it
  waits; two such batched calls at once deadlocked a 2-core machine (the oracle's estimate and
  metrics, vmapped over samples). Under vmap the oracle's eigh must stay unbatched."""
  from metaopt._src.estimators import shaping
  a = jax.random.normal(jax.random.key(0), (64, 40, 40))
  b = a @ jnp.swapaxes(a, 1, 2)
  both = jax.jit(jax.vmap(lambda m: (shaping._eigh(m)[0], shaping._eigh(m + 1.0)[0])))
  syevd = [line for line in both.lower(b).as_text().splitlines() if "syevd" in line]
  assert syevd and not any("64x40x40" in line for line in syevd), syevd
  e, e1 = both(b)
  np.testing.assert_allclose(e, np.linalg.eigvalsh(np.asarray(b, np.float64)), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(e1, np.linalg.eigvalsh(np.asarray(b + 1.0, np.float64)), rtol=1e-3,
                             atol=1e-3)
