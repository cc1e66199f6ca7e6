"""Inner problems as ``metaopt.UnrolledSystem`` instances, plus the optax adapter and learnable schedules.

Select problems by name with :func:`get` and :func:`names`.
"""

from unrolled import families
from unrolled import schedules
from unrolled.digits_mlp import digits_data
from unrolled.digits_mlp import digits_mlp
from unrolled.influence_balancing import influence_balancing
from unrolled.optax_adapter import Hyperparameter
from unrolled.optax_adapter import initial_theta
from unrolled.optax_adapter import log
from unrolled.optax_adapter import logit
from unrolled.optax_adapter import natural_values
from unrolled.optax_adapter import num_groups
from unrolled.optax_adapter import optax_problem
from unrolled.optax_adapter import optax_system
from unrolled.optax_adapter import OptaxState
from unrolled.optax_adapter import scheduled
from unrolled.problem import Problem
from unrolled.problem import tune_problem
from unrolled.problem import validation
from unrolled.registry import get
from unrolled.registry import names
from unrolled.registry import options
from unrolled.registry import parse_options
from unrolled.registry import ProblemError
from unrolled.registry import register
from unrolled.toy_regression import toy_regression

__all__ = (
    "digits_data", "digits_mlp", "families", "get", "Hyperparameter", "influence_balancing", "initial_theta",
    "log", "logit", "names", "natural_values", "num_groups", "optax_problem", "optax_system",
    "OptaxState", "options", "parse_options", "Problem", "ProblemError", "register", "scheduled",
    "schedules", "toy_regression", "tune_problem", "validation",
)
