"""metaopt: online hypergradients for hyperparameter and meta-optimisation in JAX.

The contract is :class:`UnrolledSystem` (an inner training loop) and
:class:`Estimator` (an ``init`` / ``unroll`` pair of pure functions that
estimates d(sum of losses)/d theta window by window). The top level holds the
contract, the estimators and their states, the estimator table, the tuner,
:func:`tune` and the meta-optimiser. The rest is in sub-namespaces:

- :mod:`metaopt.learned_optimizers`: optax transformations whose weights are theta;
- :mod:`metaopt.recurrent`: dense and element-wise recurrent systems;
- :mod:`metaopt.rl`: online actor-critic agents and real-time PPO;
- :mod:`metaopt.tensorboard`: TensorBoard files and the tuner's views;
- :mod:`metaopt.files` and :mod:`metaopt.checkpoint`: run folders and checkpoints;
- :mod:`metaopt.timing` and :mod:`metaopt.devices`: cost, sharding and memory;
- :mod:`metaopt.horizon`: window keys, window lengths, whole-horizon evaluation;
- :mod:`metaopt.tuning`: tuning's defaults and options.
"""

import importlib as _importlib
import warnings as _warnings

from metaopt import checkpoint
from metaopt import devices
from metaopt import files
from metaopt import horizon
from metaopt import learned_optimizers
from metaopt import recurrent
from metaopt import rl
from metaopt import tensorboard
from metaopt import timing
from metaopt import tuning
from metaopt._src.core.base import Estimator
from metaopt._src.core.base import full_unroll
from metaopt._src.core.base import UnrolledSystem
from metaopt._src.core.horizon import exact_grad
from metaopt._src.core.horizon import sum_window_grads
from metaopt._src.core.window import windowed
from metaopt._src.estimators.forward_gradient import forward_gradient
from metaopt._src.estimators.forward_gradient import ForwardGradientState
from metaopt._src.estimators.nres import nres
from metaopt._src.estimators.nres import NRESState
from metaopt._src.estimators.pes import pes
from metaopt._src.estimators.pes import PESState
from metaopt._src.estimators.registry import ESTIMATOR_TABLE
from metaopt._src.estimators.registry import estimator_info
from metaopt._src.estimators.registry import estimator_options
from metaopt._src.estimators.registry import EstimatorInfo
from metaopt._src.estimators.registry import ESTIMATORS
from metaopt._src.estimators.registry import get_estimator
from metaopt._src.estimators.registry import parse_spec
from metaopt._src.estimators.reinforce import reinforce
from metaopt._src.estimators.reinforce import ReinforceState
from metaopt._src.estimators.rtrl import rtrl
from metaopt._src.estimators.rtrl import RTRLState
from metaopt._src.estimators.rtrl_elementwise import rtrl_elementwise
from metaopt._src.estimators.rtrl_elementwise import RTRLElementwiseState
from metaopt._src.estimators.tbptt import full_bptt
from metaopt._src.estimators.tbptt import tbptt
from metaopt._src.estimators.tbptt import TBPTTState
from metaopt._src.estimators.truncated_es import truncated_es
from metaopt._src.estimators.truncated_es import TruncatedESState
from metaopt._src.estimators.uoro import uoro
from metaopt._src.estimators.uoro import UOROState
from metaopt._src.estimators.uoro_preactivation import uoro_preactivation
from metaopt._src.estimators.uoro_preactivation import UOROPreactivationState
from metaopt._src.tuning.meta_optimizer import META_OPTIMIZERS
from metaopt._src.tuning.meta_optimizer import meta_optimizer
from metaopt._src.tuning.tune import tune
from metaopt._src.tuning.tune import TuneResult
from metaopt._src.tuning.tune import TuningStopped
from metaopt._src.tuning.tuner import Tuner
from metaopt._src.tuning.tuner import tuner
from metaopt._src.tuning.tuner import TunerState
from metaopt._src.tuning.validation import Validation
from metaopt._src.tuning.validation import validation

__version__ = "0.1.0"

__all__ = (
    # The contract.
    "Estimator",
    "exact_grad",
    "full_unroll",
    "sum_window_grads",
    "UnrolledSystem",
    "windowed",
    # The estimators and their states.
    "forward_gradient",
    "ForwardGradientState",
    "full_bptt",
    "nres",
    "NRESState",
    "pes",
    "PESState",
    "reinforce",
    "ReinforceState",
    "rtrl",
    "rtrl_elementwise",
    "RTRLElementwiseState",
    "RTRLState",
    "tbptt",
    "TBPTTState",
    "truncated_es",
    "TruncatedESState",
    "uoro",
    "uoro_preactivation",
    "UOROPreactivationState",
    "UOROState",
    # The estimator table.
    "ESTIMATOR_TABLE",
    "estimator_info",
    "estimator_options",
    "EstimatorInfo",
    "ESTIMATORS",
    "get_estimator",
    "parse_spec",
    # Tuning.
    "META_OPTIMIZERS",
    "meta_optimizer",
    "tune",
    "TuneResult",
    "Tuner",
    "tuner",
    "TunerState",
    "TuningStopped",
    "Validation",
    "validation",
)

# Names that moved to a sub-namespace: they keep working, with a warning, for one release.
_MOVED = {
    **{name: "recurrent" for name in recurrent.__all__},
    **{name: "rl" for name in rl.__all__},
    **{name: "tensorboard" for name in tensorboard.__all__},
    **{name: "files" for name in files.__all__},
    **{name: "devices" for name in devices.__all__},
    **{name: "horizon" for name in horizon.__all__},
    **{name: "tuning" for name in tuning.__all__ if name not in ("MetaOptimizer", "RunOutput")},
}


def __getattr__(name: str):
  # optax's deprecation pattern: a module __getattr__ that warns with the new name.
  if name in _MOVED:
    new = f"metaopt.{_MOVED[name]}.{name}"
    _warnings.warn(f"metaopt.{name} has moved to {new}; the old name will be removed in the next "
                   "release", DeprecationWarning, stacklevel=2)
    return getattr(_importlib.import_module(f"metaopt.{_MOVED[name]}"), name)
  raise AttributeError(f"module 'metaopt' has no attribute {name!r}")
