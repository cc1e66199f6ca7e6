"""Bad options and bad theta fail with a ValueError that names the problem, before compute."""

import jax
import jax.numpy as jnp
import pytest

import metaopt
import systems


@pytest.mark.parametrize("make, option", [
    (lambda s: metaopt.tbptt(s, num_steps=0), "num_steps"),
    (lambda s: metaopt.tbptt(s, num_steps=4), "num_steps"),  # does not divide 6
    (lambda s: metaopt.rtrl(s, num_steps=-1), "num_steps"),
    (lambda s: metaopt.uoro(s, num_steps=2.0), "num_steps"),
    (lambda s: metaopt.pes(s, num_steps=2, num_particles=3, sigma=0.1), "num_particles"),
    (lambda s: metaopt.pes(s, num_steps=2, num_particles=0, sigma=0.1), "num_particles"),
    (lambda s: metaopt.pes(s, num_steps=2, num_particles=-2, sigma=0.1), "num_particles"),
    (lambda s: metaopt.pes(s, num_steps=2, num_particles=4, sigma=0.0), "sigma"),
    (lambda s: metaopt.truncated_es(s, num_steps=2, num_particles=4, sigma=-1.0), "sigma"),
    (lambda s: metaopt.truncated_es(s, num_steps=5, num_particles=4, sigma=1.0), "num_steps"),
])
def test_invalid_options_raise_at_construction(make, option):
  system, _ = systems.linear_init_dependent(horizon=6)
  with pytest.raises(ValueError, match=option):
    make(system)


@pytest.mark.parametrize("make", [
    lambda s: metaopt.full_bptt(s),
    lambda s: metaopt.tbptt(s, num_steps=2),
    lambda s: metaopt.rtrl(s, num_steps=2),
    lambda s: metaopt.uoro(s, num_steps=2),
    lambda s: metaopt.pes(s, num_steps=2, num_particles=2, sigma=0.1),
    lambda s: metaopt.truncated_es(s, num_steps=2, num_particles=2, sigma=0.1),
])
def test_integer_theta_is_refused_at_init(make):
  system, theta = systems.linear_init_dependent(horizon=6)
  est = make(system)
  bad = {"log_scale": jnp.int32(1), "drive": theta["drive"]}
  with pytest.raises(ValueError, match=r"theta.*log_scale.*int32"):
    est.init(jax.random.key(0), bad)
  with pytest.raises(ValueError, match="theta"):
    est.unroll(est.init(jax.random.key(0), theta), bad, jax.random.key(1))


def test_step_that_changes_the_state_shape_is_refused():
  system = metaopt.UnrolledSystem(
      init=lambda key, th: jnp.ones(3),
      step=lambda s, th, key: (jnp.concatenate([s, s]), jnp.sum(s)),
      horizon=2)
  with pytest.raises(ValueError, match="state"):
    metaopt.rtrl(system, num_steps=1).init(jax.random.key(0), jnp.float32(1.0))


def test_non_scalar_loss_is_refused():
  system = metaopt.UnrolledSystem(
      init=lambda key, th: jnp.ones(3), step=lambda s, th, key: (s, s), horizon=2)
  with pytest.raises(ValueError, match="scalar loss"):
    metaopt.tbptt(system, num_steps=1).init(jax.random.key(0), jnp.float32(1.0))


def test_bad_horizon_is_refused():
  system = metaopt.UnrolledSystem(init=lambda k, t: t, step=lambda s, t, k: (s, s), horizon=0)
  with pytest.raises(ValueError, match="horizon"):
    metaopt.rtrl(system, num_steps=1)


def test_key_of_another_prng_implementation_is_refused():
  system, theta = systems.linear_init_dependent(horizon=6)
  with pytest.raises(ValueError, match="key: .*rbg"):
    metaopt.rtrl(system, num_steps=2).init(jax.random.key(0, impl="rbg"), theta)


@pytest.mark.parametrize("make", [
    lambda s: metaopt.rtrl(s, num_steps=2),
    lambda s: metaopt.uoro(s, num_steps=2, rank=2, rho="variance", shaping="diagonal"),
    lambda s: metaopt.forward_gradient(s, num_steps=2),
    lambda s: metaopt.reinforce(s, num_steps=2, sigma=0.01),
    lambda s: metaopt.pes(s, num_steps=2, num_particles=2, sigma=0.01),
])
def test_state_and_loss_dtypes_other_than_theta_are_kept(make):
  """bf16 state and float32 loss with float32 theta: no dtype promotion breaks the scan carry."""
  def init(key, th):
    return (jnp.ones(3) * th["a"]).astype(jnp.bfloat16)

  def step(s, th, key):
    s = (0.9 * s.astype(jnp.float32) + th["a"]).astype(jnp.bfloat16)
    return s, jnp.sum(s.astype(jnp.float32) ** 2)

  system = metaopt.UnrolledSystem(init, step, horizon=4)
  theta = {"a": jnp.float32(0.1)}
  est = make(system)
  state = est.init(jax.random.key(0), theta)
  for i in range(3):
    state, grad, _ = jax.jit(est.unroll)(state, theta, jax.random.key(i))
    assert grad["a"].dtype == jnp.float32 and bool(jnp.isfinite(grad["a"]))
