"""What the variance reductions and the wider estimator family do (Cooijmans & Martens 2019;
Li et al. 2023; Silver et al. 2022): measured, with the exact gradient as reference."""

import jax
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
  est = metaopt.get_estimator("uoro[rho=variance;rank=2]", system, num_steps=2)
  state = est.init(jax.random.key(0), systems.tanh_rnn()[1])
  assert state.theta_tilde.shape[0] == 2
  with pytest.raises(ValueError, match="rnak"):
    metaopt.get_estimator("uoro[rnak=2]", system, num_steps=2)
  with pytest.raises(ValueError, match="unknown estimator"):
    metaopt.get_estimator("oruo", system, num_steps=2)
