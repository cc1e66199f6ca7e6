"""Small unrolled systems the estimator tests run on.

Each function returns (system, theta). Between them they cover: an ``init``
that depends on theta, nonlinear state dynamics, random steps (the step key
matters), a loss with a direct theta term, integer state leaves (an optax
step count), and a long memory.
"""

import jax
import jax.numpy as jnp
import optax

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


def optax_regression(horizon=4):
  """SGD with momentum (optax.inject_hyperparams) on a linear regression.

  theta = log learning rate, log weight decay, log init scale. The state holds
  optax's integer step count.
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

  theta = {"log_lr": jnp.float32(-3.0), "log_wd": jnp.float32(-4.0),
           "log_init_scale": jnp.float32(0.0)}
  return metaopt.UnrolledSystem(init, step, horizon), theta


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


def unroll_counting_traces(est, theta, num_calls=3):
  """Calls a jitted ``est.unroll`` with a new theta each time; returns (trace count, state, jitted unroll)."""
  traces = []

  def counted(state, theta, key):
    traces.append(None)
    return est.unroll(state, theta, key)

  unroll = jax.jit(counted)
  state = est.init(jax.random.key(0), theta)
  for i in range(num_calls):
    theta = jax.tree.map(lambda x: x + 0.01, theta)
    state, _, _ = unroll(state, theta, jax.random.key(i))
  return len(traces), state, theta, unroll
