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
