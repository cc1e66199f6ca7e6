"""Devices: chains sharded over every device, the memory an estimator's state needs, and JAX's
persistent compilation cache."""

from metaopt._src.devices.compilation_cache import compilation_cache_folder
from metaopt._src.devices.compilation_cache import use_compilation_cache
from metaopt._src.devices.memory import available_bytes
from metaopt._src.devices.memory import check_memory
from metaopt._src.devices.memory import state_bytes
from metaopt._src.devices.sharding import shard_leading

__all__ = ("available_bytes", "check_memory", "compilation_cache_folder", "shard_leading",
           "state_bytes", "use_compilation_cache")
