"""MLPs of sampled width, activation and init on scikit-learn's bundled 8x8 digits."""

from __future__ import annotations

from typing import Sequence

from unrolled.digits_mlp import digits_data
from unrolled.families.base import TaskFamily
from unrolled.families.classifier import mlp_classifier_family


def digits_mlp(*, widths: Sequence[int] = (32, 64, 96),
               activations: Sequence[str] = ("relu", "tanh", "gelu", "elu"),
               init_scales: tuple[float, float] = (0.5, 2.0), batch_size: int = 128,
               seed: int = 0) -> TaskFamily:
  """Digits classifiers (1,438 training images; tested on the 359 held-out ones).

  Args:
    widths, activations, init_scales, batch_size: as for
      :func:`~unrolled.families.mnist1d_mlp`.
    seed: the train / test split.

  Examples:
    >>> import jax
    >>> from unrolled import families
    >>> family = families.digits_mlp(widths=(16,))
    >>> task = family.sample(jax.random.key(0))
    >>> sorted(family.evaluate(family.init_params(task, jax.random.key(1)), task))
    ['test_accuracy', 'test_loss', 'train_loss']
  """
  x_train, y_train, x_test, y_test = digits_data(seed)
  return mlp_classifier_family(
      name="digits_mlp", data="scikit-learn digits", x_train=x_train, y_train=y_train,
      x_test=x_test, y_test=y_test, widths=widths, activations=activations,
      init_scales=init_scales, batch_size=batch_size)
