"""Online training of a recurrent network on a stream: the weights are theta, the hidden state is the state."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import metaopt
from unrolled import cells
from unrolled import streams

# An endless stream still needs a horizon that every window length divides:
# 3,603,600 = 5 * lcm(1..16) is divisible by 1..16, 20, 25, 50, 100, 200.
ENDLESS = 3_603_600


class OnlineRNN(NamedTuple):
  """A recurrent network trained online on a stream.

  Attributes:
    system: a :class:`metaopt.recurrent.ElementwiseSystem` (element-wise cells) or a
      plain :class:`metaopt.UnrolledSystem` (dense cell).
    theta: initial weights, ``{"cell": ..., "readout": {"w", "b"}}``.
    description: one line.
    evaluate: ``evaluate(theta, key) -> {"accuracy", "loss"}`` over the scored
      steps of ``eval_steps`` steps of a fresh stream, weights fixed.
    num_params: number of weights.
  """
  system: Any
  theta: Any
  description: str
  evaluate: Callable
  num_params: int


def online_rnn(*, cell: str = "elstm", task: str = "delayed_recall", hidden_size: int = 32,
               seed: int = 0, horizon: int = ENDLESS, eval_steps: int = 2000,
               task_options: dict | None = None) -> OnlineRNN:
  """Builds a one-layer recurrent network with a linear softmax readout on a stream task.

  Args:
    cell: one of ``cells.CELLS``: "elstm", "rtu_linear", "rtu_nonlinear", "lru", "dense_tanh".
    task: one of ``streams.STREAMS``: "delayed_recall", "t_maze".
    hidden_size: number of recurrent units.
    seed: makes the initial weights.
    horizon: inner steps before the hidden state and stream restart.
    eval_steps: stream steps per evaluation.
    task_options: keyword options of the task (e.g. ``{"delay": 20}``).

  Returns:
    An :class:`OnlineRNN`.
  """
  if cell not in cells.CELLS:
    raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(cells.CELLS)}")
  if task not in streams.STREAMS:
    raise ValueError(f"unknown task {task!r}; choose one of {sorted(streams.STREAMS)}")
  if not isinstance(hidden_size, int) or hidden_size < 1:
    raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
  try:
    stream = streams.STREAMS[task](**(task_options or {}))
  except TypeError as e:
    raise ValueError(f"task {task!r}: {e}") from None
  layer = cells.CELLS[cell]()
  k_cell, k_out = jax.random.split(jax.random.key(seed))
  num_features = hidden_size * layer.num_outputs
  theta = {"cell": layer.init_params(k_cell, stream.num_inputs, hidden_size),
           "readout": {"w": jax.random.normal(k_out, (stream.num_classes, num_features))
                            / jnp.sqrt(num_features),
                       "b": jnp.zeros(stream.num_classes)}}

  def logits(readout, outputs):
    return readout["w"] @ outputs.reshape(-1) + readout["b"]

  def readout_loss(readout, outputs, target):
    label, mask = target
    log_p = jax.nn.log_softmax(logits(readout, outputs))
    return -mask * log_p[label]

  if layer.cell is not None:
    system = metaopt.recurrent.elementwise_system(layer.cell, stream_init=stream.init,
                                        observe=stream.observe, readout_loss=readout_loss,
                                        horizon=horizon)
  else:
    system = _dense_system(layer, stream, readout_loss, horizon)

  def evaluate(theta, key):
    def body(state, k):
      new_state, loss = system.step(state, theta, k)
      _, x, (label, mask) = stream.observe(state.stream, k)
      outputs = (metaopt.recurrent.cell_outputs(layer.cell, new_state.hidden, theta["cell"], x)
                 if layer.cell is not None else new_state.hidden)
      correct = jnp.argmax(logits(theta["readout"], outputs)) == label
      return new_state, (loss, mask, mask * correct)

    k_init, k_steps = jax.random.split(key)
    _, (loss, mask, correct) = jax.lax.scan(body, system.init(k_init, theta),
                                            jax.random.split(k_steps, eval_steps))
    scored = jnp.maximum(jnp.sum(mask), 1.0)
    return {"accuracy": jnp.sum(correct) / scored, "loss": jnp.sum(loss) / scored}

  num_params = sum(x.size for x in jax.tree.leaves(theta))
  description = (f"online {cell} ({hidden_size} units, {num_params} weights) on "
                 f"{stream.description}")
  return OnlineRNN(system, theta, description, evaluate, num_params)


def _dense_system(layer, stream, readout_loss, horizon):
  """The dense tanh layer through metaopt.recurrent.dense_system, which exposes its preactivations."""
  del layer  # cells.dense_tanh's step is what dense_system computes
  return metaopt.recurrent.dense_system(stream_init=stream.init, observe=stream.observe,
                              readout_loss=readout_loss, horizon=horizon, activation=jnp.tanh)
