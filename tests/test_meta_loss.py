"""A system's ``meta_loss`` (its loss read off the new state) changes the cost of the forward-mode
estimators, never their estimates."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
import systems
import unrolled

FORWARD = {
    "rtrl": lambda system: metaopt.rtrl(system, num_steps=2),
    "uoro": lambda system: metaopt.uoro(system, num_steps=2),
    "uoro_rank4_gaussian": lambda system: metaopt.uoro(system, num_steps=2, rank=4,
                                                       noise="gaussian"),
    # Needs dL/ds of the incoming state: takes the whole-step path even with meta_loss.
    "uoro_one_step_variance": lambda system: metaopt.uoro(system, num_steps=2,
                                                          rho="one_step_variance"),
}


def _problems():
  digits = unrolled.digits_mlp(width=8, depth=1, horizon=4, batch_size=8, weight_decay=1e-3)
  return {"optax_regression": (systems.optax_regression(with_meta_loss=True)),
          "digits_mlp": (digits.system, digits.theta)}


@pytest.mark.parametrize("name, problem", [(n, "optax_regression") for n in sorted(FORWARD)]
                         + [(n, "digits_mlp") for n in ("rtrl", "uoro", "uoro_rank4_gaussian")])
def test_meta_loss_gives_the_same_estimate_on_the_same_keys(name, problem):
  system, theta = _problems()[problem]
  assert system.meta_loss is not None
  without = system._replace(meta_loss=None)
  key = jax.random.key(11)
  fast, plain = (metaopt.sum_window_grads(FORWARD[name](s), theta, key, num_windows=4)
                 for s in (system, without))  # two horizons
  chex.assert_trees_all_close(fast, plain, rtol=2e-5, atol=1e-7)


def test_rtrl_with_meta_loss_matches_jax_grad():
  system, theta = systems.optax_regression(with_meta_loss=True)
  got = metaopt.sum_window_grads(metaopt.rtrl(system, num_steps=2), theta, jax.random.key(5),
                                 num_windows=4)
  exact = metaopt.exact_grad(system, theta, jax.random.key(5), num_steps=2, num_windows=4)
  chex.assert_trees_all_close(got, exact, rtol=1e-4)


def test_optax_system_declares_its_validation_loss_only():
  validation = unrolled.digits_mlp(width=8, depth=1, horizon=4, batch_size=8)
  train = unrolled.digits_mlp(width=8, depth=1, horizon=4, batch_size=8, meta_loss="train")
  assert train.system.meta_loss is None
  system, theta = validation.system, validation.theta
  state = system.init(jax.random.key(0), theta)
  new_state, loss = system.step(state, theta, jax.random.key(1))
  np.testing.assert_allclose(system.meta_loss(new_state, theta, jax.random.key(1)), loss)


def test_bad_meta_loss_is_refused_in_one_line():
  system, theta = systems.optax_regression()
  with pytest.raises(ValueError, match=r"^system.meta_loss must be a function or None, got int 3$"):
    metaopt.rtrl(system._replace(meta_loss=3), num_steps=2)
  vector = system._replace(meta_loss=lambda state, th, key: state[0])
  with pytest.raises(ValueError, match="system.meta_loss must return a float scalar loss"):
    metaopt.rtrl(vector, num_steps=2).init(jax.random.key(0), theta)


def test_complex_state_keeps_the_exact_gradient():
  """Complex leaves take the whole-step path (a real dot product would drop a conjugate)."""
  def init(key, theta):
    del key
    return jnp.array([1.0 + 0.5j, -0.3 + 0.2j], jnp.complex64) * theta[0]

  def step(z, theta, key):
    del key
    z = (0.8 + 0.1j) * z + theta[1]
    return z, jnp.sum(jnp.abs(z) ** 2)

  system = metaopt.UnrolledSystem(init, step, 4, lambda z, th, key: jnp.sum(jnp.abs(z) ** 2))
  theta = jnp.array([0.7, 0.2])
  got = metaopt.sum_window_grads(metaopt.rtrl(system, num_steps=2), theta, jax.random.key(0),
                                 num_windows=2)
  exact = metaopt.exact_grad(system, theta, jax.random.key(0), num_steps=2, num_windows=2)
  chex.assert_trees_all_close(got, exact, rtol=1e-4)


@pytest.mark.parametrize("size", [0, 7])
def test_rtrl_with_meta_loss_on_edge_sizes(size):
  """No theta coordinates, or no float state and more tangents than run separately."""
  system = metaopt.UnrolledSystem(
      lambda key, th: jnp.int32(0),
      lambda s, th, key: (s + 1, jnp.sum(th ** 2)), 4, lambda s, th, key: jnp.sum(th ** 2))
  theta = jnp.ones((size,))
  got = metaopt.sum_window_grads(metaopt.rtrl(system, num_steps=2), theta, jax.random.key(0),
                                 num_windows=2)
  np.testing.assert_allclose(got, 8.0 * theta)  # 4 steps of d(|theta|^2) = 2 theta
