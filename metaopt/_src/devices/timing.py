"""Cost of estimators: interleaved wall-clock medians, compile time, peak memory, step breakdown.

Every timed function is jit-compiled and called once before timing (that call
compiles); the functions compared are then called in turn, repeat after repeat,
so that drifts of a shared machine hit them all alike, and each reports the
median of its repeats.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.core import base

PyTree = Any
# ``args_fn(previous_output) -> args`` of the next call; ``previous_output`` is None at first.
ArgsFn = Callable[[Any], tuple]


def _timed(fn: Callable, args: tuple) -> tuple[Any, float]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def interleaved_medians(fns: Sequence[Callable], args_fns: Sequence[ArgsFn], *,
                        repeats: int) -> list[float]:
  """Median wall seconds of each call of ``fns[i](*args_fns[i](its previous output))``.

  Each ``args_fn`` feeds a function's output back as its next input (a state
  advancing), so no call is answered from a cache. The first call of each
  compiles and is not timed.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> f = jax.jit(lambda x: x + 1.0)
    >>> args = lambda out: (jnp.zeros(3) if out is None else out,)
    >>> [s > 0 for s in metaopt.timing.interleaved_medians([f, f], [args, args], repeats=3)]
    [True, True]
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats!r}")
  outs = [jax.block_until_ready(fn(*a(None))) for fn, a in zip(fns, args_fns)]
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, (fn, a) in enumerate(zip(fns, args_fns)):
      outs[i], seconds = _timed(fn, a(outs[i]))
      times[i].append(seconds)
  return [float(np.median(t)) for t in times]


def plain_runner(system: base.UnrolledSystem, theta: PyTree, *,
                 num_steps: int) -> tuple[Callable, ArgsFn]:
  """The plain inner loop, no hypergradient: a jitted ``lax.scan`` of ``num_steps`` steps.

  Returns ``(fn, args_fn)`` for :func:`interleaved_medians`; ``fn(state, keys)``
  returns ``(state, losses)`` and each call continues from the last state.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones(3),
    ...                                 lambda s, th, key: (th * s, jnp.sum(s)), horizon=4)
    >>> fn, args = metaopt.timing.plain_runner(system, jnp.float32(0.5), num_steps=4)
    >>> fn(*args(None))[1].tolist()
    [3.0, 1.5, 0.75, 0.375]
  """
  @jax.jit
  def plain(state, keys):
    return jax.lax.scan(lambda s, k: system.step(s, theta, k), state, keys)

  state0 = system.init(jax.random.key(0), theta)
  keys = jax.random.split(jax.random.key(1), num_steps)
  return plain, lambda out: (state0 if out is None else out[0], keys)


def estimator_runner(est: base.Estimator, theta: PyTree) -> tuple[Callable, ArgsFn]:
  """An estimator's jitted ``unroll``, each call on the last state with a fresh key.

  Returns ``(fn, args_fn)`` for :func:`interleaved_medians`.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones(3),
    ...                                 lambda s, th, key: (th * s, jnp.sum(s)), horizon=4)
    >>> fn, args = metaopt.timing.estimator_runner(metaopt.rtrl(system, num_steps=2),
    ...                                            jnp.float32(0.5))
    >>> float(fn(*args(None))[1])  # d(3 + 1.5)/d theta = 3 at theta = 0.5
    3.0
  """
  state0 = est.init(jax.random.key(0), theta)
  counter = iter(range(10**9))
  return jax.jit(est.unroll), lambda out: (state0 if out is None else out[0], theta,
                                           jax.random.fold_in(jax.random.key(2), next(counter)))


def seconds_per_step(system: base.UnrolledSystem, theta: PyTree, est: base.Estimator, *,
                     num_steps: int, repeats: int, window: int | None = None
                     ) -> tuple[float, float]:
  """(plain seconds per inner step, estimator seconds per inner step), timed interleaved.

  The plain step is a scan of ``num_steps`` steps; one ``unroll`` advances
  ``window`` steps (``metaopt.horizon.window_length``; ``num_steps`` if None). Their
  ratio is the estimator's cost in plain steps.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones(3),
    ...                                 lambda s, th, key: (th * s, jnp.sum(s)), horizon=4)
    >>> est = metaopt.tbptt(system, num_steps=2)
    >>> plain, est_s = metaopt.timing.seconds_per_step(system, jnp.float32(0.5), est,
    ...                                                num_steps=2, repeats=3)
    >>> plain > 0 and est_s > 0
    True
  """
  plain, plain_args = plain_runner(system, theta, num_steps=num_steps)
  unroll, est_args = estimator_runner(est, theta)
  plain_s, est_s = interleaved_medians([plain, unroll], [plain_args, est_args], repeats=repeats)
  return plain_s / num_steps, est_s / (window or num_steps)


def plain_step_seconds(system: base.UnrolledSystem, theta: PyTree, *, repeats: int = 5,
                       num_steps: int | None = None) -> float:
  """Seconds of one plain inner step: a jitted scan of ``num_steps`` steps, median of repeats.

  ``num_steps`` defaults to the horizon; the unit in which estimator costs
  are reported ("plain steps").

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones(3),
    ...                                 lambda s, th, key: (th * s, jnp.sum(s)), horizon=4)
    >>> metaopt.timing.plain_step_seconds(system, jnp.float32(0.5), repeats=3) > 0
    True
  """
  num_steps = num_steps or system.horizon
  fn, args = plain_runner(system, theta, num_steps=num_steps)
  return interleaved_medians([fn], [args], repeats=repeats)[0] / num_steps


def compile_seconds(est: base.Estimator, theta: PyTree) -> float:
  """Seconds to trace and compile a first ``unroll`` (a fresh function: no cached executable).

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones(3),
    ...                                 lambda s, th, key: (th * s, jnp.sum(s)), horizon=4)
    >>> metaopt.timing.compile_seconds(metaopt.uoro(system, num_steps=2), jnp.float32(0.5)) > 0
    True
  """
  state = est.init(jax.random.key(0), theta)
  fresh = jax.jit(lambda *args: est.unroll(*args))  # a new function, so nothing is cached
  start = time.perf_counter()
  fresh.lower(state, theta, jax.random.key(1)).compile()
  return time.perf_counter() - start


def peak_bytes(fn: Callable, *args) -> int:
  """Peak memory of ``jax.jit(fn)(*args)`` as XLA assigns its buffers (args + outputs + temps).

  Read from the compiled program, not measured at run time: deterministic, and
  the same on every backend that reports ``memory_analysis``.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> metaopt.timing.peak_bytes(lambda x: x * 2, jnp.zeros(1024)) >= 2 * 4096
    True
  """
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def step_breakdown(system: base.UnrolledSystem, theta: PyTree, *, num_steps: int,
                   repeats: int, measure: str = "seconds") -> dict[str, float]:
  """Seconds (or FLOPs) per inner step of the pieces estimators are made of, timed interleaved.

  Each piece is scanned over ``num_steps`` steps as a function of the float
  state leaves and flat theta: ``"primal step"`` (the step alone), ``"JVP
  w.r.t. state"``, ``"linearize + JVP"``, ``"VJP of loss w.r.t. theta"`` and
  ``"VJP of step w.r.t. state"`` (what tbptt's backward pass does per step).
  With ``measure="flops"`` nothing is timed: each piece of one step is
  compiled and XLA's own count (``cost_analysis()["flops"]``) is returned, a
  number another job on the machine cannot change.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones(3),
    ...                                 lambda s, th, key: (th * s, jnp.sum(s)), horizon=4)
    >>> pieces = metaopt.timing.step_breakdown(system, jnp.float32(0.5), num_steps=4, repeats=2)
    >>> list(pieces)[0], all(s > 0 for s in pieces.values())
    ('primal step', True)
  """
  theta_vec, unravel = base.ravel(theta)
  state0 = system.init(jax.random.key(0), theta)
  split = base.StateSplit.of(state0)
  floats0, others = split.split(state0)
  keys = jax.random.split(jax.random.key(1), num_steps)
  tangent = [0.01 * jnp.ones_like(x) for x in floats0]

  def scanned(piece):
    def body(floats, key):
      f = base.flat_step(system, split, unravel, others, key)
      new, extra = piece(f, floats)
      # Keep every result alive (XLA would drop unused work), without changing the state.
      keep = sum(jnp.sum(x) for x in jax.tree.leaves(extra))
      return [x + 0 * keep for x in new], None
    return jax.jit(lambda fl: jax.lax.scan(body, fl, keys)[0])

  def primal(f, fl):
    return f(fl, theta_vec)[0]

  def jvp_state(f, fl):
    (new, _), tan = jax.jvp(lambda s: f(s, theta_vec)[0], (fl,), (tangent,))
    return new, tan

  def linearize_jvp(f, fl):
    (new, _), lin, _ = jax.linearize(f, fl, theta_vec, has_aux=True)
    return new, lin(tangent, jnp.zeros_like(theta_vec))

  def vjp_theta_loss(f, fl):
    (new, loss), pull = jax.vjp(lambda th: f(fl, th)[0], theta_vec)
    return new, pull(([jnp.zeros_like(x) for x in new], jnp.ones_like(loss)))

  def vjp_state(f, fl):
    (new, loss), pull = jax.vjp(lambda s: f(s, theta_vec)[0], fl)
    return new, pull((tangent, jnp.ones_like(loss)))

  pieces = {"primal step": primal, "JVP w.r.t. state": jvp_state,
            "linearize + JVP": linearize_jvp, "VJP of loss w.r.t. theta": vjp_theta_loss,
            "VJP of step w.r.t. state": vjp_state}
  if measure == "flops":
    def flops(piece):
      def one(fl):
        return piece(base.flat_step(system, split, unravel, others, keys[0]), fl)
      cost = jax.jit(one).lower(floats0).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per module
      return float(cost["flops"])
    return {name: flops(p) for name, p in pieces.items()}
  if measure != "seconds":
    raise ValueError(f"measure must be 'seconds' or 'flops', got {measure!r}")
  fns = [scanned(p) for p in pieces.values()]
  args = [lambda out: (floats0 if out is None else out,)] * len(fns)
  times = interleaved_medians(fns, args, repeats=repeats)
  return {name: t / num_steps for name, t in zip(pieces, times)}
