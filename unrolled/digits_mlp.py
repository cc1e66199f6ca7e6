"""An MLP classifier on scikit-learn's bundled digits, trained by optax, schedule tuned by theta."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unrolled import optax_adapter
from unrolled import schedules
from unrolled.problem import Problem

SCHEDULES = ("constant", "piecewise_linear", "warmup_cosine", "exponential_decay", "per_step")
OPTIMIZERS = ("sgd_momentum", "adam")


@functools.lru_cache(maxsize=4)
def digits_data(seed: int = 0, validation_fraction: float = 0.2):
  """The 1,797 8x8 digits, split (seeded) into train and validation, standardised on train.

  Returns (x_train, y_train, x_val, y_val) as numpy arrays; nothing is downloaded.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  x, y = data.data.astype(np.float32), data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  num_val = int(round(validation_fraction * len(x)))
  val, train = order[:num_val], order[num_val:]
  mean, std = x[train].mean(0), x[train].std(0)
  x = (x - mean) / (std + 1e-3)  # some border pixels are constant
  return x[train], y[train], x[val], y[val]


def mlp_init(key, sizes):
  params = []
  for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append((jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), jnp.zeros(n)))
  return params


def mlp_logits(params, x):
  for w, b in params[:-1]:
    x = jax.nn.relu(x @ w + b)
  w, b = params[-1]
  return x @ w + b


def cross_entropy(params, batch):
  x, y = batch
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mlp_logits(params, x), y))


def digits_mlp(*, width: int = 128, depth: int = 2, optimizer: str = "sgd_momentum",
               learning_rate: float = 0.05, schedule: str = "constant", num_knots: int = 5,
               warmup_steps: int = 10, momentum: float = 0.9, tune_momentum: bool = False,
               weight_decay: float | None = None, tune_init_scale: bool = False,
               per_layer: bool = False, horizon: int = 300, batch_size: int = 128,
               meta_loss: str = "validation", seed: int = 0) -> Problem:
  """Digits classification with an MLP: tune the learning-rate schedule (and more) online.

  Args:
    width: hidden units per layer.
    depth: hidden layers (parameters: ~5k at width 64 depth 1, 26k at 128 x 2, ~1M at 700 x 3).
    optimizer: ``"sgd_momentum"`` or ``"adam"`` (with eps_root=1e-16).
    learning_rate: initial learning rate (the schedule's starting level or peak).
    schedule: one of ``SCHEDULES``.
    num_knots: knots of the piecewise-linear schedule.
    warmup_steps: warm-up of the warmup_cosine schedule.
    momentum: SGD momentum (or Adam's b1).
    tune_momentum: make the momentum (b1 for Adam) a hyperparameter (logit).
    weight_decay: if given, an L2 weight decay tuned as its log.
    tune_init_scale: make a multiplier of the initial weights a hyperparameter.
    per_layer: the learning rate (constant schedules) or schedule is per layer.
    horizon: inner steps before the network is re-initialised.
    batch_size: training minibatch size.
    meta_loss: ``"validation"`` (loss on the whole validation split after
      each step) or ``"train"``.
    seed: the train/validation split.

  Returns:
    A :class:`Problem` whose ``num_params`` counts the MLP's weights and biases
    (26,122 at 128 x 2), not the optimiser's slots.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
  for name, value in [("width", width), ("depth", depth), ("batch_size", batch_size),
                      ("horizon", horizon)]:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  x_train, y_train, x_val, y_val = digits_data(seed)
  x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
  validation = (jnp.asarray(x_val), jnp.asarray(y_val))
  sizes = (64,) + (width,) * depth + (10,)

  if optimizer == "adam":
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, b1=momentum,
                                               eps_root=1e-16)
    momentum_name = "b1"
  else:
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate, momentum=momentum)
    momentum_name = "momentum"

  make_schedule = {
      "constant": lambda: None,
      "piecewise_linear": lambda: schedules.piecewise_linear_log(
          learning_rate, num_knots=num_knots, horizon=horizon),
      "warmup_cosine": lambda: schedules.warmup_cosine(
          learning_rate, learning_rate / 10, warmup_steps=warmup_steps, horizon=horizon),
      "exponential_decay": lambda: schedules.exponential_decay(learning_rate, 0.995),
      "per_step": lambda: schedules.per_step(learning_rate, horizon=horizon),
  }[schedule]()
  spec = {"learning_rate": (optax_adapter.log(learning_rate, per_group=per_layer)
                            if make_schedule is None
                            else optax_adapter.scheduled(make_schedule, per_group=per_layer))}
  if tune_momentum:
    spec[momentum_name] = optax_adapter.logit(momentum)
  if weight_decay is not None:
    spec["weight_decay"] = optax_adapter.log(weight_decay)
  if tune_init_scale:
    spec["init_scale"] = optax_adapter.log(1.0)

  def sample_batch(key):
    idx = jax.random.randint(key, (batch_size,), 0, x_train.shape[0])
    return x_train[idx], y_train[idx]

  num_params = sum(m * n + n for m, n in zip(sizes[:-1], sizes[1:]))
  accuracy = lambda params: {"validation_accuracy": jnp.mean(
      jnp.argmax(mlp_logits(params, validation[0]), -1) == validation[1])}
  return optax_adapter.optax_problem(
      loss_fn=cross_entropy, sample_batch=sample_batch,
      init_params=lambda key: mlp_init(key, sizes), optimizer=opt, hyperparams=spec,
      horizon=horizon, validation_batch=validation, meta_loss=meta_loss, metrics=accuracy,
      description=(f"Digits MLP {'-'.join(map(str, sizes))} ({num_params} parameters), "
                   f"{optimizer}, {schedule} learning-rate schedule, horizon {horizon}, "
                   f"batch {batch_size}, meta-loss {meta_loss}."))
