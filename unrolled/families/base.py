"""The task-family contract, and the inner loop a learned optimizer drives over a family."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import metaopt
from metaopt import learned_optimizers
from metaopt._src.core import base


class TaskFamily(NamedTuple):
  """A distribution over training tasks with static shapes (so tasks vmap and jit together).

  Attributes:
    sample: ``sample(key) -> task``, a pytree of arrays: what varies between
      tasks (a target, a width mask, an activation's index, an init scale).
    init_params: ``init_params(task, key) -> params``.
    loss: ``loss(params, task, key) -> scalar``, the training loss of one
      step (``key`` draws the minibatch: the data order).
    evaluate: ``evaluate(params, task) -> dict`` of scalars of trained
      parameters; ``"train_loss"`` is the full training loss, what
      meta-training is judged by.
    name: the family's name.
    description: one paragraph for logs.
  """
  sample: Callable[[jax.Array], Any]
  init_params: Callable[[Any, jax.Array], Any]
  loss: Callable[[Any, Any, jax.Array], jax.Array]
  evaluate: Callable[[Any, Any], dict]
  name: str
  description: str


class TaskState(NamedTuple):
  """Inner state of a :func:`family_system`: the sampled task and its training."""
  task: Any
  params: Any
  opt_state: Any
  step: jax.Array


def family_system(family: TaskFamily, learned_optimizer: learned_optimizers.LearnedOptimizer, *,
                  horizon: int) -> metaopt.UnrolledSystem:
  """Training a task of ``family`` with the learned optimizer, as an unrolled system in its weights.

  ``init(key, theta)`` samples a fresh task from the family (so every horizon
  trains a new task), its initial parameters and the optimizer's state;
  ``step`` is one update by ``learned_optimizer.optimizer(theta)``, and its
  loss is the step's training minibatch loss before the update (the
  meta-loss of learned_optimization: the mean training loss over the horizon).

  Args:
    family: the :class:`TaskFamily`.
    learned_optimizer: a :class:`~metaopt.learned_optimizers.LearnedOptimizer`.
    horizon: inner steps of one task's training.

  Returns:
    The :class:`~metaopt.UnrolledSystem`; theta is the learned optimizer's weights.

  Examples:
    >>> import jax, metaopt
    >>> from metaopt import learned_optimizers as lo
    >>> from unrolled import families
    >>> lopt = lo.learnable_sgd(learning_rate=0.1)
    >>> system = families.family_system(families.quadratic(dim=4), lopt, horizon=20)
    >>> theta = lopt.init(jax.random.key(0))
    >>> est = metaopt.pes(system, num_steps=10, num_particles=2, sigma=0.01)
    >>> state, grad, metrics = est.unroll(est.init(jax.random.key(1), theta), theta,
    ...                                   jax.random.key(2))
    >>> grad["log_learning_rate"].shape
    ()
  """
  check_family(family)
  horizon = base.check_count(horizon, "horizon")

  def init(key, theta):
    key_task, key_params = jax.random.split(key)
    task = family.sample(key_task)
    params = family.init_params(task, key_params)
    opt_state = learned_optimizer.optimizer(theta).init(params)
    return TaskState(task, params, opt_state, jnp.zeros((), jnp.int32))

  def step(state, theta, key):
    loss, grads = jax.value_and_grad(family.loss)(state.params, state.task, key)
    updates, opt_state = learned_optimizer.optimizer(theta).update(grads, state.opt_state,
                                                                  state.params)
    params = optax.apply_updates(state.params, updates)
    return TaskState(state.task, params, opt_state, state.step + 1), loss

  return metaopt.UnrolledSystem(init, step, horizon)


def check_family(family: Any) -> None:
  if not isinstance(family, TaskFamily):
    raise ValueError(f"family must be an unrolled.families.TaskFamily, got "
                     f"{type(family).__name__}")


# Tags of the key streams of held-out tasks: test tasks, and validation tasks (which choose
# among meta-trained weights); meta-training's own tasks come from the run's key.
TEST, VALIDATION = 0x7E57, 0x7A11D


def held_out_keys(num_tasks: int, *, seed: int, stream: int = TEST) -> jax.Array:
  """Keys of held-out tasks: a stream no training run draws from (``fold_in`` of a tag).

  ``stream`` is :data:`TEST` (the tasks results are reported on) or
  :data:`VALIDATION` (the tasks that select the weights): disjoint streams.
  """
  return jax.random.split(jax.random.fold_in(jax.random.key(seed), stream), num_tasks)


def train_task(family: TaskFamily, optimizer: optax.GradientTransformation, key: jax.Array, *,
               num_steps: int) -> tuple[dict, jax.Array]:
  """Samples the task of ``key``, trains it ``num_steps`` steps with ``optimizer``.

  The same key gives the same task, initial parameters and data order for
  every optimizer, so optimizers are compared on identical runs. Pure and
  jit-able; vmap it over keys for several tasks.

  Returns:
    ``(evaluate(final params), per-step training minibatch losses)``.
  """
  key_task, key_params, key_data = jax.random.split(key, 3)
  task = family.sample(key_task)
  params = family.init_params(task, key_params)

  def body(carry, k):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(family.loss)(params, task, k)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), losses = jax.lax.scan(body, (params, optimizer.init(params)),
                                     jax.random.split(key_data, num_steps))
  return family.evaluate(params, task), losses
