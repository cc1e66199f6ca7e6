"""Unbiased Online Recurrent Optimization (Tallec & Ollivier, 2018) for hyperparameters."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base


class UOROState(NamedTuple):
  """State of :func:`uoro`.

  The influence ds/dtheta is approximated, unbiasedly, by the outer product
  ``s_tilde theta_tilde^T``.

  Attributes:
    inner: the inner state at the start of the next window.
    s_tilde: state-sized factor (one array per float leaf of ``inner``).
    theta_tilde: theta-sized factor, flat, shape (H,).
    count: inner steps taken in the current horizon.
    init_key: key data (uint32) of the key that makes the current horizon's initial state.
  """
  inner: base.PyTree
  s_tilde: list
  theta_tilde: jax.Array
  count: jax.Array
  init_key: jax.Array


def _rademacher(key, like):
  keys = jax.random.split(key, len(like))
  return [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, like)]


def _norm(tree):
  return jnp.sqrt(base.tree_sq_norm(tree))


def uoro(system: base.UnrolledSystem, *, num_steps: int, epsilon: float = 1e-7) -> base.Estimator:
  """UORO: an unbiased rank-one forward-mode estimate of the influence.

  Keeps ``s_tilde`` (state-sized) and ``theta_tilde`` (theta-sized) with
  E[s_tilde theta_tilde^T] = ds/dtheta. Per step, with nu random signs:

    g_t      += (dL_t/ds · s_tilde) theta_tilde + dL_t/dtheta (direct)
    s_tilde   = rho0 (ds'/ds) s_tilde + rho1 nu
    theta_tilde = theta_tilde / rho0 + nu^T (ds'/dtheta) / rho1

  with rho0 = sqrt((|theta_tilde| + eps) / (|(ds'/ds) s_tilde| + eps)) and
  rho1 = sqrt((|nu^T ds'/dtheta| + eps) / (|nu| + eps)), the norm balancing
  that minimises the variance of the rank-one approximation. Both rhos are
  even in nu, so the estimate stays unbiased. A horizon starts with the
  rank-one estimate ``s_tilde = rho nu``, ``theta_tilde = nu^T (d init/dtheta) / rho``.
  The JVP and both VJPs of a step come from one linearisation, so the step's
  forward pass runs once.

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    epsilon: stabiliser of the rho ratios.

  Returns:
    An :class:`~metaopt.Estimator`. ``metrics`` holds ``loss`` (window sum),
    ``s_tilde_norm`` and ``theta_tilde_norm`` (at the window's end) and
    ``rho0``, ``rho1`` (means over the window's steps).

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2) * th,
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
    ...     horizon=4)
    >>> est = metaopt.uoro(system, num_steps=2)
    >>> state = est.init(jax.random.key(0), jnp.float32(0.1))
    >>> state, grad, metrics = est.unroll(state, jnp.float32(0.1), jax.random.key(1))
  """
  horizon = base.check_horizon(system)
  base.check_num_steps(num_steps, horizon)
  if not epsilon > 0:
    raise ValueError(f"epsilon must be positive, got {epsilon!r}")

  def init(key, theta):
    base.check_init_args(system, key, theta)
    inner = system.init(key, theta)
    theta_vec, _ = base.ravel(theta)
    floats, _ = base.StateSplit.of(inner).split(inner)
    return UOROState(inner, [jnp.zeros_like(x) for x in floats], jnp.zeros_like(theta_vec),
                     base.initial_count(),
                     base.key_data(key))

  def unroll(state, theta, key):
    base.check_theta(theta)
    keys = base.split_window_key(key, num_steps)
    noise_keys = jax.random.split(keys.noise, num_steps + 1)
    theta_vec, unravel = base.ravel(theta)
    split = base.StateSplit.of(state.inner)

    def fresh():
      def init_flat(tv):
        return split.split(system.init(base.as_key(state.init_key), unravel(tv)))
      floats, init_vjp, others = jax.vjp(init_flat, theta_vec, has_aux=True)
      nu = _rademacher(noise_keys[-1], floats)
      (theta_tilde,) = init_vjp(nu)
      rho = jnp.sqrt((_norm(theta_tilde) + epsilon) / (_norm(nu) + epsilon))
      return (split.merge(floats, others), [rho * n for n in nu], theta_tilde / rho)

    inner, s_tilde, theta_tilde = jax.lax.cond(
        state.count == 0, fresh, lambda: (state.inner, state.s_tilde, state.theta_tilde))

    def body(carry, keys_t):
      inner, s_tilde, theta_tilde, grad = carry
      step_key, noise_key = keys_t
      floats, others = split.split(inner)
      f = base.flat_step(system, split, unravel, others, step_key)
      (new_floats, loss), lin, new_others = jax.linearize(f, floats, theta_vec, has_aux=True)
      # Forward: (ds'/ds) s_tilde and dL/ds · s_tilde in one JVP.
      a1, dloss_s = lin(s_tilde, jnp.zeros_like(theta_vec))
      # Backward, from the same linearisation: nu^T ds'/dtheta and the direct dL/dtheta.
      nu = _rademacher(noise_key, new_floats)
      lin_theta = jax.linear_transpose(lambda dth: lin([jnp.zeros_like(x) for x in floats], dth),
                                       theta_vec)
      (b2,) = lin_theta((nu, jnp.zeros_like(loss)))
      (dloss_theta,) = lin_theta(([jnp.zeros_like(n) for n in nu], jnp.ones_like(loss)))
      grad = grad + dloss_s * theta_tilde + dloss_theta
      rho0 = jnp.sqrt((_norm(theta_tilde) + epsilon) / (_norm(a1) + epsilon))
      rho1 = jnp.sqrt((_norm(b2) + epsilon) / (_norm(nu) + epsilon))
      s_tilde = [rho0 * a + rho1 * n for a, n in zip(a1, nu)]
      theta_tilde = theta_tilde / rho0 + b2 / rho1
      return ((split.merge(new_floats, new_others), s_tilde, theta_tilde, grad),
              (loss, rho0, rho1))

    (inner, s_tilde, theta_tilde, grad), (losses, rho0, rho1) = jax.lax.scan(
        body, (inner, s_tilde, theta_tilde, jnp.zeros_like(theta_vec)),
        (keys.steps, noise_keys[:-1]))
    count, init_key = base.advance_count(state.count, state.init_key, keys.next_init,
                                         num_steps, horizon)
    metrics = {"loss": jnp.sum(losses), "s_tilde_norm": _norm(s_tilde),
               "theta_tilde_norm": _norm(theta_tilde), "rho0": jnp.mean(rho0),
               "rho1": jnp.mean(rho1)}
    return (UOROState(inner, s_tilde, theta_tilde, count, init_key), unravel(grad), metrics)

  return base.Estimator(init, unroll)
