"""MLP classifiers of sampled width, activation and init scale on a fixed dataset (shared code)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt._src.core import base
from unrolled.families.base import TaskFamily

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "elu": jax.nn.elu}


def mlp_classifier_family(*, name: str, data: str, x_train: np.ndarray, y_train: np.ndarray,
                          x_test: np.ndarray, y_test: np.ndarray, widths: Sequence[int],
                          activations: Sequence[str], init_scales: tuple[float, float],
                          batch_size: int) -> TaskFamily:
  """One-hidden-layer MLP classifiers whose width, activation and init scale are sampled per task.

  Shapes are static: a task of width w uses the first w of ``max(widths)``
  hidden units (the rest are masked to zero in the forward pass, so their
  gradients are zero and they never affect the loss). The activation is
  picked by index; the init scale is log-uniform in ``init_scales`` times He's
  scale; the step key draws each minibatch (the data order).
  """
  widths = tuple(base.check_count(w, "widths") for w in widths)
  if not widths:
    raise ValueError("widths must name at least one width")
  unknown = sorted(set(activations) - set(ACTIVATIONS))
  if unknown or not activations:
    raise ValueError(f"activations must be among {sorted(ACTIVATIONS)}, got {list(activations)}")
  batch_size = base.check_count(batch_size, "batch_size")
  if not (isinstance(init_scales, (tuple, list)) and len(init_scales) == 2):
    raise ValueError(f"init_scales must be a pair (low, high), got {init_scales!r}")
  low, high = (base.check_float(s, "init_scales") for s in init_scales)
  if low > high:
    raise ValueError(f"init_scales must be (low, high) with low <= high, got {init_scales}")
  x_train, y_train = jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train, jnp.int32)
  x_test, y_test = jnp.asarray(x_test, jnp.float32), jnp.asarray(y_test, jnp.int32)
  num_inputs, num_classes = x_train.shape[1], int(max(y_train.max(), y_test.max())) + 1
  max_width = max(widths)
  width_table = jnp.asarray(widths, jnp.int32)
  functions = [ACTIVATIONS[a] for a in activations]

  def sample(key):
    k_width, k_act, k_scale = jax.random.split(key, 3)
    width = width_table[jax.random.randint(k_width, (), 0, len(widths))]
    return {"mask": (jnp.arange(max_width) < width).astype(jnp.float32),
            "activation": jax.random.randint(k_act, (), 0, len(functions)),
            "init_scale": jnp.exp(jax.random.uniform(k_scale, (), minval=np.log(low),
                                                     maxval=np.log(high)))}

  def init_params(task, key):
    k1, k2 = jax.random.split(key)
    scale = task["init_scale"]
    w1 = jax.random.normal(k1, (num_inputs, max_width)) * scale * np.sqrt(2.0 / num_inputs)
    fan_in = jnp.sum(task["mask"])
    w2 = jax.random.normal(k2, (max_width, num_classes)) * scale * jnp.sqrt(2.0 / fan_in)
    return {"hidden": {"w": w1 * task["mask"], "b": jnp.zeros(max_width)},
            "output": {"w": w2 * task["mask"][:, None], "b": jnp.zeros(num_classes)}}

  def logits(params, task, x):
    pre = x @ params["hidden"]["w"] + params["hidden"]["b"]
    h = jax.lax.switch(task["activation"], functions, pre) if len(functions) > 1 else (
        functions[0](pre))
    return (h * task["mask"]) @ params["output"]["w"] + params["output"]["b"]

  def cross_entropy(params, task, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(params, task, x), y))

  def loss(params, task, key):
    idx = jax.random.randint(key, (batch_size,), 0, x_train.shape[0])
    return cross_entropy(params, task, x_train[idx], y_train[idx])

  def evaluate(params, task):
    test_logits = logits(params, task, x_test)
    return {"train_loss": cross_entropy(params, task, x_train, y_train),
            "test_loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                test_logits, y_test)),
            "test_accuracy": jnp.mean(jnp.argmax(test_logits, -1) == y_test)}

  num_params = (num_inputs + 1) * max_width + (max_width + 1) * num_classes
  return TaskFamily(
      sample=sample, init_params=init_params, loss=loss, evaluate=evaluate, name=name,
      description=(f"{data}: MLPs {num_inputs}-w-{num_classes}, width w in {list(widths)}, "
                   f"activation in {list(activations)}, init scale log-uniform in "
                   f"[{low}, {high}] x He, batch {batch_size}, sampled data order "
                   f"({num_params} parameters at the widest)."))
