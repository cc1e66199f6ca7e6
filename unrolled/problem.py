"""What every inner problem returns."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import metaopt


class Problem(NamedTuple):
  """An inner problem, ready for an estimator.

  Attributes:
    system: the :class:`metaopt.UnrolledSystem`.
    theta: the initial hyperparameters (unconstrained, e.g. log learning rate).
    description: one short paragraph: what it is and where it comes from.
    hyperparameters: ``hyperparameters(theta) -> dict`` of theta in natural
      units (a learning rate, not its log; a schedule as its curve over the
      horizon), for logs and summaries.
    evaluate: optional ``evaluate(inner_state) -> dict`` of scalars (e.g.
      validation loss and accuracy of the trained parameters).
    num_params: how many numbers the inner loop trains (the model's weights,
      not optimiser slots such as momentum, nor theta); None where unknown.
  """
  system: metaopt.UnrolledSystem
  theta: Any
  description: str
  hyperparameters: Callable[[Any], dict]
  evaluate: Callable[[Any], dict] | None = None
  num_params: int | None = None


def tune_problem(problem: Problem, **options) -> metaopt.TuneResult:
  """``metaopt.tune`` on a problem: its system, theta, evaluation, natural units and description.

  Args:
    problem: an :class:`Problem` (from :func:`~unrolled.get`,
      :func:`~unrolled.optax_problem` or a factory of your own).
    **options: ``metaopt.tune``'s keyword options (``estimator``,
      ``num_steps``, ``outer_steps``, ``logdir``, ...).

  Returns:
    The ``metaopt.TuneResult``.

  Examples:
    >>> import unrolled
    >>> result = unrolled.tune_problem(unrolled.get("influence_balancing", horizon=20),
    ...                                estimator="rtrl", num_steps=5, meta_optimizer="sgd",
    ...                                meta_lr=1e-4, outer_steps=8, verbose=False)
    >>> float(result.theta) < 0.5  # towards the long-horizon optimum -1/6
    True
  """
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an unrolled.Problem, got {type(problem).__name__}")
  return metaopt.tune(problem.system, problem.theta, evaluate=problem.evaluate,
                      hyperparameters=problem.hyperparameters,
                      description=problem.description, **options)
