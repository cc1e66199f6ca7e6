"""Tuning's defaults and parts: the meta-optimiser's and validation's defaults, modes, run output.

:func:`metaopt.tune` and :func:`metaopt.tuner` are top level; these are the
values they default to, so that launch flags and studies share them, and
:class:`RunOutput`, where :func:`metaopt.tune` writes and how often.
"""

from metaopt._src.tuning.meta_optimizer import DEFAULT_DECAY_STEPS
from metaopt._src.tuning.meta_optimizer import DEFAULT_MAX_UPDATE
from metaopt._src.tuning.meta_optimizer import DEFAULT_META_LR
from metaopt._src.tuning.meta_optimizer import DEFAULT_WARMUP_STEPS
from metaopt._src.tuning.meta_optimizer import MetaOptimizer
from metaopt._src.tuning.options import RunOutput
from metaopt._src.tuning.tune import MODES
from metaopt._src.tuning.report import one_inner_state
from metaopt._src.tuning.validation import DEFAULT_SIGNIFICANCE
from metaopt._src.tuning.validation import DEFAULT_TRUST_RADIUS

__all__ = ("DEFAULT_DECAY_STEPS", "DEFAULT_MAX_UPDATE", "DEFAULT_META_LR", "DEFAULT_SIGNIFICANCE",
           "DEFAULT_TRUST_RADIUS", "DEFAULT_WARMUP_STEPS", "MetaOptimizer", "MODES", "one_inner_state",
           "RunOutput")
