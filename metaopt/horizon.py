"""Window and horizon helpers: the keys of each window, window lengths, whole-horizon evaluation.

:func:`metaopt.exact_grad` and :func:`metaopt.sum_window_grads` (top level)
check an estimator against ``jax.grad``; these are their building blocks and
the estimator table's sizes.
"""

from metaopt._src.core.horizon import evaluate_horizon
from metaopt._src.core.horizon import window_keys
from metaopt._src.core.window import split_window_key
from metaopt._src.core.window import WindowKeys
from metaopt._src.estimators.registry import copies_per_step
from metaopt._src.estimators.registry import window_length

__all__ = ("copies_per_step", "evaluate_horizon", "split_window_key", "window_keys",
           "window_length", "WindowKeys")
