"""Checkpoints of pytrees that carry the run's configuration (a resume of another run is refused)."""

from metaopt._src.files.checkpoint import canonical_json
from metaopt._src.files.checkpoint import CheckpointError
from metaopt._src.files.checkpoint import fingerprint
from metaopt._src.files.checkpoint import restore
from metaopt._src.files.checkpoint import save

__all__ = ("canonical_json", "CheckpointError", "fingerprint", "restore", "save")
