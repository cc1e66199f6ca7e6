"""REINFORCE on Gaussian noise added to the inner state: UORO's stochastic cousin."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metaopt._src.core import base
from metaopt._src.estimators import shaping as shaping_lib
from metaopt._src.core import window

SHAPINGS = ("none", "oracle")


class ReinforceState(NamedTuple):
  """State of :func:`reinforce`.

  Attributes:
    inner: the noisy inner state at the start of the next window.
    baseline_inner: the noise-free twin's state (its losses are the baseline).
    score: the accumulated score d log p(noisy trajectory so far) / dtheta, (H,).
    oracle: the horizon's noise shape with ``shaping="oracle"`` (a
      :class:`~metaopt.shaping.Oracle`), else ``()``.
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  baseline_inner: base.PyTree
  score: jax.Array
  oracle: Any
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def reinforce(system: base.UnrolledSystem, *, num_steps: int, sigma: float,
              baseline: bool = True, shaping: str = "none") -> base.Estimator:
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
  like 1/sigma^2. With ``shaping="oracle"`` the noise is sigma Q_t u_t with
  C&M's Q_t = alpha_t Q_0 (``metaopt.uoro(..., shaping="oracle")``'s, on the
  same keys) and the score carries u^T Q_t^-1 dF/dtheta / sigma: as sigma -> 0
  it tends to that UORO with Gaussian noise.

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    sigma: standard deviation of the state noise.
    baseline: subtract the noise-free twin's losses (costs one more forward pass).
    shaping: ``"none"`` (Q = I) or ``"oracle"`` (Cooijmans & Martens' Q_t =
      alpha_t B^{-1/4}, computed by backprop over the horizon on the same keys
      from the noise-free trajectory; offline; ``num_steps`` must equal the
      horizon).

  Examples:
    The baseline removes the 1/sigma^2 growth of the variance:

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.zeros(2),
    ...     step=lambda s, th, key: (0.9 * s + th, jnp.sum((s - 1.0) ** 2)), horizon=4)
    >>> def spread(baseline):
    ...   est = metaopt.reinforce(system, num_steps=4, sigma=0.01, baseline=baseline)
    ...   draw = lambda k: metaopt.sum_window_grads(est, 0.5, k, num_windows=1)
    ...   return jnp.std(jax.vmap(draw)(jax.random.split(jax.random.key(0), 100)))
    >>> bool(spread(True) < spread(False) / 10)
    True
  """
  horizon = base.check_system(system)
  num_steps = window.check_num_steps(num_steps, horizon)
  sigma = base.check_sigma(sigma)
  baseline = base.check_flag(baseline, "baseline")
  if shaping not in SHAPINGS:
    raise ValueError(f"shaping must be one of {SHAPINGS}, got {shaping!r}")
  if shaping == "oracle" and num_steps != horizon:
    raise ValueError("shaping='oracle' reads the whole horizon: num_steps must equal the "
                     f"system's horizon={horizon}, got {num_steps}")

  def perturb(floats, key, oracle, alpha):
    """(noisy state, Q^-1 u): the state plus sigma alpha Q_0 u, u ~ N(0, I)."""
    keys = jax.random.split(key, len(floats))
    u = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, floats)]
    if shaping == "none":
      return [x + sigma * n for x, n in zip(floats, u)], u
    vec, unflatten = ravel_pytree(u)
    shaped = unflatten((alpha * (oracle.q0 @ vec)).astype(vec.dtype))
    inverse = unflatten((oracle.q0_inv @ vec / alpha).astype(vec.dtype))
    return [x + sigma * n for x, n in zip(floats, shaped)], inverse

  def start(theta, keys, init_key):
    f, theta_vec, split = base.flat_init(system, theta, init_key)
    floats, init_vjp, others = jax.vjp(f, theta_vec, has_aux=True)
    oracle = (shaping_lib.horizon_oracle(system, theta, init_key, keys.steps, shape=True,
                                         alpha="optimal")
              if shaping == "oracle" else ())
    alpha = oracle.alpha[0] if shaping == "oracle" else 1.0
    noisy, u = perturb(floats, jax.random.split(keys.noise, num_steps + 1)[-1], oracle, alpha)
    (score,) = init_vjp([n / sigma for n in u])
    return split.merge(noisy, others), split.merge(floats, others), score, oracle

  def score_function(begin, theta, keys):
    noise_keys = jax.random.split(keys.noise, num_steps + 1)
    theta_vec, unravel = base.ravel(theta)
    inner, twin, score, oracle = begin(theta)
    split = base.StateSplit.of(inner)
    alphas = oracle.alpha[1:] if shaping == "oracle" else jnp.ones((num_steps,))

    def body(carry, keys_t):
      inner, twin, score, grad = carry
      step_key, noise_key, alpha = keys_t
      floats, others = split.split(inner)
      f = base.flat_step(system, split, unravel, others, step_key)
      (new_floats, loss), lin, new_others = jax.linearize(
          lambda tv: f(floats, tv), theta_vec, has_aux=True)
      noisy, u = perturb(new_floats, noise_key, oracle, alpha)
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
        body, (inner, twin, score, jnp.zeros_like(theta_vec)),
        (keys.steps, noise_keys[:-1], alphas.astype(theta_vec.dtype)))
    return ((inner, twin, score, oracle), unravel(grad),
            {"loss": jnp.sum(losses), "score_norm": jnp.linalg.norm(score)})

  return window.windowed(system, ReinforceState, num_steps=num_steps, start=start,
                         window=score_function)
