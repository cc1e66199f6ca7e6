"""Cooijmans & Martens' (2019) noise shaping Q_t = alpha_t Q_0, for UORO and REINFORCE.

Both estimators inject noise Q_t u_t into the state s_t (u_t of identity
covariance) and carry u_t^T Q_t^{-1} ds_t/dtheta; any Q_t that does not
depend on the noise keeps them unbiased. C&M bound the variance of the summed
estimate over a horizon by

  V(P, x) = sum_{r,q} (x_r / x_q) w_q beta_rq^T P beta_rq tr(P^{-1}) = tr(B(x) P) tr(P^{-1}),

with P = Q_0 Q_0^T, x_r = alpha_r^2, beta_rq the total gradient of the
losses after max(r, q) with respect to the state s_r (``beta_rq = lambda_r``
for q <= r, ``(ds_q/ds_r)^T lambda_q`` for q > r, lambda the BPTT adjoint),
w_q = |ds_q/dtheta|_F^2 / n (they write |a_q|^2, exact for projection at
preactivations; for a state, it stands in for ds_q/dtheta (ds_q/dtheta)^T by
its mean eigenvalue) and B(x) = sum_{r,q} (x_r / x_q) w_q beta_rq beta_rq^T.
For a fixed x, P = B^{-1/2} (Q_0 = B^{-1/4}) minimises V, which drops from
tr(B) n (Q_0 = I) to tr(B^{1/2})^2. For a fixed P, V is convex in log x.

:func:`horizon_oracle` computes these by backprop over a whole horizon on
the estimator's own keys: an offline study tool (it reads the future).
:class:`OnlineDiagonal` estimates diag(B) from past horizons only.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metaopt._src.core import base

# The oracle forms n x n matrices (n = float entries of the state) and T^2 n-vectors.
MAX_ORACLE_STATE = 1024
ALPHA_MODES = ("ones", "fixed", "optimal")


class Oracle(NamedTuple):
  """What :func:`horizon_oracle` returns for one horizon.

  Attributes:
    q0: ``(n, n)`` Q_0 = B^{-1/4}, scaled to tr(Q_0^2) = n (identity when not shaped).
    q0_inv: ``(n, n)`` its inverse.
    alpha: ``(T + 1,)`` alpha_r for the noise added to state s_r (r = 0 is the
      initial state; entry T, never read within the horizon, repeats T - 1).
    bound_shaped: C&M's variance term tr(B^{1/2})^2 with Q_0 = B^{-1/4}.
    bound_identity: the same term with Q_0 = I, tr(B) n.
  """
  q0: jax.Array
  q0_inv: jax.Array
  alpha: jax.Array
  bound_shaped: jax.Array
  bound_identity: jax.Array


def check_oracle_state(num_floats: int, what: str) -> None:
  if num_floats > MAX_ORACLE_STATE:
    raise ValueError(
        f"{what} forms n x n matrices over the state's float entries: this state has "
        f"n={num_floats} (at most {MAX_ORACLE_STATE}); use it on small systems, or "
        "shaping='online' / 'diagonal'")


def horizon_terms(system: base.UnrolledSystem, theta: base.PyTree, init_key: jax.Array,
                  step_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(beta, w)`` of one horizon: beta ``(T, T, n)`` indexed [r, q], w ``(T,)``, on these keys."""
  theta_vec, unravel = base.ravel(theta)
  f_init, _, split = base.flat_init(system, theta, init_key)
  floats0, others0 = f_init(theta_vec)
  s0, unflatten = ravel_pytree(floats0)
  check_oracle_state(s0.size, "the oracle shaping")
  n = s0.size

  def init_vec(tv):
    return ravel_pytree(f_init(tv)[0])[0]

  def weight(jac):  # |ds/dtheta|_F^2 / n
    return jnp.sum(jnp.square(jac)) / n

  w0 = weight(jax.jacfwd(init_vec)(theta_vec))

  def body(carry, key):
    s, others = carry
    f = base.flat_step(system, split, unravel, others, key)

    def g(s_vec, tv):
      (new_floats, loss), new_others = f(unflatten(s_vec), tv)
      return ravel_pytree(new_floats)[0], (loss, new_others)

    new_s, (loss, new_others) = g(s, theta_vec)
    jac_s = jax.jacfwd(lambda v: g(v, theta_vec)[0])(s)
    jac_theta = jax.jacfwd(lambda tv: g(s, tv)[0])(theta_vec)
    c = jax.grad(lambda v: g(v, theta_vec)[1][0].astype(v.dtype))(s)
    return (new_s, new_others), (jac_s, c, weight(jac_theta))

  _, (jac, c, w_steps) = jax.lax.scan(body, (s0, others0), step_keys)
  # lambda_r = c_r + J_r^T lambda_{r+1}: the total gradient of the losses read from s_r on.
  def adjoint(lam, jc):
    j, ci = jc
    lam = ci + j.T @ lam
    return lam, lam

  _, lam = jax.lax.scan(adjoint, jnp.zeros_like(s0), (jac, c), reverse=True)
  num = lam.shape[0]
  index = jnp.arange(num)

  def column(q):  # beta[:, q]: lambda_r for r >= q, then J_r^T beta[r + 1, q] going back
    def back(v, rj):
      r, j, lam_r = rj
      out = jnp.where(r >= q, lam_r, j.T @ v)
      return out, out
    _, col = jax.lax.scan(back, lam[-1], (index, jac, lam), reverse=True)
    return col

  beta = jax.vmap(column, out_axes=1)(index)  # (r, q, n)
  w = jnp.concatenate([w0[None], w_steps[:-1]])  # noise at s_q, q = 0..T-1
  return beta, w


def _solve_alpha(k: jax.Array, iterations: int = 300) -> jax.Array:
  """x > 0 minimising sum_{r,q} K_rq x_r / x_q (convex in log x), geometric mean 1."""
  log_k = jnp.log(k + 1e-30 * jnp.max(k) + 1e-38)

  def objective(y):
    return jax.nn.logsumexp(log_k + y[:, None] - y[None, :])

  def update(_, y):
    # Stationary point: x_r^2 = sum_q K_qr x_q / sum_q K_rq / x_q; damped Jacobi steps.
    target = 0.5 * (jax.nn.logsumexp(log_k.T + y[None, :], axis=1)
                    - jax.nn.logsumexp(log_k - y[None, :], axis=1))
    new = 0.5 * (y + target)
    new = new - jnp.mean(new)
    return jnp.where(objective(new) <= objective(y), new, y)

  y = jax.lax.fori_loop(0, iterations, update, jnp.zeros(k.shape[0], k.dtype))
  return jnp.exp(y)


@jax.custom_batching.custom_vmap
def _eigh(b: jax.Array):
  e, v = jnp.linalg.eigh(b)
  return e, v


@_eigh.def_vmap
def _eigh_vmap(axis_size, in_batched, b):
  # One matrix at a time: jaxlib's CPU LAPACK kernel splits a batch over XLA's intra-op pool and
  # blocks a pool thread until the pieces finish, so two batched eighs running at once (e.g. the
  # estimate and its metrics, vmapped over samples) can hold every thread of a 2-core machine and
  # wait for ever. A batch of one runs inline.
  del axis_size, in_batched
  return jax.lax.map(_eigh, b), (True, True)


def _inverse_fourth_root(b: jax.Array):
  """Q_0 = B^{-1/4} (scaled to tr(Q_0^2) = n), its inverse, tr(B^{1/2})^2 and tr(B) n."""
  n = b.shape[0]
  scale = jnp.trace(b) / n + 1e-30
  e, v = _eigh((b + b.T) / (2 * scale))
  # B has rank <= T^2; its null space gets the floor (any Q there is unbiased too).
  e = jnp.maximum(e, 1e-6 * jnp.max(e))
  q = e ** -0.25
  norm = jnp.sqrt(jnp.mean(q ** 2))
  q0 = (v * (q / norm)) @ v.T
  q0_inv = (v * (norm / q)) @ v.T
  return q0, q0_inv, jnp.sum(jnp.sqrt(e)) ** 2 * scale, jnp.sum(e) * n * scale


def horizon_oracle(system: base.UnrolledSystem, theta: base.PyTree, init_key: jax.Array,
                   step_keys: jax.Array, *, shape: bool, alpha: str,
                   fixed_rho: float = 1.0, rounds: int = 3) -> Oracle:
  """C&M's Q_t = alpha_t Q_0 for one horizon, by backprop over it on its own keys.

  Args:
    system, theta, init_key, step_keys: the horizon (``step_keys`` holds all its steps).
    shape: Q_0 = B^{-1/4}; otherwise Q_0 = I.
    alpha: ``"optimal"`` (the alpha_t that minimise V for the Q_0, alternated
      with Q_0 for ``rounds`` rounds when ``shape``), ``"ones"`` (B built with
      alpha = 1) or ``"fixed"`` (the schedule UORO's fixed rhos imply,
      alpha_r proportional to fixed_rho^-r).
  """
  beta, w = horizon_terms(system, theta, init_key, step_keys)
  num, n = beta.shape[1], beta.shape[2]
  if alpha == "fixed":
    x = fixed_rho ** (-2.0 * jnp.arange(num, dtype=beta.dtype))
  else:
    x = jnp.ones(num, beta.dtype)
  eye = jnp.eye(n, dtype=beta.dtype)
  p = eye

  def b_of(x):
    return jnp.einsum("r,q,rqi,rqj->ij", x, w / x, beta, beta)

  for _ in range(rounds if (shape and alpha == "optimal") else 1):
    if alpha == "optimal":
      x = _solve_alpha(w[None, :] * jnp.einsum("rqi,ij,rqj->rq", beta, p, beta))
    if shape:
      q0, q0_inv, bound_shaped, bound_identity = _inverse_fourth_root(b_of(x))
      p = q0 @ q0
  if not shape:
    q0 = q0_inv = eye
    bound_shaped = bound_identity = jnp.trace(b_of(x)) * n
  a = jnp.sqrt(x)
  return Oracle(q0, q0_inv, jnp.concatenate([a, a[-1:]]), bound_shaped, bound_identity)


class OnlineDiagonal(NamedTuple):
  """Running statistics of :func:`online_update`: diag(B) from past horizons.

  With the state Jacobians ds_q/ds_r taken as I (a heuristic: the only part
  of B an online estimator can see is the loss gradients), the adjoint is
  lambda_m = sum_{t > m} c_t (c_t = dL_t/ds_{t-1}) and
  diag(B) = sum_m (2m + 1) lambda_m^2 (2m + 1 pairs (r, q) have max(r, q) = m).
  In hindsight, with S_m = sum_{t <= m} c_t, this is
  T^2 S_T^2 - 2 S_T sum_m (2m + 1) S_m + sum_m (2m + 1) S_m^2: three running
  sums, per state entry, finished when the next horizon starts.

  Attributes:
    b: per float leaf, the running estimate of diag(B) (mean over past horizons,
      decayed), zeros before the first horizon ends.
    seen: 1.0 once a horizon has ended.
    q: per float leaf, the current horizon's diagonal Q_0 (ones in the first).
    s, s_weighted, s2_weighted: S_m, sum (2m + 1) S_m, sum (2m + 1) S_m^2 so far.
    m: steps taken in the current horizon.
  """
  b: list
  seen: jax.Array
  q: list
  s: list
  s_weighted: list
  s2_weighted: list
  m: jax.Array


def online_start(previous: OnlineDiagonal | None, floats: list, decay: float) -> OnlineDiagonal:
  """Finishes the previous horizon's statistics and sets this horizon's Q_0 = diag(B)^{-1/4}."""
  zeros = [jnp.zeros_like(x) for x in floats]
  if previous is None:  # the first horizon: Q_0 = I
    return OnlineDiagonal(zeros, jnp.zeros((), floats[0].dtype), [jnp.ones_like(x) for x in floats],
                          zeros, zeros, zeros, jnp.zeros((), floats[0].dtype))
  t = previous.m
  finished = t > 0
  b_h = [jnp.maximum(t**2 * s**2 - 2 * s * sw + s2w, 0.0)
         for s, sw, s2w in zip(previous.s, previous.s_weighted, previous.s2_weighted)]
  b = [jnp.where(finished, jnp.where(previous.seen > 0, decay * old + (1 - decay) * new, new), old)
       for old, new in zip(previous.b, b_h)]
  seen = jnp.maximum(previous.seen, finished.astype(previous.seen.dtype))
  size = sum(x.size for x in b)
  mean = sum(jnp.sum(x) for x in b) / size
  # The mean added to every entry bounds the shaping where an entry's adjoint is ~0.
  q = [(x + mean + 1e-30) ** -0.25 for x in b]
  norm = jnp.sqrt(sum(jnp.sum(x**2) for x in q) / size)
  q = [jnp.where(seen > 0, x / norm, jnp.ones_like(x)) for x in q]
  return OnlineDiagonal(b, seen, q, zeros, zeros, zeros, jnp.zeros_like(previous.m))


def online_update(stats: OnlineDiagonal, c: list) -> OnlineDiagonal:
  """Adds one step's loss gradient c_t = dL_t/ds_{t-1} to the current horizon's sums."""
  weight = 2 * stats.m + 1
  return stats._replace(
      s=[s + ci for s, ci in zip(stats.s, c)],
      s_weighted=[sw + weight * s for sw, s in zip(stats.s_weighted, stats.s)],
      s2_weighted=[s2w + weight * s**2 for s2w, s in zip(stats.s2_weighted, stats.s)],
      m=stats.m + 1)
