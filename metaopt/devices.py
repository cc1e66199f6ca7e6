"""Devices: chains sharded over every device, and the memory an estimator's state needs."""

from metaopt._src.devices.memory import available_bytes
from metaopt._src.devices.memory import check_memory
from metaopt._src.devices.memory import state_bytes
from metaopt._src.devices.sharding import shard_leading

__all__ = ("available_bytes", "check_memory", "shard_leading", "state_bytes")
