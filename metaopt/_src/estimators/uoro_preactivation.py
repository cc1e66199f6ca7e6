"""UORO projected at the preactivations (Cooijmans & Martens, 2019): no spatial projection."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.core import base
from metaopt._src.recurrent import dense
from metaopt._src.core import window
from metaopt._src.recurrent.elementwise import RecurrentState


class UOROPreactivationState(NamedTuple):
  """State of :func:`uoro_preactivation`.

  Attributes:
    inner: the inner state at the start of the next window.
    h_tilde: ``(N, N)``, hidden units x preactivations.
    a_tilde: ``(N + D + 1,)``, over the layer's input a = [h; x; 1].
    h0_trace: ``(N, N)`` exact dh/dh0 when ``theta["cell"]`` has ``"h0"``, else ``(0, 0)``.
    count, init_key, theta_spec: the window position and theta's layout at ``init``.
  """
  inner: RecurrentState
  h_tilde: jax.Array
  a_tilde: jax.Array
  h0_trace: jax.Array
  count: jax.Array
  init_key: jax.Array
  theta_spec: base.PyTree


def uoro_preactivation(system: dense.DenseSystem, *, num_steps: int,
                       epsilon: float = 1e-7) -> base.Estimator:
  """UORO over the preactivations of a dense recurrent layer: variance / N at N times the cost.

  For h_t = f(p_t), p_t = W a_t, a_t = [h_{t-1}; x_t; 1], the direct
  influence dh_t/dW = diag(f'(p_t)) (I ⊗ a_t^T) is already an outer product,
  so only the TEMPORAL projection needs noise: with one random sign tau_t per
  step (Cooijmans & Martens, 2019, section "preactivation-space UORO"; the
  family of Mujika et al.'s KF-RTRL),

    H~_t = gamma_t D_t W_h H~_{t-1} + beta_t tau_t D_t        (N x N)
    a~_t = a~_{t-1} / gamma_t + tau_t a_t / beta_t            (N + D + 1)
    dL_t/dW ≈ (H~_t^T dL_t/dh_t) a~_t^T

  with D_t = diag(f'(p_t)) and gamma, beta balancing norms as in UORO; it is
  unbiased because E[tau_s tau_r] = [s = r]. Per step it costs O(N^3) (plain
  UORO O(N^2), exact RTRL O(N^4)). A learned initial state ``h0`` gets its
  exact trace dh_t/dh0 (also N x N); the readout's gradient is exact (direct).

  Args:
    system: a :class:`DenseSystem` from :func:`metaopt.recurrent.dense_system`.
    num_steps: window length; must divide ``system.horizon``.
    epsilon: stabiliser of the norm ratios.

  Returns:
    An :class:`~metaopt.Estimator`; ``metrics`` holds ``loss``, ``h_tilde_norm``
    and ``a_tilde_norm``.

  Raises:
    ValueError: for a system without the dense structure, or a bad num_steps.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> system = metaopt.recurrent.dense_system(
    ...     stream_init=lambda key: jnp.float32(0.0),
    ...     observe=lambda t, key: (t + 1, jnp.array([jnp.sin(t)]), jnp.cos(t)),
    ...     readout_loss=lambda r, h, y: (r @ h[:, 0] - y) ** 2, horizon=6)
    >>> theta = {"cell": {"W_h": 0.5 * jnp.eye(2), "W_x": jnp.ones((2, 1)), "b": jnp.zeros(2)},
    ...          "readout": jnp.ones(2)}
    >>> est = metaopt.uoro_preactivation(system, num_steps=3)
    >>> g = jax.vmap(lambda k: metaopt.sum_window_grads(est, theta, k, num_windows=2))(
    ...     jax.random.split(jax.random.key(0), 4000))
    >>> exact = metaopt.exact_grad(system, theta, jax.random.key(0), num_steps=3, num_windows=2)
    >>> se = g["cell"]["W_h"].std(0) / 4000 ** 0.5  # unbiased: within a few standard errors
    >>> bool(jnp.all(jnp.abs(g["cell"]["W_h"].mean(0) - exact["cell"]["W_h"]) < 4 * se))
    True
  """
  if not isinstance(system, dense.DenseSystem):
    raise ValueError(
        "uoro_preactivation needs a DenseSystem (from metaopt.recurrent.dense_system), got "
        f"{type(system).__name__}; for any other system use metaopt.uoro")
  num_steps = window.check_num_steps(num_steps, base.check_system(system))
  epsilon = base.check_float(epsilon, "epsilon")
  f = system.activation

  def start(theta, keys, init_key):
    cell = theta["cell"]
    inner = system.init(init_key, theta)
    n = cell["b"].shape[0]
    size = n + cell["W_x"].shape[1] + 1
    h0_trace = jnp.eye(n, dtype=cell["b"].dtype) if "h0" in cell else jnp.zeros((0, 0))
    return inner, jnp.zeros((n, n), cell["b"].dtype), jnp.zeros(size, cell["b"].dtype), h0_trace

  def forward(begin, theta, keys):
    cell = theta["cell"]
    inner, h_tilde, a_tilde, h0_trace = begin(theta)
    signs = jax.random.rademacher(keys.noise, (num_steps,), cell["b"].dtype)

    def body(carry, xs):
      inner, h_tilde, a_tilde, h0_trace, grad = carry
      key, tau = xs
      stream, x, target = system.observe(inner.stream, key)
      h = inner.hidden[:, 0]
      a = jnp.concatenate([h, x.astype(h.dtype), jnp.ones(1, h.dtype)])
      p = dense.preactivations(cell, h, x)
      new_h, d = jax.jvp(f, (p,), (jnp.ones_like(p),))  # f element-wise: d = f'(p)
      jh = d[:, None] * (cell["W_h"] @ h_tilde)
      gamma = jnp.sqrt((jnp.linalg.norm(a_tilde) + epsilon) / (jnp.linalg.norm(jh) + epsilon))
      beta = jnp.sqrt((jnp.linalg.norm(a) + epsilon) / (jnp.linalg.norm(d) + epsilon))
      h_tilde = gamma * jh + beta * tau * jnp.diag(d)
      a_tilde = a_tilde / gamma + tau * a / beta
      if "h0" in cell:
        h0_trace = d[:, None] * (cell["W_h"] @ h0_trace)
      loss, (c, d_readout) = jax.value_and_grad(
          lambda hh, r: system.readout_loss(r, hh[:, None], target), argnums=(0, 1))(
              new_h, theta["readout"])
      g_w = jnp.outer(h_tilde.T @ c, a_tilde)
      n = h.shape[0]
      step_grad = {"cell": {"W_h": g_w[:, :n], "W_x": g_w[:, n:-1], "b": g_w[:, -1]},
                   "readout": d_readout}
      if "h0" in cell:
        step_grad["cell"]["h0"] = h0_trace.T @ c
      grad = jax.tree.map(lambda g, s: g + s.astype(g.dtype), grad, step_grad)
      return (RecurrentState(new_h[:, None], stream), h_tilde, a_tilde, h0_trace, grad), loss

    zeros = jax.tree.map(jnp.zeros_like, theta)
    (inner, h_tilde, a_tilde, h0_trace, grad), losses = jax.lax.scan(
        body, (inner, h_tilde, a_tilde, h0_trace, zeros), (keys.steps, signs))
    return ((inner, h_tilde, a_tilde, h0_trace), grad,
            {"loss": jnp.sum(losses), "h_tilde_norm": jnp.linalg.norm(h_tilde),
             "a_tilde_norm": jnp.linalg.norm(a_tilde)})

  return window.windowed(system, UOROPreactivationState, num_steps=num_steps, start=start,
                         window=forward, check_theta=dense.check_theta_layout)
