"""Small partially observable environments in pure JAX, for online actor-critic agents.

Every environment is an :class:`Env` of pure functions: jit- and vmap-able,
float32 observations, int32 scalar actions, and a ``step`` that resets
automatically at the end of an episode, so an agent can run one endless
stream: the online setting of Elelimy et al. 2024, "Real-Time Recurrent
Learning using Trace Units in Reinforcement Learning", and of Irie et al. 2023,
"Exploring the Promise and Limits of Real-Time Recurrent Learning".

From gymnax (imported only when such an env is made):

* ``memory_chain``: bsuite's MemoryChain, ``gymnax.make("MemoryChain-bsuite")``.
* ``masked_cartpole``: ``gymnax.make("CartPole-v1")`` with the velocities
  masked out of the observation, as in the RTU paper's code (esraaelelimy/rtus).
* ``masked_pendulum``: ``gymnax.make("Pendulum-v1")`` with the angular velocity
  masked out: continuous actions (the torque).

Our own versions of POPGym tasks (Morad et al. 2023, "POPGym: Benchmarking
Partially Observable Reinforcement Learning"), written here because POPGym's
port to the gymnax API (popjaxrl) is not on PyPI. They keep POPGym's idea, not
its exact observations or rewards; each factory documents its convention. The
undiscounted return of an episode is the fraction of correct answers, in [0, 1]:

* ``repeat_first``: answer the episode's first symbol at every step.
* ``repeat_previous``: answer the symbol seen ``delay`` steps earlier.
* ``count_recall``: answer how often the queried symbol has been dealt.

Example:

>>> import jax
>>> env = make("repeat_first", num_symbols=3, length=5)
>>> obs, state = env.reset(jax.random.key(0))
>>> obs.shape, env.num_actions
((4,), 3)
>>> obs, state, reward, done = jax.jit(env.step)(jax.random.key(1), state, 0)
>>> reward.dtype, done.dtype
(dtype('float32'), dtype('bool'))
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Env(NamedTuple):
  """An environment of pure functions.

  Attributes:
    reset: ``reset(key) -> (obs, state)``.
    step: ``step(key, state, action) -> (obs, state, reward, done)``. ``done``
      (bool scalar) says the episode ended at this step, terminated or
      truncated; the step then resets automatically: ``obs`` and ``state``
      are those of a fresh episode, drawn with a key derived from ``key``.
      ``reward`` (float32 scalar) is the reward of the step just taken.
    num_actions: actions are int32 scalars in ``range(num_actions)``; for a
      ``continuous`` env, float32 vectors of this size.
    obs_size: observations are float32 of shape ``(obs_size,)``.
    description: one line.
    continuous: whether actions are real vectors (a Gaussian policy's).
  """
  reset: Callable
  step: Callable
  num_actions: int
  obs_size: int
  description: str
  continuous: bool = False


def _strong(tree):
  # gymnax builds some state leaves from Python ints (weakly typed), others from arrays: fix the
  # dtypes so that reset's state and step's state are the same type, as a scan carry needs.
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), tree)


def _select(done, fresh, stepped):
  return jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, stepped)


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# gymnax environments


def _gymnax_env(env, params, observe, num_actions, obs_size, description, continuous=False):
  """Wraps a gymnax env into an :class:`Env`; ``observe`` maps gymnax's observation to ours."""
  # Continuous: the default float (float64 under jax_enable_x64, as gymnax's reset state then).
  as_action = ((lambda a: jnp.asarray(a, float).reshape(())) if continuous
               else (lambda a: jnp.asarray(a, jnp.int32)))

  def reset(key):
    obs, state = env.reset(key, params)
    return observe(obs), _strong(state)

  def step(key, state, action):
    # gymnax's step auto-resets (with a key it splits from ours) and returns the fresh
    # episode's observation and state when the episode ends.
    obs, state, reward, terminated, truncated, _ = env.step(
        key, state, as_action(action), params)
    done = jnp.logical_or(terminated, truncated)
    return observe(obs), _strong(state), jnp.asarray(reward, jnp.float32), done

  return Env(reset, step, num_actions, obs_size, description, continuous)


def memory_chain(memory_length: int = 10) -> Env:
  """bsuite's MemoryChain (gymnax ``MemoryChain-bsuite``, one context bit).

  The observation is ``[1 - t / memory_length, query, context]`` (float32),
  where ``t`` counts the steps taken before the observed one; ``context``
  (+1 or -1) shows only while ``t == 0`` and ``query`` (always 0 with one
  bit) only while ``t == memory_length - 1``, otherwise they are 0. As in
  bsuite, ``step`` returns the observation of the state *before* its time
  step advances, so the reset observation and the first step's observation
  are the same and both show the context.

  An episode is ``memory_length + 1`` steps. Only the last step is rewarded:
  +1 if the action is the context bit (action 1 for context +1, action 0 for
  context -1), -1 otherwise; every other reward is 0. It terminates then,
  before gymnax's time limit (which we raise above the episode length).

  Args:
    memory_length: steps between the context and the rewarded answer (>= 1).

  Returns:
    The :class:`Env` (2 actions, observations of size 3).
  """
  _check_int("memory_length", memory_length, 1)
  import gymnax  # pylint: disable=g-import-not-at-top  (slow; only the gymnax envs need it)

  env, params = gymnax.make("MemoryChain-bsuite")
  params = params.replace(
      memory_length=memory_length,
      # The default limit of 1000 steps would truncate a longer chain before its answer.
      max_steps_in_episode=max(params.max_steps_in_episode, memory_length + 2))
  return _gymnax_env(
      env, params, lambda obs: jnp.asarray(obs, jnp.float32), 2, 3,
      f"bsuite MemoryChain (gymnax): recall one bit after {memory_length} steps")


def masked_cartpole() -> Env:
  """CartPole-v1 (gymnax) observing only the cart position and the pole angle.

  The velocities (entries 1 and 3 of CartPole's observation) are masked out,
  as in the partially observable CartPole of the RTU paper's code, so the
  agent must infer them from successive observations. Reward 1 per step; an
  episode terminates when the pole falls or the cart leaves the track, and is
  truncated after gymnax's default 500 steps.

  Returns:
    The :class:`Env` (2 actions, observations ``[x, theta]``).
  """
  import gymnax  # pylint: disable=g-import-not-at-top  (slow; only the gymnax envs need it)

  env, params = gymnax.make("CartPole-v1")
  return _gymnax_env(
      env, params, lambda obs: jnp.asarray(obs, jnp.float32)[jnp.array([0, 2])], 2, 2,
      "CartPole-v1 (gymnax) without velocities: observes cart position and pole angle")


# ---------------------------------------------------------------------------------------------
# Our own versions of POPGym tasks


def _episodic(first, advance, length):
  """Builds ``(reset, step)`` for an episode of exactly ``length`` steps.

  Args:
    first: ``first(key) -> (obs, state)``: the first observation of an episode.
    advance: ``advance(key, state, action) -> (obs, state, reward)``: the reward
      for the action taken at ``state.t`` and the next observation; its ``obs``
      is discarded at the last step.
    length: steps per episode.
  """

  def step(key, state, action):
    key_step, key_reset = jax.random.split(key)
    obs, next_state, reward = advance(key_step, state, jnp.asarray(action, jnp.int32))
    done = state.t == length - 1
    fresh_obs, fresh_state = first(key_reset)
    obs, state = _select(done, (fresh_obs, fresh_state), (obs, next_state))
    return obs, state, jnp.asarray(reward, jnp.float32), done

  return first, step


class RepeatFirstState(NamedTuple):
  t: jax.Array      # steps taken in this episode
  first: jax.Array  # the episode's first symbol


def repeat_first(num_symbols: int = 4, length: int = 16) -> Env:
  """Repeat the first symbol (after POPGym's RepeatFirst).

  Each step shows a uniformly random symbol (one-hot over ``num_symbols``)
  and a flag that is 1 on the episode's first step only. The action is a
  guess of the episode's first symbol. Steps ``t = 1 .. length - 1`` are
  rewarded ``1 / (length - 1)`` for a correct guess and 0 otherwise; step 0
  (where the symbol is on screen) is not rewarded. So the return is the
  fraction of correct recalls, in [0, 1]. The episode ends after ``length``
  steps.

  Args:
    num_symbols: symbols (>= 2), also the number of actions.
    length: steps per episode (>= 2).

  Returns:
    The :class:`Env` (observations of size ``num_symbols + 1``).
  """
  _check_int("num_symbols", num_symbols, 2)
  _check_int("length", length, 2)

  def observe(symbol, is_first):
    return jnp.concatenate([jax.nn.one_hot(symbol, num_symbols, dtype=jnp.float32),
                            jnp.asarray(is_first, jnp.float32)[None]])

  def first(key):
    symbol = jax.random.randint(key, (), 0, num_symbols, jnp.int32)
    return observe(symbol, True), RepeatFirstState(jnp.int32(0), symbol)

  def advance(key, state, action):
    reward = jnp.where((state.t > 0) & (action == state.first), 1.0 / (length - 1), 0.0)
    symbol = jax.random.randint(key, (), 0, num_symbols, jnp.int32)
    return observe(symbol, False), state._replace(t=state.t + 1), reward

  reset, step = _episodic(first, advance, length)
  return Env(reset, step, num_symbols, num_symbols + 1,
             f"repeat the first of {length} random symbols (of {num_symbols}) at every step")


class RepeatPreviousState(NamedTuple):
  t: jax.Array       # steps taken in this episode
  recent: jax.Array  # the last delay + 1 symbols shown, oldest first


def repeat_previous(num_symbols: int = 4, delay: int = 3, length: int = 16) -> Env:
  """Repeat the symbol seen ``delay`` steps earlier (after POPGym's RepeatPrevious).

  Each step shows a uniformly random symbol (one-hot over ``num_symbols``).
  The action at step ``t`` should be the symbol shown at step ``t - delay``.
  Steps ``t = delay .. length - 1`` are rewarded ``1 / (length - delay)`` for
  a correct answer and 0 otherwise (earlier steps have nothing to repeat and
  are not rewarded), so the return is the fraction correct, in [0, 1]. The
  episode ends after ``length`` steps.

  Args:
    num_symbols: symbols (>= 2), also the number of actions.
    delay: how many steps back to answer (>= 1).
    length: steps per episode (> delay).

  Returns:
    The :class:`Env` (observations of size ``num_symbols``).
  """
  _check_int("num_symbols", num_symbols, 2)
  _check_int("delay", delay, 1)
  _check_int("length", length, delay + 1)

  def first(key):
    symbol = jax.random.randint(key, (), 0, num_symbols, jnp.int32)
    recent = jnp.zeros((delay + 1,), jnp.int32).at[-1].set(symbol)
    return (jax.nn.one_hot(symbol, num_symbols, dtype=jnp.float32),
            RepeatPreviousState(jnp.int32(0), recent))

  def advance(key, state, action):
    # recent[0] was shown at step t - delay (when t >= delay).
    correct = (state.t >= delay) & (action == state.recent[0])
    reward = jnp.where(correct, 1.0 / (length - delay), 0.0)
    symbol = jax.random.randint(key, (), 0, num_symbols, jnp.int32)
    recent = jnp.concatenate([state.recent[1:], symbol[None]])
    return (jax.nn.one_hot(symbol, num_symbols, dtype=jnp.float32),
            RepeatPreviousState(state.t + 1, recent), reward)

  reset, step = _episodic(first, advance, length)
  return Env(reset, step, num_symbols, num_symbols,
             f"repeat the symbol (of {num_symbols}) seen {delay} steps earlier, "
             f"episodes of {length}")


class CountRecallState(NamedTuple):
  t: jax.Array       # steps taken in this episode
  counts: jax.Array  # (num_symbols,) how often each symbol has been dealt, this step's included
  query: jax.Array   # the symbol asked about at this step


def count_recall_num_actions(num_symbols: int, length: int) -> int:
  """Answers of :func:`count_recall`: counts 0 .. twice the mean final count, capped by length."""
  return min(length, 2 * math.ceil(length / num_symbols)) + 1


def count_recall(num_symbols: int = 4, length: int = 16) -> Env:
  """Count how often a symbol has been dealt (after POPGym's CountRecall).

  Each step deals a uniformly random symbol and asks about a uniformly random
  query symbol; the observation is their two one-hots. The correct action is
  the number of times the query symbol has been dealt so far in the episode,
  this step's deal included, clipped to ``num_actions - 1`` (the last action
  means "that many or more"). ``num_actions`` is
  :func:`count_recall_num_actions`: ``min(length, 2 * ceil(length /
  num_symbols)) + 1``, twice the mean final count, which a count rarely
  exceeds (9 for the defaults). Each step is rewarded ``1 / length`` when
  correct and 0 otherwise, so the return is the fraction correct, in [0, 1].
  The episode ends after ``length`` steps.

  Args:
    num_symbols: symbols (>= 2).
    length: steps per episode (>= 1).

  Returns:
    The :class:`Env` (observations of size ``2 * num_symbols``).
  """
  _check_int("num_symbols", num_symbols, 2)
  _check_int("length", length, 1)
  num_actions = count_recall_num_actions(num_symbols, length)

  def deal(key, counts):
    dealt, query = jax.random.randint(key, (2,), 0, num_symbols, jnp.int32)
    obs = jnp.concatenate([jax.nn.one_hot(dealt, num_symbols, dtype=jnp.float32),
                           jax.nn.one_hot(query, num_symbols, dtype=jnp.float32)])
    return obs, counts + jax.nn.one_hot(dealt, num_symbols, dtype=jnp.int32), query

  def first(key):
    obs, counts, query = deal(key, jnp.zeros((num_symbols,), jnp.int32))
    return obs, CountRecallState(jnp.int32(0), counts, query)

  def advance(key, state, action):
    answer = jnp.minimum(state.counts[state.query], num_actions - 1)
    reward = jnp.where(action == answer, 1.0 / length, 0.0)
    obs, counts, query = deal(key, state.counts)
    return obs, CountRecallState(state.t + 1, counts, query), reward

  reset, step = _episodic(first, advance, length)
  return Env(reset, step, num_actions, 2 * num_symbols,
             f"count the deals of a queried symbol (of {num_symbols}) over {length} steps")


def masked_pendulum() -> Env:
  """Pendulum-v1 (gymnax) observing only the angle, (cos, sin): continuous control, partially observed.

  The angular velocity (entry 2 of Pendulum's observation) is masked out, as
  the RTU paper masks velocities in its continuous-control POMDPs, so the
  agent must infer it from successive angles. One action, the torque, clipped
  to [-2, 2] by the environment; reward -(angle^2 + 0.1 velocity^2 + 0.001
  torque^2) per step; episodes of 200 steps (gymnax's time limit; a random
  policy scores about -1,200, a good swing-up about -150 to -200).

  Returns:
    The :class:`Env` (continuous, 1 action, observations ``[cos angle, sin angle]``).
  """
  import gymnax  # pylint: disable=g-import-not-at-top  (slow; only the gymnax envs need it)

  env, params = gymnax.make("Pendulum-v1")
  return _gymnax_env(
      env, params, lambda obs: jnp.asarray(obs, jnp.float32)[:2], 1, 2,
      "Pendulum-v1 (gymnax) without angular velocity: observes cos and sin of the angle",
      continuous=True)


# ---------------------------------------------------------------------------------------------
# Registry


ENVS: dict[str, Callable[..., Env]] = {
    "memory_chain": memory_chain,
    "masked_cartpole": masked_cartpole,
    "masked_pendulum": masked_pendulum,
    "repeat_first": repeat_first,
    "repeat_previous": repeat_previous,
    "count_recall": count_recall,
}


def make(name: str, **options) -> Env:
  """The environment ``name`` of :data:`ENVS`, made with ``options``.

  Raises:
    ValueError: unknown name, unknown option or bad option value.
  """
  if name not in ENVS:
    raise ValueError(f"unknown env {name!r}; known envs: {', '.join(sorted(ENVS))}")
  known = inspect.signature(ENVS[name]).parameters
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise ValueError(f"env {name!r} has no option(s) {', '.join(unknown)}; "
                     f"its options: {', '.join(known) or 'none'}")
  return ENVS[name](**options)
