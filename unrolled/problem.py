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
      horizon), for logs and summaries. jnp code is jitted with the logging;
      code that converts theta with numpy works too (called on host values).
    evaluate: optional ``evaluate(inner_state) -> dict`` of scalars (e.g.
      validation loss and accuracy of the trained parameters).
    num_params: how many numbers the inner loop trains (the model's weights,
      not optimiser slots such as momentum, nor theta); None where unknown.
    validation_losses: optional ``validation_losses(inner_state) -> (n,)``,
      the trained model's loss on each validation example (the same examples
      every call): the paired acceptance test of ``metaopt.Validation``
      compares thetas with it, beyond the validation's noise.
  """
  system: metaopt.UnrolledSystem
  theta: Any
  description: str
  hyperparameters: Callable[[Any], dict]
  evaluate: Callable[[Any], dict] | None = None
  num_params: int | None = None
  validation_losses: Callable[[Any], Any] | None = None


def validation(problem: Problem, *, every: int | None = None, seed: int = 1,
               significance: float = metaopt.tuning.DEFAULT_SIGNIFICANCE,
               radius: float | None = metaopt.tuning.DEFAULT_TRUST_RADIUS) -> metaopt.Validation:
  """The online tuner's drift guard for a problem: ``metaopt.validation`` of its system, scored by
  the final model's per-example validation losses where the problem has them
  (``Problem.validation_losses``: the paired test), else by the meta-loss of the last tenth,
  with a trust region of ``radius`` around the best validated theta (theta is in log / logit
  units here).

  Args:
    problem: the :class:`Problem`.
    every: outer steps between validations (None: one horizon, set by ``metaopt.tune``).
    seed: the validation run's key (``metaopt.tune`` compares on ``seed + 1`` of its own).
    significance: standard errors a theta must win or lose by (``metaopt.Validation``).
    radius: the trust region's radius per coordinate of theta (None: none).

  Examples:
    >>> import unrolled
    >>> check = unrolled.validation(unrolled.get("digits_mlp", horizon=20))
    >>> check.every is None and check.significance == 3.0 and check.radius == 0.5
    True
  """
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an unrolled.Problem, got {type(problem).__name__}")
  losses = problem.validation_losses
  score = None if losses is None else (lambda final, _: losses(final))
  return metaopt.validation(problem.system, every=every, seed=seed, score=score,
                            significance=significance, radius=radius)


def tune_problem(problem: Problem, **options) -> metaopt.TuneResult:
  """``metaopt.tune`` on a problem: its system, theta, evaluation, natural units, description
  and validation (:func:`validation`: its per-example validation losses, where it has them).

  Args:
    problem: an :class:`Problem` (from :func:`~unrolled.get`,
      :func:`~unrolled.optax_problem` or a factory of your own).
    **options: ``metaopt.tune``'s keyword options (``estimator``,
      ``num_steps``, ``meta_optimizer``, ``output``, ...).

  Returns:
    The ``metaopt.TuneResult``.

  Examples:
    >>> import metaopt, unrolled
    >>> result = unrolled.tune_problem(unrolled.get("influence_balancing", horizon=20),
    ...                                estimator="rtrl", num_steps=5, outer_steps=8,
    ...                                meta_optimizer=metaopt.meta_optimizer("sgd", 1e-4),
    ...                                verbose=False)
    >>> float(result.theta) < 0.5  # towards the long-horizon optimum -1/6
    True
  """
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an unrolled.Problem, got {type(problem).__name__}")
  if options.get("validation", True) is True:  # the problem's own validation losses
    options["validation"] = validation(problem, seed=(options.get("seed", 0) + 1) % 2**32)
  return metaopt.tune(problem.system, problem.theta, evaluate=problem.evaluate,
                      hyperparameters=problem.hyperparameters,
                      description=problem.description, **options)
