"""Task families for meta-training learned optimizers: one family a file.

A :class:`TaskFamily` samples a task (static shapes, so tasks vmap);
:func:`family_system` makes training a freshly sampled task with a learned
optimizer an :class:`~metaopt.UnrolledSystem` in the optimizer's weights.
"""

from unrolled.families.base import family_system
from unrolled.families.base import held_out_keys
from unrolled.families.base import TaskFamily
from unrolled.families.base import TaskState
from unrolled.families.base import TEST
from unrolled.families.base import VALIDATION
from unrolled.families.base import train_task
from unrolled.families.digits_mlp import digits_mlp
from unrolled.families.mnist1d_mlp import mnist1d_mlp
from unrolled.families.own_model import own_model
from unrolled.families.quadratic import quadratic

# name -> builder, for launch flags.
FAMILIES = {"quadratic": quadratic, "mnist1d_mlp": mnist1d_mlp, "digits_mlp": digits_mlp}

__all__ = ("digits_mlp", "FAMILIES", "family_system", "held_out_keys", "mnist1d_mlp",
           "own_model", "quadratic", "TaskFamily", "TaskState", "TEST", "train_task", "VALIDATION")
