"""The partially observable environments of unrolled.envs: API, auto-reset and dynamics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unrolled import envs

# Small options keep the compiles and rollouts short.
OPTIONS = {
    "memory_chain": dict(memory_length=4),
    "masked_cartpole": dict(),
    "masked_pendulum": dict(),  # its dynamics: tests/test_rl_comparators.py
    "repeat_first": dict(num_symbols=3, length=6),
    "repeat_previous": dict(num_symbols=3, delay=2, length=6),
    "count_recall": dict(num_symbols=3, length=6),
}


def test_every_env_is_tested():
  assert set(OPTIONS) == set(envs.ENVS)


def rollout(env, policy, memory, key, num_steps):
  """Runs ``num_steps`` steps of ``policy(obs, memory, key) -> (action, memory)``.

  The policy's memory goes back to its initial value when an episode ends, as
  an agent told ``done`` would reset it. Returns the first observation and the
  per-step (obs after the step, reward, done, state after the step).
  """
  init_memory = memory

  @jax.jit
  def run(key):
    key, key_reset = jax.random.split(key)
    obs, state = env.reset(key_reset)

    def body(carry, key):
      obs, state, memory = carry
      key_policy, key_step = jax.random.split(key)
      action, memory = policy(obs, memory, key_policy)
      obs, state, reward, done = env.step(key_step, state, action)
      memory = jax.tree.map(lambda a, b: jnp.where(done, a, b), init_memory, memory)
      return (obs, state, memory), (obs, reward, done, state)

    _, trace = jax.lax.scan(body, (obs, state, memory), jax.random.split(key, num_steps))
    return obs, trace

  return run(key)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_shapes_dtypes_jit_and_vmap(name):
  env = envs.make(name, **OPTIONS[name])
  assert isinstance(env.num_actions, int) and isinstance(env.obs_size, int)
  assert isinstance(env.description, str) and "\n" not in env.description
  obs, state = jax.jit(env.reset)(jax.random.key(0))
  chex.assert_shape(obs, (env.obs_size,))
  chex.assert_type(obs, jnp.float32)
  step = jax.jit(env.step)
  obs, next_state, reward, done = step(jax.random.key(1), state, jnp.int32(env.num_actions - 1))
  chex.assert_shape([obs, reward, done], [(env.obs_size,), (), ()])
  chex.assert_type([obs, reward, done], [jnp.float32, jnp.float32, jnp.bool_])
  # Same structure, shapes and dtypes (weak types included) from reset and step: a scan carry.
  chex.assert_trees_all_equal_structs(state, next_state)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, next_state)
  assert jax.tree.map(lambda x: x.weak_type, state) == jax.tree.map(lambda x: x.weak_type,
                                                                     next_state)

  # 8 parallel envs with split keys.
  keys = jax.random.split(jax.random.key(2), 8)
  obs, states = jax.jit(jax.vmap(env.reset))(keys)
  chex.assert_shape(obs, (8, env.obs_size))
  actions = jnp.arange(8, dtype=jnp.int32) % env.num_actions
  obs, states, rewards, dones = jax.jit(jax.vmap(env.step))(keys, states, actions)
  chex.assert_shape([obs, rewards, dones], [(8, env.obs_size), (8,), (8,)])
  chex.assert_type([obs, rewards, dones], [jnp.float32, jnp.float32, jnp.bool_])
  if name != "masked_cartpole":  # discrete symbols: split keys give different episodes
    assert len(np.unique(np.asarray(obs), axis=0)) > 1


def episode_returns(rewards, dones, length):
  """Per-episode sums of a rollout that must consist of whole episodes of ``length`` steps."""
  rewards, dones = np.asarray(rewards), np.asarray(dones)
  expected = np.arange(len(dones)) % length == length - 1
  np.testing.assert_array_equal(dones, expected)  # ends exactly after `length` steps
  return rewards.reshape(-1, length).sum(axis=1)


def test_repeat_first():
  n, length = 3, 6
  env = envs.make("repeat_first", num_symbols=n, length=length)

  def oracle(obs, memory, key):
    del key
    memory = jnp.where(obs[-1] == 1, jnp.argmax(obs[:n]).astype(jnp.int32), memory)
    return memory, memory

  first_obs, (obs, rewards, dones, _) = rollout(env, oracle, jnp.int32(0), jax.random.key(0),
                                                20 * length)
  assert first_obs[-1] == 1 and np.all(first_obs[:n].sum() == 1)
  np.testing.assert_allclose(episode_returns(rewards, dones, length), 1.0, rtol=1e-6)
  # The flag is set exactly on a fresh episode's first observation, i.e. right after `done`.
  np.testing.assert_array_equal(np.asarray(obs[:, -1]), np.asarray(dones, np.float32))
  np.testing.assert_array_equal(np.asarray(obs[:, :n].sum(axis=1)), 1.0)
  # Step 0 is not rewarded, the others 1 / (length - 1).
  np.testing.assert_allclose(np.asarray(rewards).reshape(-1, length)[:, 1:], 1 / (length - 1))
  np.testing.assert_array_equal(np.asarray(rewards).reshape(-1, length)[:, 0], 0.0)
  # The first symbols vary between episodes.
  firsts = np.argmax(np.asarray(obs[:, :n])[np.asarray(dones)], axis=1)
  assert len(np.unique(firsts)) == n

  def always_wrong(obs, memory, key):
    action, memory = oracle(obs, memory, key)
    return (action + 1) % n, memory

  _, (_, rewards, dones, _) = rollout(env, always_wrong, jnp.int32(0), jax.random.key(0),
                                      20 * length)
  np.testing.assert_array_equal(episode_returns(rewards, dones, length), 0.0)

  def constant(obs, memory, key):
    del obs, key
    return jnp.int32(0), memory

  _, (_, rewards, dones, _) = rollout(env, constant, jnp.int32(0), jax.random.key(0),
                                      20 * length)
  returns = episode_returns(rewards, dones, length)
  assert returns.mean() < 0.7 and set(np.unique(returns.round(5))) <= {0.0, 1.0}


def test_repeat_previous():
  n, delay, length = 3, 2, 6
  env = envs.make("repeat_previous", num_symbols=n, delay=delay, length=length)

  def oracle(obs, recent, key):
    # recent: the symbols seen in this episode so far, newest last (-1: none yet).
    del key
    recent = jnp.concatenate([recent[1:], jnp.argmax(obs).astype(jnp.int32)[None]])
    return jnp.maximum(recent[0], 0), recent

  memory = jnp.full((delay + 1,), -1, jnp.int32)
  _, (_, rewards, dones, _) = rollout(env, oracle, memory, jax.random.key(0), 20 * length)
  np.testing.assert_allclose(episode_returns(rewards, dones, length), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(rewards).reshape(-1, length)[:, :delay], 0.0)

  def random(obs, memory, key):
    del obs
    return jax.random.randint(key, (), 0, n, jnp.int32), memory

  _, (_, rewards, dones, _) = rollout(env, random, memory, jax.random.key(0), 20 * length)
  assert episode_returns(rewards, dones, length).mean() < 0.7


def test_count_recall():
  n, length = 3, 6
  env = envs.make("count_recall", num_symbols=n, length=length)
  assert env.num_actions == envs.count_recall_num_actions(n, length) == 2 * 2 + 1
  assert envs.make("count_recall").num_actions == 9  # defaults: 4 symbols, 16 steps

  def oracle(obs, counts, key):
    del key
    counts = counts + obs[:n].astype(jnp.int32)
    query = jnp.argmax(obs[n:])
    return jnp.minimum(counts[query], env.num_actions - 1), counts

  counts = jnp.zeros((n,), jnp.int32)
  first_obs, (obs, rewards, dones, states) = rollout(env, oracle, counts, jax.random.key(0),
                                                     30 * length)
  np.testing.assert_array_equal(np.asarray(first_obs).reshape(2, n).sum(axis=1), 1.0)
  np.testing.assert_allclose(episode_returns(rewards, dones, length), 1.0, rtol=1e-6)
  # After `done` the state is a fresh episode's: one symbol dealt, at step 0.
  fresh = jax.tree.map(lambda x: np.asarray(x)[np.asarray(dones)], states)
  np.testing.assert_array_equal(fresh.t, 0)
  np.testing.assert_array_equal(fresh.counts.sum(axis=1), 1)
  assert np.asarray(states.counts).max() >= 3  # the answers were not all small counts

  def random(obs, memory, key):
    del obs
    return jax.random.randint(key, (), 0, env.num_actions, jnp.int32), memory

  _, (_, rewards, dones, _) = rollout(env, random, counts, jax.random.key(0), 30 * length)
  assert episode_returns(rewards, dones, length).mean() < 0.5


def test_count_recall_clips_the_count():
  assert envs.make("count_recall", num_symbols=2, length=3).num_actions == 4  # capped by length
  env = envs.make("count_recall", num_symbols=8, length=16)
  assert env.num_actions == 5  # counts 0 .. 3 and "4 or more"
  _, state = env.reset(jax.random.key(0))
  state = state._replace(counts=jnp.full((8,), 7, jnp.int32))
  _, _, reward, _ = env.step(jax.random.key(1), state, jnp.int32(4))
  assert reward == pytest.approx(1 / 16)
  _, _, reward, _ = env.step(jax.random.key(1), state, jnp.int32(3))
  assert reward == 0


def test_memory_chain():
  m = 4
  env = envs.make("memory_chain", memory_length=m)
  assert (env.num_actions, env.obs_size) == (2, 3)

  def oracle(obs, context, key):
    # gymnax shows the context (+1 or -1) only on the first steps; action 1 answers +1.
    del key
    context = jnp.where(obs[2] != 0, obs[2], context)
    return (context > 0).astype(jnp.int32), context

  def anti(obs, context, key):
    action, context = oracle(obs, context, key)
    return 1 - action, context

  for policy, final_reward in ((oracle, 1.0), (anti, -1.0)):
    first_obs, (obs, rewards, dones, _) = rollout(env, policy, jnp.float32(0),
                                                  jax.random.key(0), 20 * (m + 1))
    rewards = np.asarray(rewards).reshape(-1, m + 1)
    episode_returns(rewards.ravel(), dones, m + 1)  # an episode is memory_length + 1 steps
    np.testing.assert_array_equal(rewards[:, :-1], 0.0)  # only the answer is rewarded
    np.testing.assert_array_equal(rewards[:, -1], final_reward)

  # Observations [1 - t / m, query, context]: the reset observation and the first step's are the
  # same (bsuite's step returns the observation before advancing time), the context shows on
  # both, the last step's observation is the next episode's reset observation.
  obs = np.concatenate([np.asarray(first_obs)[None], np.asarray(obs)])
  episodes = obs[:-1].reshape(-1, m + 1, 3)
  np.testing.assert_allclose(episodes[:, :, 0], [[1, 1, 0.75, 0.5, 0.25]] * len(episodes))
  np.testing.assert_array_equal(episodes[:, :, 1], 0)  # one bit: the query is always 0
  np.testing.assert_array_equal(np.abs(episodes[:, :2, 2]), 1)
  np.testing.assert_array_equal(episodes[:, 0, 2], episodes[:, 1, 2])
  np.testing.assert_array_equal(episodes[:, 2:, 2], 0)
  assert set(np.unique(episodes[:, 0, 2])) == {-1.0, 1.0}  # both contexts occur


def test_memory_chain_longer_than_gymnax_time_limit():
  # gymnax's default max_steps_in_episode (1000) must not truncate a longer chain.
  m = 1500
  env = envs.make("memory_chain", memory_length=m)
  _, state = env.reset(jax.random.key(0))
  step = jax.jit(env.step)
  _, after, reward, done = step(jax.random.key(1), state.replace(time=jnp.int32(1200)),
                                jnp.int32(0))
  assert not done and reward == 0 and after.time == 1201
  answer = state.context[0]
  _, after, reward, done = step(jax.random.key(1), state.replace(time=jnp.int32(m)), answer)
  assert done and reward == 1 and after.time == 0


def test_masked_cartpole():
  env = envs.make("masked_cartpole")
  assert (env.num_actions, env.obs_size) == (2, 2)
  obs, state = env.reset(jax.random.key(0))
  np.testing.assert_array_equal(obs, [state.x, state.theta])

  def push_right(obs, memory, key):
    del obs, key
    return jnp.int32(1), memory

  _, (obs, rewards, dones, states) = rollout(env, push_right, jnp.int32(0), jax.random.key(0),
                                             200)
  # The observation is the state's position and angle (computed in another fusion: to rounding).
  np.testing.assert_allclose(obs, np.stack([states.x, states.theta], axis=1), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_array_equal(rewards, 1.0)
  dones = np.asarray(dones)
  ends = np.flatnonzero(dones)
  assert len(ends) >= 2 and ends[0] < 100  # a constant push topples the pole quickly
  np.testing.assert_array_equal(np.asarray(states.time)[dones], 0)  # auto-reset
  assert np.abs(np.asarray(states.theta)[dones]).max() <= 0.05  # fresh: uniform in +-0.05

  # Truncation at gymnax's default 500 steps, with the pole still upright.
  _, state = env.reset(jax.random.key(1))
  step = jax.jit(env.step)
  _, after, _, done = step(jax.random.key(2), state.replace(time=jnp.int32(498)), jnp.int32(0))
  assert not done and after.time == 499
  _, after, reward, done = step(jax.random.key(2), after, jnp.int32(0))
  assert done and reward == 1 and after.time == 0


@pytest.mark.parametrize("name, options, message", [
    ("nope", {}, "unknown env 'nope'; known envs: count_recall, masked_cartpole, masked_pendulum, "
     "memory_chain"),
    ("memory_chain", dict(memory_length=0), "memory_length must be an int >= 1, got 0"),
    ("memory_chain", dict(memory_length=2.5), "memory_length must be an int >= 1, got 2.5"),
    ("masked_cartpole", dict(length=3), "env 'masked_cartpole' has no option(s) length; its "
                                        "options: none"),
    ("repeat_first", dict(lenght=3), "no option(s) lenght; its options: num_symbols, length"),
    ("repeat_first", dict(length=1), "length must be an int >= 2, got 1"),
    ("repeat_previous", dict(delay=4, length=4), "length must be an int >= 5, got 4"),
    ("count_recall", dict(num_symbols=1), "num_symbols must be an int >= 2, got 1"),
    ("count_recall", dict(num_symbols=True), "num_symbols must be an int >= 2, got True"),
])
def test_bad_names_and_options(name, options, message):
  with pytest.raises(ValueError) as info:
    envs.make(name, **options)
  assert message in str(info.value) and "\n" not in str(info.value)
