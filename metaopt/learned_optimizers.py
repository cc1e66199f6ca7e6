"""Learned optimizers: optax transformations whose weights are theta, meta-trained over tasks.

Build one, draw its weights with ``init(key)``, and get an optax transformation
with ``optimizer(theta)``; ``unrolled.families`` and ``launch.meta_train``
meta-train theta with the ES estimators or truncated BPTT.
"""

from metaopt._src.learned_optimizers.adam import learnable_adam
from metaopt._src.learned_optimizers.base import LearnedOptimizer
from metaopt._src.learned_optimizers.base import num_weights
from metaopt._src.learned_optimizers.mlp import DEFAULT_DECAYS
from metaopt._src.learned_optimizers.mlp import DEFAULT_HIDDEN
from metaopt._src.learned_optimizers.mlp import DEFAULT_TIMESCALES
from metaopt._src.learned_optimizers.mlp import mlp_lopt
from metaopt._src.learned_optimizers.mlp import MLPLOptState
from metaopt._src.learned_optimizers.sgd import learnable_sgd

# name -> builder, for launch flags.
LEARNED_OPTIMIZERS = {"mlp_lopt": mlp_lopt, "learnable_adam": learnable_adam,
                      "learnable_sgd": learnable_sgd}

__all__ = ("DEFAULT_DECAYS", "DEFAULT_HIDDEN", "DEFAULT_TIMESCALES", "LEARNED_OPTIMIZERS",
           "LearnedOptimizer", "learnable_adam", "learnable_sgd", "mlp_lopt", "MLPLOptState",
           "num_weights")
