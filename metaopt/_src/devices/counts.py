"""XLA's own count of a program's FLOPs and bytes accessed, every loop iteration counted.

``compiled.cost_analysis()`` counts a while loop's body once, whatever its trip
count: a ``lax.scan`` of 20 steps reads as one step. The counts here compile
the program twice, with every ``jax.lax.scan`` traced unrolled 1 and u times
(u the smallest divisor of the scans' length above 1), and take one
iteration's count from the difference: total = count(1) + (n - 1) *
(count(u) - count(1)) / (u - 1). Numbers another job on the machine cannot
change, so a measured time can be set against them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax

from metaopt._src.core import base

PyTree = Any


@contextlib.contextmanager
def _scans_unrolled(unroll: int):
  """Every ``jax.lax.scan`` traced in this context unrolls ``unroll`` steps per iteration."""
  scan = jax.lax.scan

  def unrolled(*args, **kwargs):
    names = ("f", "init", "xs", "length", "reverse", "unroll")
    given = {**dict(zip(names, args)), **kwargs}
    leaves = jax.tree.leaves(given.get("xs"))
    length = given.get("length") or (leaves[0].shape[0] if leaves else None)
    own = given.get("unroll", 1)
    if own is True or (length and own >= length):  # straight-line already: counted as it is
      return scan(*args, **kwargs)
    if len(args) > 5:  # (f, init, xs, length, reverse, unroll, ...) given positionally
      args = args[:5] + (unroll,) + args[6:]
    else:
      kwargs["unroll"] = unroll
    return scan(*args, **kwargs)

  jax.lax.scan = unrolled
  try:
    yield
  finally:
    jax.lax.scan = scan


def _lowered(fn: Callable, args: tuple, unroll: int):
  jax.clear_caches()  # a jitted helper traced before would keep its rolled scans
  with _scans_unrolled(unroll):
    return jax.jit(lambda *a: fn(*a)).lower(*args)


def _counts(lowered) -> tuple[float, float]:
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per module
  return float(cost["flops"]), float(cost.get("bytes accessed", 0.0))


def xla_counts(fn: Callable, *args, num_steps: int) -> dict[str, float]:
  """XLA's FLOPs and bytes accessed of ``jax.jit(fn)(*args)``, each scan iteration counted.

  Every ``jax.lax.scan`` traced in ``fn`` must run ``num_steps`` iterations
  (an estimator's window, a plain inner loop); other loops (``while_loop``, the
  random-bit generator's own) count once, as XLA counts them. The FLOPs are
  linear in the unrolling to within about 1% on the benchmark's MLPs; bytes
  accessed depend on what XLA fuses across unrolled steps, so they are an
  estimate of the rolled loop's traffic (10-35% apart between unrolling twice
  and four times there). Clears JAX's caches (``jax.clear_caches``) before
  each of its two compilations.

  Args:
    fn: the function, as it would be passed to ``jax.jit``.
    *args: its arguments.
    num_steps: the iterations of every scan in it.

  Returns:
    ``{"flops": ..., "bytes_accessed": ...}`` of one call.

  Examples:
    >>> import jax, jax.numpy as jnp, metaopt
    >>> def power(x, n):
    ...   return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=n)[0]
    >>> x = jnp.ones((32, 32))
    >>> one = metaopt.timing.xla_counts(lambda x: power(x, 1), x, num_steps=1)["flops"]
    >>> ten = metaopt.timing.xla_counts(lambda x: power(x, 10), x, num_steps=10)["flops"]
    >>> one, round(ten / one, 3)  # cost_analysis() alone reads about 65536 for both
    (65536.0, 10.0)
  """
  num_steps = base.check_count(num_steps, "num_steps")
  rolled = _lowered(fn, args, 1)
  flops1, bytes1 = _counts(rolled)
  if num_steps == 1:
    return {"flops": flops1, "bytes_accessed": bytes1}
  unroll = next(d for d in range(2, num_steps + 1) if num_steps % d == 0)
  twice = _lowered(fn, args, unroll)
  if twice.as_text() == rolled.as_text():  # no scan to unroll: straight-line already
    return {"flops": flops1, "bytes_accessed": bytes1}
  flops_u, bytes_u = _counts(twice)
  per = lambda one, many: one + (num_steps - 1) * (many - one) / (unroll - 1)
  return {"flops": per(flops1, flops_u), "bytes_accessed": per(bytes1, bytes_u)}


def plain_counts(system: base.UnrolledSystem, theta: PyTree, *,
                 num_steps: int) -> dict[str, float]:
  """:func:`xla_counts` of the plain inner loop: a scan of ``num_steps`` steps of ``system.step``.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones((16, 16)),
    ...     lambda s, th, key: (jnp.tanh(th * s @ s), jnp.sum(s)), horizon=4)
    >>> metaopt.timing.plain_counts(system, jnp.float32(0.5), num_steps=4)["flops"] > 4 * 2 * 16**3
    True
  """
  state = system.init(jax.random.key(0), theta)
  keys = jax.random.split(jax.random.key(1), num_steps)
  return xla_counts(lambda s, k: jax.lax.scan(lambda s, k: system.step(s, theta, k), s, k),
                    state, keys, num_steps=num_steps)


def count_ratios(system: base.UnrolledSystem, theta: PyTree, est: base.Estimator, *,
                 num_steps: int, window: int | None = None,
                 plain: dict[str, float] | None = None) -> dict[str, float]:
  """An estimator's XLA FLOPs and bytes accessed per inner step, over the plain step's.

  The floor its measured ratio (:func:`seconds_per_step`) can be set against:
  the plain step is a scan of ``num_steps`` steps of ``system.step``, one
  ``est.unroll`` advances ``window`` steps (``num_steps`` if None), both counted
  by :func:`xla_counts`.

  Args:
    system: the unrolled inner problem.
    theta: the hyperparameters.
    est: the estimator.
    num_steps: the plain loop's length.
    window: inner steps one ``est.unroll`` advances (``num_steps`` if None).
    plain: :func:`plain_counts` of the same problem and ``num_steps``, when
      several estimators share it (counted here if None).

  Returns:
    ``{"flop_ratio": ..., "bytes_ratio": ...}``.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(lambda key, th: jnp.ones((16, 16)),
    ...     lambda s, th, key: (jnp.tanh(th * s @ s), jnp.sum(s)), horizon=4)
    >>> r = metaopt.timing.count_ratios(system, jnp.float32(0.5),
    ...                                 metaopt.tbptt(system, num_steps=4), num_steps=4)
    >>> 2.0 < r["flop_ratio"] < 4.0  # a VJP per step: about twice the step's matmuls again
    True
  """
  window = window or num_steps
  plain = plain or plain_counts(system, theta, num_steps=num_steps)
  counted = xla_counts(est.unroll, est.init(jax.random.key(0), theta), theta,
                       jax.random.key(1), num_steps=window)
  return {"flop_ratio": counted["flops"] / window / (plain["flops"] / num_steps),
          "bytes_ratio": (counted["bytes_accessed"] / window
                          / (plain["bytes_accessed"] / num_steps))}
