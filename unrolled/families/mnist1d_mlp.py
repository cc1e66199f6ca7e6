"""MLPs of sampled width, activation and init on MNIST-1D (generated locally by ``mnist1d``)."""

from __future__ import annotations

from typing import Sequence

from unrolled.families.base import TaskFamily
from unrolled.families.classifier import mlp_classifier_family
from unrolled.mnist1d import mnist1d_data


def mnist1d_mlp(*, widths: Sequence[int] = (32, 64, 96),
                activations: Sequence[str] = ("relu", "tanh", "gelu", "elu"),
                init_scales: tuple[float, float] = (0.5, 2.0), batch_size: int = 128,
                seed: int = 0) -> TaskFamily:
  """MNIST-1D classifiers (3,200 training signals of length 40; tested on the 1,000 test signals).

  Args:
    widths: the hidden widths a task samples from (4,906 parameters at 96).
    activations: the activations a task samples from.
    init_scales: (low, high) of the log-uniform factor on He's init scale.
    batch_size: training minibatch size.
    seed: mnist1d's train / validation split (the validation split is unused here).

  Examples:
    >>> import jax
    >>> from unrolled import families
    >>> family = families.mnist1d_mlp()
    >>> task = family.sample(jax.random.key(0))
    >>> params = family.init_params(task, jax.random.key(1))
    >>> bool(family.loss(params, task, jax.random.key(2)) > 0)
    True
  """
  x_train, y_train, _, _, x_test, y_test = mnist1d_data(seed)
  return mlp_classifier_family(
      name="mnist1d_mlp", data="MNIST-1D", x_train=x_train, y_train=y_train, x_test=x_test,
      y_test=y_test, widths=widths, activations=activations, init_scales=init_scales,
      batch_size=batch_size)
