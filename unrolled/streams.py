"""Endless data streams with a memory demand, generated in JAX from each step's key.

A :class:`Stream` emits one input per step and a target ``(label, mask)``:
the label is scored (mask 1) only at the steps where the answer is asked for,
and the answer depends on an input seen many steps earlier.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Stream(NamedTuple):
  """A data stream. Inputs are float32 (cells cast them to their weights' dtype).

  Attributes:
    init: ``init(key) -> stream state`` (integer leaves: phase, cue, ...).
    observe: ``observe(state, key) -> (state, x, (label, mask))``.
    num_inputs: size of x.
    num_classes: labels are in ``range(num_classes)``.
    description: one line.
  """
  init: Callable
  observe: Callable
  num_inputs: int
  num_classes: int
  description: str


class RecallState(NamedTuple):
  phase: jax.Array
  cue: jax.Array


def delayed_recall(*, delay: int = 10, num_symbols: int = 4) -> Stream:
  """Delayed recall with distractors.

  The stream repeats periods of ``delay + 1`` steps. At phase 0 it shows a cue
  symbol (one-hot over ``num_symbols``) with the cue flag set; at phases
  1..delay it shows random distractor symbols with the flag clear. At phase
  ``delay`` the target is the cue, so the network must hold it for ``delay``
  steps: a truncated gradient shorter than that never connects the answer to
  the cue. Chance accuracy is 1 / num_symbols.
  """
  if not isinstance(delay, int) or delay < 1:
    raise ValueError(f"delay must be a positive int, got {delay!r}")
  if not isinstance(num_symbols, int) or num_symbols < 2:
    raise ValueError(f"num_symbols must be an int >= 2, got {num_symbols!r}")

  def init(key):
    del key
    return RecallState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def observe(state, key):
    symbol = jax.random.randint(key, (), 0, num_symbols, jnp.int32)
    is_cue = state.phase == 0
    cue = jnp.where(is_cue, symbol, state.cue)
    x = jnp.concatenate([jax.nn.one_hot(symbol, num_symbols, dtype=jnp.float32),
                         is_cue[None].astype(jnp.float32)])
    mask = (state.phase == delay).astype(jnp.float32)
    return RecallState((state.phase + 1) % (delay + 1), cue), x, (cue, mask)

  return Stream(init, observe, num_symbols + 1, num_symbols,
                f"delayed recall of 1 of {num_symbols} symbols after {delay} distractor steps")


class MazeState(NamedTuple):
  phase: jax.Array
  cue: jax.Array
  length: jax.Array


def t_maze(*, min_length: int = 8, max_length: int = 16, noise: float = 0.3) -> Stream:
  """A T-maze prediction stream (after Bakker's T-maze): remember the cue until the junction.

  Each episode shows a cue (left or right) at its first step, then a corridor
  of a random length in [min_length, max_length] with noisy distractor
  inputs, then the junction. At the junction (signalled in the input) the
  target is the cue: the turn that leads to the goal. Inputs: cue-left,
  cue-right, corridor, junction, two Gaussian noise channels. Chance is 1/2.
  """
  if not isinstance(min_length, int) or not isinstance(max_length, int) or not (
      1 <= min_length <= max_length):
    raise ValueError(f"need ints 1 <= min_length <= max_length, got {min_length!r}, "
                     f"{max_length!r}")
  if not noise >= 0:
    raise ValueError(f"noise must be >= 0, got {noise!r}")

  def init(key):
    del key
    zero = jnp.zeros((), jnp.int32)
    return MazeState(zero, zero, jnp.asarray(min_length, jnp.int32))

  def observe(state, key):
    k_cue, k_len, k_noise = jax.random.split(key, 3)
    start = state.phase == 0
    cue = jnp.where(start, jax.random.randint(k_cue, (), 0, 2, jnp.int32), state.cue)
    length = jnp.where(start, jax.random.randint(k_len, (), min_length, max_length + 1, jnp.int32),
                       state.length)
    junction = state.phase == length + 1
    corridor = ~start & ~junction
    x = jnp.concatenate([
        jax.nn.one_hot(cue, 2, dtype=jnp.float32) * start,
        jnp.stack([corridor, junction]).astype(jnp.float32),
        noise * jax.random.normal(k_noise, (2,), jnp.float32)])
    phase = jnp.where(junction, 0, state.phase + 1).astype(jnp.int32)
    return MazeState(phase, cue, length), x, (cue, junction.astype(jnp.float32))

  return Stream(init, observe, 6, 2,
                f"T-maze: recall a binary cue at the junction after a {min_length}-{max_length} "
                "step noisy corridor")


STREAMS = {"delayed_recall": delayed_recall, "t_maze": t_maze}
