"""Memory estimates checked before anything is allocated, so absurd sizes fail in a second."""

from __future__ import annotations

import math

import jax

from metaopt._src.core import base


def state_bytes(estimator: base.Estimator, theta, *, num_chains: int = 1) -> int:
  """Bytes of ``num_chains`` copies of ``estimator``'s state for ``theta``, from shapes alone.

  The state's shapes come from :func:`jax.eval_shape` of ``estimator.init``: no
  array is allocated and no FLOP is spent.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> from unrolled import toy_regression
    >>> problem = toy_regression()
    >>> est = metaopt.rtrl(problem.system, num_steps=10)
    >>> metaopt.devices.state_bytes(est, problem.theta, num_chains=4) > 0
    True
  """
  shapes = jax.eval_shape(estimator.init, jax.random.key(0), theta)
  one = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  return int(one) * int(num_chains)


def available_bytes(device: jax.Device | None = None) -> int | None:
  """Memory the computation may use: the accelerator's limit, else the host's available memory.

  Returns None where neither can be read.
  """
  device = device or jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # CPU backends may not implement it
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_memory(estimator: base.Estimator, theta, *, num_chains: int = 1,
                 what: str = "num_chains", working_factor: float = 4.0) -> int:
  """Raises ``ValueError`` if the estimator's states (times a working factor) cannot fit.

  A window's working memory (activations kept for backpropagation, the tuner's
  copies) is a small multiple of the state, so ``working_factor`` times the
  states' bytes is compared with :func:`available_bytes`. The check costs no
  compute: use it before ``init`` to reject ``num_chains=10**9`` at once
  rather than after minutes of swapping.

  Args:
    estimator: the estimator whose state is counted.
    theta: the hyperparameters (only shapes and dtypes are read).
    num_chains: independent copies of the state.
    what: the option named in the error (e.g. ``"--num_chains"``).
    working_factor: multiple of the states' bytes taken as the run's need.

  Returns:
    The estimated bytes.

  Raises:
    ValueError: naming ``what``, the estimate and the available memory.

  Examples:
    >>> import metaopt
    >>> from unrolled import toy_regression
    >>> problem = toy_regression()
    >>> est = metaopt.rtrl(problem.system, num_steps=10)
    >>> metaopt.devices.check_memory(est, problem.theta, num_chains=10**12)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: num_chains=1000000000000 needs about ...
  """
  need = int(working_factor * state_bytes(estimator, theta, num_chains=num_chains))
  have = available_bytes()
  if have is not None and need > have:
    raise ValueError(f"{what}={num_chains} needs about {_human(need)} of memory for the "
                     f"estimator states alone; {_human(have)} is available: lower it")
  return need


def _human(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
    if n < 1024 or unit == "PB":
      return f"{n:.3g} {unit}"
    n /= 1024
  return f"{n:.3g} PB"
