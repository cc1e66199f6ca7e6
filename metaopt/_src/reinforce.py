"""REINFORCE on Gaussian noise added to the inner state: UORO's stochastic cousin."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base


class ReinforceState(NamedTuple):
  """State of :func:`reinforce`.

  Attributes:
    inner: the noisy inner state at the start of the next window.
    baseline_inner: the noise-free twin's state (its losses are the baseline).
    score: the accumulated score d log p(noisy trajectory so far) / dtheta, (H,).
    count: inner steps taken in the current horizon.
    init_key: key data of the key that makes the current horizon's initial state.
  """
  inner: base.PyTree
  baseline_inner: base.PyTree
  score: jax.Array
  count: jax.Array
  init_key: jax.Array


def reinforce(system: base.UnrolledSystem, *, num_steps: int, sigma: float,
              baseline: bool = True) -> base.Estimator:
  """Score-function (REINFORCE) hypergradient of the inner loop with state noise.

  The inner state is perturbed after ``init`` and after every step:
  s_bar_t = F(s_bar_{t-1}, theta) + sigma u_t, u_t ~ N(0, I) on its float
  leaves. The score w_t = sum_{s<=t} u_s^T (dF_s/dtheta) / sigma is carried
  online by one VJP per step, and the estimate is

    g = sum_t (L_t - b_t) w_{t-1} + dL_t/dtheta (direct),

  L_t being the loss read from s_bar_{t-1} and b_t the same step's loss on a
  noise-free twin trajectory (``baseline=True``; 0 otherwise). It is unbiased
  for the gradient of the expected loss of the noisy loop, which tends to the
  noise-free gradient as sigma -> 0. Cooijmans & Martens (2019) show that as
  sigma -> 0 with this baseline it becomes UORO with fixed rhos and Gaussian
  noise (``metaopt.uoro(..., rho="fixed", noise="gaussian")``): same mean, and
  a variance that approaches UORO's. Without the baseline the variance grows
  like 1/sigma^2.

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    sigma: standard deviation of the state noise.
    baseline: subtract the noise-free twin's losses (costs one more forward pass).

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.reinforce(system, num_steps=2, sigma=1e-3)
    >>> state = est.init(jax.random.key(0), jnp.float32(0.1))
    >>> state, grad, metrics = est.unroll(state, jnp.float32(0.1), jax.random.key(1))
  """
  horizon = base.check_horizon(system)
  base.check_num_steps(num_steps, horizon)
  sigma = base.check_sigma(sigma)

  def init(key, theta):
    base.check_init_args(system, key, theta)
    inner = system.init(key, theta)
    theta_vec, _ = base.ravel(theta)
    return ReinforceState(inner, inner, jnp.zeros_like(theta_vec), base.initial_count(),
                          base.key_data(key))

  def perturb(floats, key):
    keys = jax.random.split(key, len(floats))
    u = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, floats)]
    return [x + sigma * n for x, n in zip(floats, u)], u

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)
    noise_keys = jax.random.split(keys.noise, num_steps + 1)
    theta_vec, unravel = base.ravel(theta)
    split = base.StateSplit.of(state.inner)

    def start():
      init_flat = base.flat_init(system, split, unravel, state.init_key)
      floats, init_vjp, others = jax.vjp(init_flat, theta_vec, has_aux=True)
      noisy, u = perturb(floats, noise_keys[-1])
      (score,) = init_vjp([n / sigma for n in u])
      return split.merge(noisy, others), split.merge(floats, others), score

    inner, twin, score = jax.lax.cond(
        state.count == 0, start, lambda: (state.inner, state.baseline_inner, state.score))

    def body(carry, keys_t):
      inner, twin, score, grad = carry
      step_key, noise_key = keys_t
      floats, others = split.split(inner)
      f = base.flat_step(system, split, unravel, others, step_key)
      (new_floats, loss), lin, new_others = jax.linearize(
          lambda tv: f(floats, tv), theta_vec, has_aux=True)
      noisy, u = perturb(new_floats, noise_key)
      # d log p(s_bar_t | s_bar_{t-1}) / dtheta and the direct dL_t/dtheta from one
      # linearisation; each transpose sees only its own output (a zero cotangent on the
      # other would still be pushed back through that output's whole path).
      (direct,) = jax.linear_transpose(lambda d: lin(d)[1], theta_vec)(jnp.ones_like(loss))
      (score_step,) = jax.linear_transpose(lambda d: lin(d)[0], theta_vec)(
          [n / sigma for n in u])
      if baseline:
        twin, twin_loss = system.step(twin, unravel(theta_vec), step_key)
      else:
        twin_loss = jnp.zeros_like(loss)
      grad = grad + ((loss - twin_loss) * score + direct).astype(grad.dtype)
      return (split.merge(noisy, new_others), twin, score + score_step, grad), loss

    (inner, twin, score, grad), losses = jax.lax.scan(
        body, (inner, twin, score, jnp.zeros_like(theta_vec)), (keys.steps, noise_keys[:-1]))
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    return (ReinforceState(inner, twin, score, count, init_key), unravel(grad),
            {"loss": jnp.sum(losses), "score_norm": jnp.linalg.norm(score)})

  return base.Estimator(init, unroll)
