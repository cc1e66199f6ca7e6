"""Independent copies (particles, chains, tangents, samples) spread over all local devices."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from metaopt._src.core import base

AXIS = "copies"


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
  return Mesh(np.array(devices), (AXIS,))


def shard_leading(tree: base.PyTree, *, spread: bool = True) -> base.PyTree:
  """Splits the leading axis of every array leaf over the local devices.

  A sharding constraint, not a copy: inside ``jit`` it tells XLA to lay the
  independent copies (ES particles, tuner chains, RTRL tangents, study
  samples) out across devices, so each device runs its share of the vmapped
  work. No-op with ``spread=False``, with one device, for scalars and for
  leaves whose leading axis does not divide evenly over the devices. The
  values are unchanged: results equal a one-device run up to the order of
  float reductions.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> metaopt.devices.shard_leading(jnp.zeros((8, 3))).shape
    (8, 3)
  """
  devices = tuple(jax.devices())
  if not spread or len(devices) == 1:
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
