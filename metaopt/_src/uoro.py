"""Unbiased Online Recurrent Optimization (Tallec & Ollivier, 2018) for hyperparameters,
with the variance reductions of Cooijmans & Martens (2019)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src import base
from metaopt._src import window

RHO_RULES = ("norm", "fixed", "variance")
NOISES = ("rademacher", "gaussian")
SHAPINGS = ("none", "diagonal")


class UOROState(NamedTuple):
  """State of :func:`uoro`.

  The influence ds/dtheta is approximated, unbiasedly, by the mean over ``rank``
  independent outer products ``s_tilde[k] theta_tilde[k]^T``.

  Attributes:
    inner: the inner state at the start of the next window.
    s_tilde: state-sized factors (one array per float leaf of ``inner``, each
      with a leading axis of size ``rank``).
    theta_tilde: theta-sized factors, (rank, H).
    loss_grad_energy: per float leaf of ``inner``, a running mean of the
      squared loss gradient dL/ds (what ``shaping="diagonal"`` shapes the noise with).
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  s_tilde: list
  theta_tilde: jax.Array
  loss_grad_energy: jax.Array
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def _noise(key, like, rank, kind):
  keys = jax.random.split(key, len(like))
  draw = _rademacher if kind == "rademacher" else jax.random.normal
  return [draw(k, (rank,) + x.shape, x.dtype) for k, x in zip(keys, like)]


def _rademacher(key, shape, dtype):
  """Random signs from packed random bits: one 32-bit draw per 32 signs.

  jax.random.rademacher draws a full random word per sign; on CPU, for a
  state of tens of thousands of floats, that costs a sizeable fraction of an
  inner step.
  """
  size = math.prod(shape)
  words = jax.random.bits(key, ((size + 31) // 32,), jnp.uint32)
  bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return (2 * bits.reshape(-1)[:size].astype(dtype) - 1).reshape(shape)


def _norm(tree):
  return jnp.sqrt(base.tree_sq_norm(tree))


def uoro(system: base.UnrolledSystem, *, num_steps: int, rho: str = "norm",
         noise: str = "rademacher", shaping: str = "none", rank: int = 1,
         fixed_rho: float = 1.0, epsilon: float = 1e-7, energy_decay: float = 0.9
         ) -> base.Estimator:
  """UORO: an unbiased low-rank forward-mode estimate of the influence ds/dtheta.

  Keeps ``s_tilde`` (state-sized) and ``theta_tilde`` (theta-sized) with
  E[s_tilde theta_tilde^T] = ds/dtheta. Per step, with u random (signs or
  Gaussian) and nu = Q u, Q a diagonal noise shape (identity by default):

    g_t        += (dL_t/ds · s_tilde) theta_tilde + dL_t/dtheta (direct)
    s_tilde     = rho0 (ds'/ds) s_tilde + rho1 nu
    theta_tilde = theta_tilde / rho0 + u^T Q^-1 (ds'/dtheta) / rho1

  Since E[Q u u^T Q^-1] = I and rho0, rho1, Q do not depend on the step's
  noise (or depend on it only through even functions such as norms), every
  option stays unbiased. Only the ratio r = rho0 / rho1 changes the estimate.
  A horizon starts with the rank-one estimate ``s_tilde = rho nu``,
  ``theta_tilde = u^T Q^-1 (d init/dtheta) / rho``. The JVP and the backward
  passes of a step come from one linearisation (one forward pass).

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon``.
    rho: how rho0, rho1 are chosen.
      ``"norm"`` (Tallec & Ollivier): rho0 = sqrt(|theta_tilde| / |(ds'/ds) s_tilde|),
      rho1 = sqrt(|b| / |nu|), b = u^T Q^-1 ds'/dtheta; balances the norms of
      both factors (minimises the Frobenius error of the rank-one Jacobian).
      ``"fixed"``: rho0 = rho1 = ``fixed_rho`` (the REINFORCE limit, for comparison).
      ``"variance"`` (Cooijmans & Martens' objective, greedy): choose r to
      minimise the variance of the next projected gradient estimate
      (c · s_tilde') theta_tilde' instead of the Jacobian's error, with c the
      latest loss gradient dL/ds as the online proxy for the next one:
      r^2 = |Q c| |theta_tilde| / (|c · (ds'/ds) s_tilde| |b|), clipped to
      [1/10, 10] times the ``"norm"`` ratio; rho1 as in ``"norm"``.
    noise: ``"rademacher"`` signs (the original) or ``"gaussian"``.
    shaping: ``"none"`` or ``"diagonal"``: Q = diag(q_l) per float leaf l of
      the state, q_l proportional to (running mean of (dL/ds_l)^2)^(-1/4), the
      diagonal, per-leaf version of C&M's optimal Q0 = B^(-1/4); Q uses only past
      loss gradients, never the current noise.
    rank: number of independent rank-one pairs averaged (rank-k UORO); they
      share the step's forward pass, and cost one JVP and one VJP each.
    fixed_rho: the value of both rhos for ``rho="fixed"``.
    epsilon: stabiliser of the rho ratios.
    energy_decay: decay of the running loss-gradient energy (``shaping``).

  Returns:
    An :class:`~metaopt.Estimator`. ``metrics`` holds ``loss`` (window sum),
    ``s_tilde_norm`` and ``theta_tilde_norm`` (at the window's end, mean over
    ranks) and ``rho0``, ``rho1`` (means over the window's steps and ranks).

  Examples:
    Rank-k UORO averages k independent rank-one estimates, so its variance
    falls about like 1/k:

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(3),
    ...     step=lambda s, th, key: (jnp.tanh(th * s + 0.1), jnp.sum(s)), horizon=8)
    >>> def spread(rank):
    ...   est = metaopt.uoro(system, num_steps=4, rank=rank)
    ...   draw = lambda k: metaopt.sum_window_grads(est, 0.5, k, num_windows=2)
    ...   return jnp.std(jax.vmap(draw)(jax.random.split(jax.random.key(0), 200)))
    >>> bool(spread(8) < spread(1) / 2)
    True
  """
  for name, value, choices in (("rho", rho, RHO_RULES), ("noise", noise, NOISES),
                               ("shaping", shaping, SHAPINGS)):
    if value not in choices:
      raise ValueError(f"{name} must be one of {choices}, got {value!r}")
  num_steps = window.check_num_steps(num_steps, base.check_system(system))
  rank = base.check_count(rank, "rank")
  epsilon = base.check_float(epsilon, "epsilon")
  fixed_rho = base.check_float(fixed_rho, "fixed_rho")
  energy_decay = base.check_float(energy_decay, "energy_decay", positive=False)
  if not 0 <= energy_decay < 1:
    raise ValueError(f"energy_decay must lie in [0, 1), got {energy_decay!r}")

  needs_loss_grad = rho == "variance" or shaping == "diagonal"
  over_ranks = _over_ranks if rank > 1 else _single_rank

  def noise_shape(energy, like):
    """q per float leaf, ((energy_l + mean energy) / mean energy)^(-1/4), unit mean square.

    Leaves whose loss gradient is large get less noise; the mean energy added
    to each leaf bounds the shaping where a leaf's loss gradient is ~0 (there
    the unknown Jacobian energy, not the loss gradient, would decide).
    """
    if shaping == "none":
      return [jnp.ones((), x.dtype) for x in like]
    sizes = jnp.array([x.size for x in like], energy.dtype)
    mean = jnp.sum(sizes * energy) / jnp.sum(sizes) + 1e-30
    q = ((energy + mean) / mean) ** -0.25
    q = q / jnp.sqrt(jnp.sum(sizes * q**2) / jnp.sum(sizes))
    return [q[i].astype(x.dtype) for i, x in enumerate(like)]

  def start(theta, keys, init_key):
    """A horizon's rank-one start: s_tilde = rho nu, theta_tilde = u^T Q^-1 (d init/dtheta) / rho."""
    f, theta_vec, split = base.flat_init(system, theta, init_key)
    floats, init_vjp, others = jax.vjp(f, theta_vec, has_aux=True)
    energy = jnp.zeros((len(floats),), theta_vec.dtype)
    q = noise_shape(energy, floats)
    u = _noise(jax.random.split(keys.noise, num_steps + 1)[-1], floats, rank, noise)
    nu = [qi * ui for qi, ui in zip(q, u)]
    theta_tilde = jax.vmap(lambda uk: init_vjp([x / qi for x, qi in zip(uk, q)])[0])(u)
    rho_ = jnp.sqrt((jnp.linalg.norm(theta_tilde, axis=1) + epsilon)
                    / (jax.vmap(_norm)(nu) + epsilon))
    return (split.merge(floats, others), [_bcast(rho_, n) * n for n in nu],
            theta_tilde / rho_[:, None].astype(theta_tilde.dtype), energy)

  def forward(begin, theta, keys):
    noise_keys = jax.random.split(keys.noise, num_steps + 1)
    theta_vec, unravel = base.ravel(theta)
    inner, s_tilde, theta_tilde, energy = begin(theta)
    split = base.StateSplit.of(inner)

    def body(carry, keys_t):
      inner, s_tilde, theta_tilde, energy, grad = carry
      step_key, noise_key = keys_t
      floats, others = split.split(inner)
      f = base.flat_step(system, split, unravel, others, step_key)
      (new_floats, loss), lin, new_others = jax.linearize(f, floats, theta_vec, has_aux=True)
      zeros_s = [jnp.zeros_like(x) for x in floats]
      # Forward: (ds'/ds) s_tilde and dL/ds · s_tilde, one JVP per rank.
      a1, dloss_s = over_ranks(lambda st: lin(st, jnp.zeros_like(theta_vec)))(s_tilde)
      # Backward, from the same linearisation: the loss gradient c = dL/ds and the direct
      # dL/dtheta in one transpose; u^T Q^-1 ds'/dtheta in another (per rank).
      # Each transpose sees only the output it needs: a zero cotangent on the other
      # output would still be pushed back through that output's whole path (for an
      # inner training step, through the validation network), which XLA cannot skip.
      if needs_loss_grad:
        c, dloss_theta = jax.linear_transpose(lambda ds, dth: lin(ds, dth)[1], floats,
                                              theta_vec)(jnp.ones_like(loss))
      else:  # the theta-only transpose is cheaper
        c, (dloss_theta,) = None, jax.linear_transpose(
            lambda dth: lin(zeros_s, dth)[1], theta_vec)(jnp.ones_like(loss))
      state_t = jax.linear_transpose(lambda dth: lin(zeros_s, dth)[0], theta_vec)
      q = noise_shape(energy, floats)
      u = _noise(noise_key, new_floats, rank, noise)
      nu = [qi * ui for qi, ui in zip(q, u)]
      b2 = over_ranks(lambda uk: state_t([x / qi for x, qi in zip(uk, q)])[0])(u)
      # The loss may have another float dtype than theta: keep the carry in theta's.
      grad = grad + (jnp.mean(dloss_s[:, None] * theta_tilde, axis=0)
                     + dloss_theta).astype(grad.dtype)
      theta_norm = jnp.linalg.norm(theta_tilde, axis=1)
      a1_norm, nu_norm = jax.vmap(_norm)(a1), jax.vmap(_norm)(nu)
      b2_norm = jnp.linalg.norm(b2, axis=1)
      rho1 = jnp.sqrt((b2_norm + epsilon) / (nu_norm + epsilon))
      if rho == "fixed":
        rho0 = rho1 = jnp.full((rank,), fixed_rho, theta_vec.dtype)
      else:
        rho0 = jnp.sqrt((theta_norm + epsilon) / (a1_norm + epsilon))
        if rho == "variance":
          ratio_norm = rho0 / rho1
          qc_norm = _norm([qi * ci for qi, ci in zip(q, c)])
          c_a1 = jax.vmap(lambda a: sum(jnp.vdot(ci, ai) for ci, ai in zip(c, a)))(a1)
          ratio = jnp.sqrt((qc_norm * theta_norm + epsilon)
                           / (jnp.abs(c_a1) * b2_norm + epsilon))
          rho0 = rho1 * jnp.clip(ratio, ratio_norm / 10, ratio_norm * 10)
      s_tilde = [_bcast(rho0, a) * a + _bcast(rho1, n) * n for a, n in zip(a1, nu)]
      theta_tilde = (theta_tilde / rho0[:, None].astype(theta_tilde.dtype)
                     + b2 / rho1[:, None].astype(theta_tilde.dtype))
      if shaping == "diagonal":
        now = jnp.stack([jnp.mean(jnp.square(ci)) for ci in c]).astype(energy.dtype)
        energy = energy_decay * energy + (1 - energy_decay) * now
      return ((split.merge(new_floats, new_others), s_tilde, theta_tilde, energy, grad),
              (loss, jnp.mean(rho0), jnp.mean(rho1)))

    (inner, s_tilde, theta_tilde, energy, grad), (losses, rho0, rho1) = jax.lax.scan(
        body, (inner, s_tilde, theta_tilde, energy, jnp.zeros_like(theta_vec)),
        (keys.steps, noise_keys[:-1]))
    metrics = {"loss": jnp.sum(losses),
               "s_tilde_norm": jnp.mean(jax.vmap(_norm)(s_tilde)),
               "theta_tilde_norm": jnp.mean(jnp.linalg.norm(theta_tilde, axis=1)),
               "rho0": jnp.mean(rho0), "rho1": jnp.mean(rho1)}
    return (inner, s_tilde, theta_tilde, energy), unravel(grad), metrics

  return window.windowed(system, UOROState, num_steps=num_steps, start=start, window=forward)


def _over_ranks(f):
  return jax.vmap(f)


def _single_rank(f):
  """Like vmap over a rank axis of size 1, without batching (cheaper matmuls on CPU)."""
  def g(x):
    out = f(jax.tree.map(lambda y: y[0], x))
    return jax.tree.map(lambda y: jnp.expand_dims(y, 0), out)
  return g


def _bcast(per_rank, like):
  """A (rank,) vector shaped (and typed) to multiply a (rank, ...) array of another dtype."""
  return per_rank.reshape(per_rank.shape + (1,) * (like.ndim - 1)).astype(like.dtype)
