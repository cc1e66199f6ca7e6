"""Small unrolled systems the estimator tests run on.

Each function returns (system, theta). Between them they cover: an ``init``
that depends on theta, nonlinear state dynamics, random steps (the step key
matters), a loss with a direct theta term, integer state leaves (an optax
step count), and a long memory.

It also holds the helpers several test files share (this is a helper module,
not a test file, so tests import from it and never from each other).
"""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
import pytest

import metaopt


def linear_init_dependent(horizon=6):
  """Linear dynamics, quadratic loss; init scaled by exp(theta["log_scale"])."""
  a = jnp.array([[0.9, 0.2, 0.0], [-0.1, 0.8, 0.1], [0.0, 0.3, 0.7]])
  v0 = jnp.array([1.0, -0.5, 0.25])
  target = jnp.array([0.5, 0.0, -0.5])

  def init(key, theta):
    return jnp.exp(theta["log_scale"]) * v0 + 0.1 * jax.random.normal(key, (3,))

  def step(s, theta, key):
    s = a @ s + theta["drive"] + 0.05 * jax.random.normal(key, (3,))
    loss = 0.5 * jnp.sum((s - target) ** 2) + 0.01 * jnp.sum(theta["drive"] ** 2)
    return s, loss

  theta = {"log_scale": jnp.float32(0.2), "drive": jnp.array([0.1, -0.2, 0.3])}
  return metaopt.UnrolledSystem(init, step, horizon), theta


def tanh_rnn(horizon=8):
  """A tanh RNN driven by random inputs: nonlinear dynamics, theta = gain and bias."""
  w = jax.random.normal(jax.random.key(1), (4, 4)) / 2.0
  u = jax.random.normal(jax.random.key(2), (4, 2))
  readout = jnp.array([1.0, -1.0, 0.5, 0.25])

  def init(key, theta):
    del key, theta
    return jnp.full((4,), 0.1)

  def step(h, theta, key):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (2,))
    h = jnp.tanh(jnp.exp(theta["log_gain"]) * (w @ h) + u @ x + theta["bias"])
    y = jnp.sin(x[0]) + 0.1 * jax.random.normal(ky)
    return h, 0.5 * (readout @ h - y) ** 2

  theta = {"log_gain": jnp.float32(0.1), "bias": jnp.array([0.1, -0.1, 0.2, 0.0])}
  return metaopt.UnrolledSystem(init, step, horizon), theta


def optax_regression(horizon=4, *, with_meta_loss=False):
  """SGD with momentum (optax.inject_hyperparams) on a linear regression.

  theta = log learning rate, log weight decay, log init scale. The state holds
  optax's integer step count. ``with_meta_loss``: the system also declares its
  loss (the validation error of the new weights) as ``meta_loss``.
  """
  w_true = jnp.array([1.0, -2.0, 0.5, 0.0, 1.5])
  x_val = jax.random.normal(jax.random.key(3), (32, 5))
  y_val = x_val @ w_true
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)

  def mse(w, x, y):
    return jnp.mean((x @ w - y) ** 2)

  def init(key, theta):
    w = jnp.exp(theta["log_init_scale"]) * jax.random.normal(key, (5,))
    return w, opt.init(w)

  def step(state, theta, key):
    w, opt_state = state
    x = jax.random.normal(key, (16, 5))
    y = x @ w_true
    g = jax.grad(mse)(w, x, y) + jnp.exp(theta["log_wd"]) * w
    opt_state = optax.tree.set(opt_state, learning_rate=jnp.exp(theta["log_lr"]))
    updates, opt_state = opt.update(g, opt_state, w)
    w = optax.apply_updates(w, updates)
    return (w, opt_state), mse(w, x_val, y_val)

  def meta_loss(state, theta, key):
    del theta, key
    return mse(state[0], x_val, y_val)

  theta = {"log_lr": jnp.float32(-3.0), "log_wd": jnp.float32(-4.0),
           "log_init_scale": jnp.float32(0.0)}
  return metaopt.UnrolledSystem(init, step, horizon,
                                meta_loss if with_meta_loss else None), theta


def long_memory(horizon=40):
  """Influence-balancing-like: slow linear dynamics, so theta's effect lasts long."""
  n = 6
  a = 0.5 * jnp.eye(n) + 0.5 * jnp.eye(n, k=1)
  signs = jnp.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])

  def init(key, theta):
    del key, theta
    return jnp.ones(n)

  def step(s, theta, key):
    del key
    s = a @ s + theta * signs
    return s, 0.5 * (s[0] - 1.0) ** 2

  return metaopt.UnrolledSystem(init, step, horizon), jnp.float32(0.5)


SYSTEMS = {
    "linear_init_dependent": linear_init_dependent,
    "tanh_rnn": tanh_rnn,
    "optax_regression": optax_regression,
}


def flat(tree):
  """All leaves of ``tree`` in one 1-D array (jit- and vmap-able)."""
  return jax.flatten_util.ravel_pytree(tree)[0]


def jit_unroll_without_retracing(est, theta, num_calls=3):
  """Calls a jitted ``est.unroll`` with a new theta each time; fails if it is traced twice.

  ``chex.assert_max_traces`` raises an AssertionError on the second trace (the
  counter is cleared before each test by an autouse fixture in conftest.py).

  Returns:
    (state, theta, unroll): the state and theta of the last call, and the
    jitted, still checked, unroll.
  """
  # A plain function to wrap: chex refuses an already transformed one.
  @chex.assert_max_traces(n=1)
  def unroll(state, theta, key):
    return est.unroll(state, theta, key)

  unroll = jax.jit(unroll)
  state = est.init(jax.random.key(0), theta)
  for i in range(num_calls):
    theta = jax.tree.map(lambda x: x + 0.01, theta)
    state, _, _ = unroll(state, theta, jax.random.key(i))
  return state, theta, unroll


def sample_estimates(est, system, theta, num_samples, num_steps, seed):
  """Independent one-horizon estimates and each one's exact gradient on the same keys.

  Sample ``i`` is ``metaopt.sum_window_grads`` of a fresh estimator state over
  one horizon and ``metaopt.exact_grad`` on the same key (same initial state,
  same minibatches), vmapped over ``num_samples`` keys.

  Returns:
    (estimates, exacts): two ``(num_samples, dim)`` arrays of flattened grads.
  """
  num_windows = system.horizon // num_steps

  def one(key):
    total = metaopt.sum_window_grads(est, theta, key, num_windows=num_windows)
    exact = metaopt.exact_grad(system, theta, key, num_steps=num_steps, num_windows=num_windows)
    return flat(total), flat(exact)

  keys = jax.random.split(jax.random.key(seed), num_samples)
  return jax.jit(jax.vmap(one))(keys)


def slow_unless(values, fast):
  """``values`` as pytest parameters, those not in ``fast`` marked slow.

  For a test matrix whose whole run is slow: ``-m "not slow"`` runs the
  representative slice ``fast``, the plain run all of it. A tuple value is one
  case of a multi-name parametrize.
  """
  return [v if v in fast else pytest.param(*(v if isinstance(v, tuple) else (v,)),
                                          marks=pytest.mark.slow)
          for v in values]
