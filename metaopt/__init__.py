"""metaopt: online hypergradients for hyperparameter and meta-optimisation in JAX.

The contract is :class:`UnrolledSystem` (an inner training loop) and
:class:`Estimator` (an ``init`` / ``unroll`` pair of pure functions that
estimates d(sum of losses)/d theta window by window).
"""

from metaopt._src import checkpoint
from metaopt._src.agent import agent_system
from metaopt._src.agent import AgentState
from metaopt._src.agent import AgentSystem
from metaopt._src import timing
from metaopt import learned_optimizers
from metaopt._src.real_time_ppo import Learner
from metaopt._src.real_time_ppo import real_time_ppo
from metaopt._src.real_time_ppo import RealTimePPOState
from metaopt._src.base import Estimator
from metaopt._src.base import full_unroll
from metaopt._src.base import UnrolledSystem
from metaopt._src.dense import dense_system
from metaopt._src.dense import DenseSystem
from metaopt._src.elementwise import cell_outputs
from metaopt._src.elementwise import elementwise_system
from metaopt._src.elementwise import ElementwiseCell
from metaopt._src.elementwise import ElementwiseSystem
from metaopt._src.elementwise import RecurrentState
from metaopt._src.forward_gradient import forward_gradient
from metaopt._src.forward_gradient import ForwardGradientState
from metaopt._src.nres import nres
from metaopt._src.nres import NRESState
from metaopt._src.pes import pes
from metaopt._src.pes import PESState
from metaopt._src.reinforce import reinforce
from metaopt._src.reinforce import ReinforceState
from metaopt._src.horizon import evaluate_horizon
from metaopt._src.horizon import exact_grad
from metaopt._src.horizon import sum_window_grads
from metaopt._src.horizon import window_keys
from metaopt._src.registry import ESTIMATOR_TABLE
from metaopt._src.registry import estimator_info
from metaopt._src.registry import estimator_options
from metaopt._src.registry import EstimatorInfo
from metaopt._src.registry import ESTIMATORS
from metaopt._src.registry import copies_per_step
from metaopt._src.registry import parse_spec
from metaopt._src.registry import get_estimator
from metaopt._src.registry import window_length
from metaopt._src.rtrl import rtrl
from metaopt._src.rtrl import RTRLState
from metaopt._src.rtrl_elementwise import rtrl_elementwise
from metaopt._src.rtrl_elementwise import RTRLElementwiseState
from metaopt._src.tbptt import full_bptt
from metaopt._src.tbptt import tbptt
from metaopt._src.tbptt import TBPTTState
from metaopt._src.truncated_es import truncated_es
from metaopt._src.truncated_es import TruncatedESState
from metaopt._src.sharding import shard_leading
from metaopt._src.files import FolderLock
from metaopt._src.files import FolderLockedError
from metaopt._src.files import lock_folder
from metaopt._src.files import make_folder
from metaopt._src.files import refuse_links
from metaopt._src.files import remove_stale_temporaries
from metaopt._src.files import write_atomic
from metaopt._src.memory import available_bytes
from metaopt._src.memory import check_memory
from metaopt._src.memory import state_bytes
from metaopt._src.summary import coordinate_names
from metaopt._src.summary import log_hyperparameters
from metaopt._src.summary import log_schedule_curves
from metaopt._src.summary import log_tuner_info
from metaopt._src.summary import schedule_points
from metaopt._src.summary import snr
from metaopt._src.summary import SummaryWriter
from metaopt._src.summary import tuner_layout
from metaopt._src.meta_optimizer import META_OPTIMIZERS
from metaopt._src.meta_optimizer import meta_optimizer
from metaopt._src.meta_optimizer import DEFAULT_DECAY_STEPS
from metaopt._src.meta_optimizer import DEFAULT_MAX_UPDATE
from metaopt._src.meta_optimizer import DEFAULT_META_LR
from metaopt._src.meta_optimizer import DEFAULT_WARMUP_STEPS
from metaopt._src.tune import MODES
from metaopt._src.tune import one_inner_state
from metaopt._src.tune import RunFolderError
from metaopt._src.tune import tune
from metaopt._src.tune import TuneResult
from metaopt._src.tune import TuningStopped
from metaopt._src.tuner import Tuner
from metaopt._src.tuner import tuner
from metaopt._src.tuner import TunerState
from metaopt._src.tuner import DEFAULT_SIGNIFICANCE
from metaopt._src.tuner import DEFAULT_TRUST_RADIUS
from metaopt._src.tuner import Validation
from metaopt._src.tuner import validation
from metaopt._src.uoro import uoro
from metaopt._src.uoro import UOROState
from metaopt._src.uoro_preactivation import uoro_preactivation
from metaopt._src.uoro_preactivation import UOROPreactivationState
from metaopt._src.window import split_window_key
from metaopt._src.window import WindowKeys
from metaopt._src.window import windowed

__version__ = "0.1.0"

__all__ = (
    "Learner",
    "real_time_ppo",
    "RealTimePPOState",
    "agent_system",
    "AgentState",
    "AgentSystem",
    "available_bytes",
    "cell_outputs",
    "check_memory",
    "checkpoint",
    "coordinate_names",
    "copies_per_step",
    "DenseSystem",
    "dense_system",
    "ElementwiseCell",
    "elementwise_system",
    "ElementwiseSystem",
    "Estimator",
    "FolderLock",
    "FolderLockedError",
    "ESTIMATOR_TABLE",
    "estimator_info",
    "estimator_options",
    "EstimatorInfo",
    "ESTIMATORS",
    "evaluate_horizon",
    "exact_grad",
    "full_bptt",
    "forward_gradient",
    "ForwardGradientState",
    "full_unroll",
    "get_estimator",
    "learned_optimizers",
    "lock_folder",
    "log_hyperparameters",
    "log_schedule_curves",
    "log_tuner_info",
    "make_folder",
    "META_OPTIMIZERS",
    "meta_optimizer",
    "DEFAULT_DECAY_STEPS",
    "DEFAULT_MAX_UPDATE",
    "DEFAULT_META_LR",
    "DEFAULT_WARMUP_STEPS",
    "DEFAULT_SIGNIFICANCE",
    "DEFAULT_TRUST_RADIUS",
    "one_inner_state",
    "MODES",
    "nres",
    "NRESState",
    "parse_spec",
    "pes",
    "PESState",
    "RecurrentState",
    "refuse_links",
    "reinforce",
    "remove_stale_temporaries",
    "ReinforceState",
    "rtrl",
    "RunFolderError",
    "rtrl_elementwise",
    "RTRLElementwiseState",
    "RTRLState",
    "schedule_points",
    "shard_leading",
    "snr",
    "split_window_key",
    "state_bytes",
    "sum_window_grads",
    "SummaryWriter",
    "tbptt",
    "tuner_layout",
    "TBPTTState",
    "timing",
    "truncated_es",
    "TruncatedESState",
    "tune",
    "Tuner",
    "tuner",
    "TunerState",
    "Validation",
    "validation",
    "TuneResult",
    "TuningStopped",
    "UnrolledSystem",
    "uoro",
    "UOROState",
    "uoro_preactivation",
    "UOROPreactivationState",
    "window_keys",
    "windowed",
    "window_length",
    "WindowKeys",
    "write_atomic",
)
