"""Unbiased Online Recurrent Optimization (Tallec & Ollivier, 2018) for hyperparameters,
with the variance reductions of Cooijmans & Martens (2019)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from metaopt._src.core import base
from metaopt._src.estimators import shaping as shaping_lib
from metaopt._src.core import window

RHO_RULES = ("norm", "fixed", "one_step_variance", "variance")
NOISES = ("rademacher", "gaussian")
SHAPINGS = ("none", "diagonal", "online", "oracle")


class UOROState(NamedTuple):
  """State of :func:`uoro`.

  The influence ds/dtheta is approximated, unbiasedly, by the mean over ``rank``
  independent outer products ``s_tilde[k] theta_tilde[k]^T``.

  Attributes:
    inner: the inner state at the start of the next window.
    s_tilde: state-sized factors (one array per float leaf of ``inner``, each
      with a leading axis of size ``rank``).
    theta_tilde: theta-sized factors, (rank, H).
    shaping: what the noise shape and the rho rule carry: ``{}`` for plain
      UORO; ``{"energy"}`` (per float leaf, a running mean of (dL/ds)^2) for
      ``shaping="diagonal"``; a :class:`~metaopt.shaping.OnlineDiagonal` for
      ``shaping="online"``; ``{"oracle", "log_scale"}`` for ``shaping="oracle"``
      or ``rho="variance"``.
    count, init_key, theta_spec: the window position and theta's layout at ``init``
      (see :func:`~metaopt.windowed`).
  """
  inner: base.PyTree
  s_tilde: list
  theta_tilde: jax.Array
  shaping: Any
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def _noise(key, like, rank, kind):
  """``rank`` noise samples shaped like the leaves ``like``, from ONE draw over all of them.

  A draw per leaf would put one copy of the random-bits code per leaf into the
  program (most of UORO's compile time on a many-leaf state).
  """
  sizes = [math.prod(x.shape) for x in like]
  dtype = jnp.result_type(*[x.dtype for x in like]) if like else jnp.float32
  draw = _rademacher if kind == "rademacher" else jax.random.normal
  flat = draw(key, (rank, sum(sizes)), dtype)
  offsets = np.cumsum([0] + sizes)
  return [flat[:, a:b].reshape((rank,) + x.shape).astype(x.dtype)
          for a, b, x in zip(offsets[:-1], offsets[1:], like)]


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


def uoro(system: base.UnrolledSystem, *, num_steps: int, rho: str | None = None,
         noise: str = "rademacher", shaping: str = "none", rank: int = 1,
         fixed_rho: float = 1.0, epsilon: float = 1e-7, energy_decay: float = 0.9,
         shaping_period: int | None = None) -> base.Estimator:
  """UORO: an unbiased low-rank forward-mode estimate of the influence ds/dtheta.

  Keeps ``s_tilde`` (state-sized) and ``theta_tilde`` (theta-sized) with
  E[s_tilde theta_tilde^T] = ds/dtheta (Tallec & Ollivier, 2018). Per step,
  with u random (signs or Gaussian) and nu = Q u, Q a noise shape (identity
  by default; Cooijmans & Martens, 2019):

    g_t        += (dL_t/ds · s_tilde) theta_tilde + dL_t/dtheta (direct)
    s_tilde     = rho0 (ds'/ds) s_tilde + rho1 nu
    theta_tilde = theta_tilde / rho0 + u^T Q^-1 (ds'/dtheta) / rho1

  Since E[Q u u^T Q^-1] = I and rho0, rho1, Q do not depend on the step's
  noise (or depend on it only through even functions such as norms), every
  option stays unbiased. Over a horizon the estimate depends on the rhos
  only through alpha_t = rho1_t / prod_{k<=t} rho0_k: the noise at step t is
  effectively alpha_t Q u_t (C&M's Q_t = alpha_t Q_0); rho0 alone only
  balances the factors' norms. A horizon starts with the rank-one estimate
  ``s_tilde = rho nu``, ``theta_tilde = u^T Q^-1 (d init/dtheta) / rho``.
  The JVP and the backward passes of a step come from one linearisation.

  Args:
    system: the unrolled inner problem.
    num_steps: window length; must divide ``system.horizon`` (and equal it
      for the oracle options, ``rho="variance"`` and ``shaping="oracle"``).
    rho: how rho0, rho1 (the schedule alpha_t) are chosen; by default
      ``"variance"`` with ``shaping="oracle"`` and ``"norm"`` otherwise.
      ``"norm"`` (Tallec & Ollivier): ``rho0 = sqrt(|theta_tilde| / |(ds'/ds) s_tilde|)``,
      ``rho1 = sqrt(|b| / |nu|)``, ``b = u^T Q^-1 ds'/dtheta``; balances the norms of
      both factors (the greedy minimum of the rank-one Jacobian's error).
      ``"fixed"``: rho0 = rho1 = ``fixed_rho`` (the REINFORCE limit, for comparison).
      ``"one_step_variance"`` (our own greedy rule): r = rho0 / rho1 minimises
      the variance of the NEXT step's projected gradient (c · s_tilde')
      theta_tilde', with the latest loss gradient c = dL/ds standing in for
      the next one: ``r^2 = |Q c| |theta_tilde| / (|c · (ds'/ds) s_tilde| |b|)``,
      clipped to [1/10, 10] times the ``"norm"`` ratio.
      ``"variance"`` (Cooijmans & Martens' objective): the schedule alpha_t
      that minimises their bound on the TOTAL variance of the horizon's
      summed estimate, computed by backprop over the horizon on the same
      keys (an offline study tool: it reads the future; see
      :mod:`metaopt._src.estimators.shaping`). rho0 follows ``"norm"``.
    noise: ``"rademacher"`` signs (the original) or ``"gaussian"``.
    shaping: the noise shape Q_0.
      ``"none"``: Q = I.
      ``"oracle"`` (Cooijmans & Martens): Q_0 = B^{-1/4}, B their matrix of
      summed future loss gradients, computed by backprop over the horizon on
      the same keys (offline, for states of at most
      ``shaping.MAX_ORACLE_STATE`` float entries); with ``rho="variance"``
      Q_0 and alpha_t are alternated towards their joint minimum.
      ``"online"`` (our own, after C&M): Q_0 = diag(B)^{-1/4} estimated from
      the loss gradients of past blocks of ``shaping_period`` steps, with the
      state Jacobians taken as I; the first block uses Q = I.
      ``"diagonal"`` (our own heuristic): one scale per float leaf of the state,
      (running mean of (dL/ds_l)^2)^(-1/4); no effect on a one-leaf state.
    rank: number of independent rank-one pairs averaged (rank-k UORO); they
      share the step's forward pass, and cost one JVP and one VJP each.
    fixed_rho: the value of both rhos for ``rho="fixed"``.
    epsilon: stabiliser of the rho ratios.
    energy_decay: decay of the running statistics of ``shaping="diagonal"``
      (per step) and ``"online"`` (per block).
    shaping_period: steps per block of ``shaping="online"``'s statistics (Q_0
      is refreshed after each block and at each horizon start); by default
      the horizon, capped at 1,000 steps so that an endless stream's online
      training gets shaped too.

  Returns:
    An :class:`~metaopt.Estimator`. ``metrics`` holds ``loss`` (window sum),
    ``s_tilde_norm`` and ``theta_tilde_norm`` (at the window's end, mean over
    ranks) and ``rho0``, ``rho1`` (means over the window's steps and ranks);
    with ``shaping="oracle"`` also C&M's variance terms of the horizon,
    ``variance_bound_shaped`` (tr(B^{1/2})^2) and ``variance_bound_identity``
    (tr(B) n, what Q_0 = I would give).

  Raises:
    ValueError: for an unknown option, or an oracle option whose window is
      not the whole horizon.

  Examples:
    Rank-k UORO averages k independent rank-one estimates, so its variance
    falls about like 1/k:

    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(3),
    ...     step=lambda s, th, key: (jnp.tanh(th * s + 0.1), jnp.sum(s)), horizon=8)
    >>> def spread(**options):
    ...   est = metaopt.uoro(system, num_steps=4, **options)
    ...   draw = lambda k: metaopt.sum_window_grads(est, 0.5, k, num_windows=2)
    ...   return jnp.std(jax.vmap(draw)(jax.random.split(jax.random.key(0), 200)))
    >>> bool(spread(rank=8) < spread(rank=1) / 2)
    True
  """
  if rho is None:
    rho = "variance" if shaping == "oracle" else "norm"
  for name, value, choices in (("rho", rho, RHO_RULES), ("noise", noise, NOISES),
                               ("shaping", shaping, SHAPINGS)):
    if value not in choices:
      raise ValueError(f"{name} must be one of {choices}, got {value!r}")
  horizon = base.check_system(system)
  num_steps = window.check_num_steps(num_steps, horizon)
  rank = base.check_count(rank, "rank")
  epsilon = base.check_float(epsilon, "epsilon")
  fixed_rho = base.check_float(fixed_rho, "fixed_rho")
  energy_decay = base.check_float(energy_decay, "energy_decay", positive=False)
  if not 0 <= energy_decay < 1:
    raise ValueError(f"energy_decay must lie in [0, 1), got {energy_decay!r}")
  oracle = shaping == "oracle" or rho == "variance"
  if oracle and num_steps != horizon:
    what = "shaping='oracle'" if shaping == "oracle" else "rho='variance'"
    raise ValueError(
        f"{what} (Cooijmans & Martens' total-variance choice) reads the whole horizon: "
        f"num_steps must equal the system's horizon={horizon}, got {num_steps}"
        + ("; the one-step greedy rule is rho='one_step_variance'" if rho == "variance" else ""))

  if shaping_period is None:
    shaping_period = min(horizon, 1000)
  shaping_period = base.check_count(shaping_period, "shaping_period")

  needs_loss_grad = rho == "one_step_variance" or shaping in ("diagonal", "online")
  over_ranks = _over_ranks if rank > 1 else _single_rank
  alpha_mode = {"variance": "optimal", "fixed": "fixed"}.get(rho, "ones")

  def diagonal_shape(energy, like):
    """q per float leaf, ((energy_l + mean energy) / mean energy)^(-1/4), unit mean square.

    Leaves whose loss gradient is large get less noise; the mean energy added
    to each leaf bounds the shaping where a leaf's loss gradient is ~0 (there
    the unknown Jacobian energy, not the loss gradient, would decide).
    """
    sizes = jnp.array([x.size for x in like], energy.dtype)
    mean = jnp.sum(sizes * energy) / jnp.sum(sizes) + 1e-30
    q = ((energy + mean) / mean) ** -0.25
    q = q / jnp.sqrt(jnp.sum(sizes * q**2) / jnp.sum(sizes))
    return [q[i].astype(x.dtype) for i, x in enumerate(like)]

  def noise_shape(shape_state, like):
    """(Q, Q^-1) as functions of one noise sample (a list of float leaves)."""
    if shaping == "oracle":
      q0, q0_inv = shape_state["oracle"].q0, shape_state["oracle"].q0_inv
      return (lambda u: _matmul(q0, u)), (lambda u: _matmul(q0_inv, u))
    if shaping == "none":
      return (lambda u: u), (lambda u: u)
    q = (diagonal_shape(shape_state["energy"], like) if shaping == "diagonal"
         else [x.astype(y.dtype) for x, y in zip(shape_state.q, like)])
    return ((lambda u: [qi * ui for qi, ui in zip(q, u)]),
            (lambda u: [ui / qi for qi, ui in zip(q, u)]))

  def start(theta, keys, init_key, previous):
    """A horizon's rank-one start: s_tilde = rho nu, theta_tilde = u^T Q^-1 (d init/dtheta) / rho."""
    f, theta_vec, split = base.flat_init(system, theta, init_key)
    floats, init_vjp, others = jax.vjp(f, theta_vec, has_aux=True)
    if shaping == "diagonal":
      shape_state = {"energy": jnp.zeros((len(floats),), theta_vec.dtype)}
    elif shaping == "online":
      shape_state = shaping_lib.online_start(None if previous is None else previous[3],
                                             floats, energy_decay)
    elif oracle:
      shape_state = {"oracle": shaping_lib.horizon_oracle(
          system, theta, init_key, keys.steps, shape=shaping == "oracle", alpha=alpha_mode,
          fixed_rho=fixed_rho)}
    else:
      shape_state = {}
    q, q_inv = noise_shape(shape_state, floats)
    u = _noise(jax.random.split(keys.noise, num_steps + 1)[-1], floats, rank, noise)
    nu = jax.vmap(q)(u)
    theta_tilde = jax.vmap(lambda uk: init_vjp(q_inv(uk))[0])(u)
    rho_ = jnp.sqrt((jnp.linalg.norm(theta_tilde, axis=1) + epsilon)
                    / (jax.vmap(_norm)(nu) + epsilon))
    if oracle:  # log of the constant c in rho1_t / prod rho0 = c alpha_t
      shape_state["log_scale"] = jnp.log(rho_) - jnp.log(shape_state["oracle"].alpha[0])
    return (split.merge(floats, others), [_bcast(rho_, n) * n for n in nu],
            theta_tilde / rho_[:, None].astype(theta_tilde.dtype), shape_state)

  def forward(begin, theta, keys):
    noise_keys = jax.random.split(keys.noise, num_steps + 1)
    theta_vec, unravel = base.ravel(theta)
    inner, s_tilde, theta_tilde, shape_state = begin(theta)
    split = base.StateSplit.of(inner)
    # alpha of the noise each step adds (oracle schedules cover the whole window = horizon).
    alphas = shape_state["oracle"].alpha[1:] if oracle else jnp.ones((num_steps,))

    def body(carry, xs):
      inner, s_tilde, theta_tilde, shape_state, grad = carry
      step_key, noise_key, alpha = xs
      floats, others = split.split(inner)
      # The loss gradient w.r.t. the incoming state (needs_loss_grad) needs the whole step.
      one_pass = not needs_loss_grad and base.loss_by_one_pass(system, floats)
      zeros_s = [jnp.zeros_like(x) for x in floats]
      if one_pass:  # the transition's JVP and transpose; the loss by one reverse pass
        transition, loss_at = base.flat_transition(system, split, unravel, others, step_key)
        new_floats, lin_s, new_others = jax.linearize(transition, floats, theta_vec,
                                                      has_aux=True)
        lin = lambda ds, dth: (lin_s(ds, dth), None)
        loss, pull = jax.vjp(loss_at(new_others), new_floats, theta_vec)
        c_new, c_theta = pull(jnp.ones_like(loss))
        # Forward: (ds'/ds) s_tilde, one JVP per rank; dL/ds · s_tilde = dL/ds' · that.
        a1 = over_ranks(lambda st: lin_s(st, jnp.zeros_like(theta_vec)))(s_tilde)
        dloss_s = jax.vmap(lambda a: sum(
            jnp.vdot(ci.astype(ai.dtype), ai, preferred_element_type=theta_vec.dtype)
            for ci, ai in zip(c_new, a)))(a1)
      else:
        f = base.flat_step(system, split, unravel, others, step_key)
        (new_floats, loss), lin, new_others = jax.linearize(f, floats, theta_vec, has_aux=True)
        # Forward: (ds'/ds) s_tilde and dL/ds · s_tilde, one JVP per rank.
        a1, dloss_s = over_ranks(lambda st: lin(st, jnp.zeros_like(theta_vec)))(s_tilde)
      state_t = jax.linear_transpose(lambda dth: lin(zeros_s, dth)[0], theta_vec)
      # Backward, from the same linearisation: the loss gradient c = dL/ds and the direct
      # dL/dtheta in one transpose; u^T Q^-1 ds'/dtheta in another (per rank).
      # Each transpose sees only the output it needs: a zero cotangent on the other
      # output would still be pushed back through that output's whole path (for an
      # inner training step, through the validation network), which XLA cannot skip.
      if needs_loss_grad:
        c, dloss_theta = jax.linear_transpose(lambda ds, dth: lin(ds, dth)[1], floats,
                                              theta_vec)(jnp.ones_like(loss))
      elif one_pass:  # dL/dtheta = dL/ds' ds'/dtheta + its direct term
        c, dloss_theta = None, state_t(c_new)[0] + c_theta
      else:  # the theta-only transpose is cheaper
        c, (dloss_theta,) = None, jax.linear_transpose(
            lambda dth: lin(zeros_s, dth)[1], theta_vec)(jnp.ones_like(loss))
      q, q_inv = noise_shape(shape_state, floats)
      u = _noise(noise_key, new_floats, rank, noise)
      nu = jax.vmap(q)(u)
      b2 = over_ranks(lambda uk: state_t(q_inv(uk))[0])(u)
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
        if rho == "one_step_variance":
          ratio_norm = rho0 / rho1
          qc_norm = _norm(q(c))
          c_a1 = jax.vmap(lambda a: sum(jnp.vdot(ci, ai) for ci, ai in zip(c, a)))(a1)
          ratio = jnp.sqrt((qc_norm * theta_norm + epsilon)
                           / (jnp.abs(c_a1) * b2_norm + epsilon))
          rho0 = rho1 * jnp.clip(ratio, ratio_norm / 10, ratio_norm * 10)
        elif rho == "variance":  # rho1 = c alpha_t prod rho0: the oracle's schedule
          log_scale = shape_state["log_scale"] + jnp.log(rho0)
          rho1 = (alpha * jnp.exp(log_scale)).astype(rho0.dtype)
          shape_state = {**shape_state, "log_scale": log_scale}
      s_tilde = [_bcast(rho0, a) * a + _bcast(rho1, n) * n for a, n in zip(a1, nu)]
      theta_tilde = (theta_tilde / rho0[:, None].astype(theta_tilde.dtype)
                     + b2 / rho1[:, None].astype(theta_tilde.dtype))
      if shaping == "diagonal":
        now = jnp.stack([jnp.mean(jnp.square(ci)) for ci in c]).astype(theta_vec.dtype)
        shape_state = {"energy": energy_decay * shape_state["energy"] + (1 - energy_decay) * now}
      elif shaping == "online":
        shape_state = shaping_lib.online_update(shape_state, c)
        # A block ends: its hindsight diag(B) refreshes Q_0 (Q stays independent of the noise).
        refreshed = shaping_lib.online_start(shape_state, c, energy_decay)
        done = shape_state.m >= shaping_period
        shape_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), refreshed, shape_state)
      return ((split.merge(new_floats, new_others), s_tilde, theta_tilde, shape_state, grad),
              (loss, jnp.mean(rho0), jnp.mean(rho1)))

    (inner, s_tilde, theta_tilde, shape_state, grad), (losses, rho0, rho1) = jax.lax.scan(
        body, (inner, s_tilde, theta_tilde, shape_state, jnp.zeros_like(theta_vec)),
        (keys.steps, noise_keys[:-1], alphas.astype(theta_vec.dtype)))
    metrics = {"loss": jnp.sum(losses),
               "s_tilde_norm": jnp.mean(jax.vmap(_norm)(s_tilde)),
               "theta_tilde_norm": jnp.mean(jnp.linalg.norm(theta_tilde, axis=1)),
               "rho0": jnp.mean(rho0), "rho1": jnp.mean(rho1)}
    if shaping == "oracle":
      metrics["variance_bound_shaped"] = shape_state["oracle"].bound_shaped
      metrics["variance_bound_identity"] = shape_state["oracle"].bound_identity
    return (inner, s_tilde, theta_tilde, shape_state), unravel(grad), metrics

  return window.windowed(system, UOROState, num_steps=num_steps, start=start, window=forward,
                         start_sees_previous=True)


def _matmul(matrix, leaves):
  """``matrix @ leaves`` with the float leaves read as one flat vector."""
  vec, unravel = ravel_pytree(leaves)
  return unravel((matrix @ vec).astype(vec.dtype))


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
