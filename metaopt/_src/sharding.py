"""Independent copies (particles, chains, tangents, samples) spread over all local devices."""

from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from metaopt._src import base

AXIS = "copies"
_suspended = [0]  # > 0 while an enclosing vmap's axis is the one spread over devices


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
  return Mesh(np.array(devices), (AXIS,))


def shard_leading(tree: base.PyTree) -> base.PyTree:
  """Splits the leading axis of every array leaf over the local devices.

  A sharding constraint, not a copy: inside ``jit`` it tells XLA to lay the
  independent copies (ES particles, tuner chains, RTRL tangents, study
  samples) out across devices, so each device runs its share of the vmapped
  work. No-op with one device, for scalars, for leaves whose leading axis
  does not divide evenly over the devices, and inside :func:`outer_axis`. The values are unchanged:
  results equal a one-device run up to the order of float reductions.
  """
  devices = tuple(jax.devices())
  if len(devices) == 1 or _suspended[0]:
    return tree
  sharding = NamedSharding(_mesh(devices), PartitionSpec(AXIS))

  def constrain(x):
    if (not hasattr(x, "ndim") or x.ndim == 0 or x.shape[0] % len(devices)
        or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)):
      return x
    return jax.lax.with_sharding_constraint(x, sharding)

  return jax.tree.map(constrain, tree)


def spreads(size: int) -> bool:
  """Whether a leading axis of this size is split over the devices (more than one, dividing it)."""
  count = jax.device_count()
  return count > 1 and size % count == 0


@contextlib.contextmanager
def outer_axis(size: int):
  """Traces the body with the inner shard_leading calls off, if an outer axis of ``size`` is spread.

  The tuner vmaps estimators over chains: when the chains are spread over the
  devices, the estimator's own particle or tangent axis must not be spread
  too (two layouts would make XLA move data between devices every window).
  """
  if not spreads(size):
    yield
    return
  _suspended[0] += 1
  try:
    yield
  finally:
    _suspended[0] -= 1
