"""Cost of estimators: interleaved wall-clock medians, compile time, peak memory, step breakdown,
XLA's FLOP and bytes counts."""

from metaopt._src.devices.counts import count_ratios
from metaopt._src.devices.counts import plain_counts
from metaopt._src.devices.counts import xla_counts
from metaopt._src.devices.timing import compile_seconds
from metaopt._src.devices.timing import estimator_runner
from metaopt._src.devices.timing import interleaved_medians
from metaopt._src.devices.timing import peak_bytes
from metaopt._src.devices.timing import plain_runner
from metaopt._src.devices.timing import plain_step_seconds
from metaopt._src.devices.timing import seconds_per_step
from metaopt._src.devices.timing import step_breakdown

__all__ = ("compile_seconds", "count_ratios", "estimator_runner", "interleaved_medians",
           "peak_bytes", "plain_counts", "plain_runner", "plain_step_seconds", "seconds_per_step",
           "step_breakdown", "xla_counts")
