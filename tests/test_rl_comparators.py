"""The RL comparators of the RTU paper: dense GRU / LSTM layers, PPO with truncated BPTT, the
reference network's encoder (its one-step gradient) and continuous control (a Gaussian policy on
Pendulum with its angular velocity masked)."""

import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt._src.rl import agent as agent_lib
from unrolled import cells
from unrolled import envs
from unrolled import online_rl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def made(cell, *, env="repeat_first", encoder_size=0, num_envs=3, horizon=12, **env_options):
  """A small agent (float64 under x64) with non-zero heads; a short horizon for exact_grad."""
  if env == "repeat_first" and not env_options:
    env_options = {"length": 4, "num_symbols": 3}
  a = online_rl.online_agent(cell=cell, env=env, hidden_size=3, num_envs=num_envs, gamma=0.9,
                             env_options=env_options, encoder_size=encoder_size,
                             reward_scale=0.5)
  system = a.system._replace(horizon=horizon)
  theta = jax.tree.map(lambda x: x + 0.3 * jnp.cos(jnp.arange(x.size).reshape(x.shape)), a.theta)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  return system, jax.tree.map(lambda x: x.astype(dtype), theta)


# ----------------------------------------------------------------------------------- the cells

def test_gru_and_lstm_are_flaxs_cells():
  """Same weights, same step as flax.linen's GRUCell and LSTMCell (gate order i, f, g, o)."""
  n, d = 4, 3
  x = jax.random.normal(jax.random.key(0), (d,))
  h = jax.random.normal(jax.random.key(1), (n,))
  c = jax.random.normal(jax.random.key(2), (n,))
  gru = cells.gru()
  p = jax.tree.map(lambda v: v + 0.1, gru.init_params(jax.random.key(3), d, n))
  blocks = lambda w, k: w[k * n:(k + 1) * n].T
  flax_gru = {"params": {
      "ir": {"kernel": blocks(p["W_x"], 0), "bias": p["b_x"][:n]},
      "iz": {"kernel": blocks(p["W_x"], 1), "bias": p["b_x"][n:2 * n]},
      "in": {"kernel": blocks(p["W_x"], 2), "bias": p["b_x"][2 * n:]},
      "hr": {"kernel": blocks(p["W_h"], 0)}, "hz": {"kernel": blocks(p["W_h"], 1)},
      "hn": {"kernel": blocks(p["W_h"], 2), "bias": p["b_hn"]}}}
  want, _ = nn.GRUCell(features=n).apply(flax_gru, h, x)
  np.testing.assert_allclose(gru.dense_step(h[:, None], p, x)[:, 0], want, rtol=1e-5, atol=1e-6)

  lstm = cells.lstm()
  p = lstm.init_params(jax.random.key(4), d, n)
  assert float(p["b"][n]) == 1.0  # the forget bias
  names = ("i", "f", "g", "o")
  flax_lstm = {"params": {
      **{f"i{g}": {"kernel": blocks(p["W_x"], k)} for k, g in enumerate(names)},
      **{f"h{g}": {"kernel": blocks(p["W_h"], k), "bias": p["b"][k * n:(k + 1) * n]}
         for k, g in enumerate(names)}}}
  (want_c, want_h), _ = nn.LSTMCell(features=n).apply(flax_lstm, (c, h), x)
  got = lstm.dense_step(jnp.stack([h, c], axis=1), p, x)
  np.testing.assert_allclose(got[:, 0], want_h, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[:, 1], want_c, rtol=1e-5, atol=1e-6)


def test_the_lstm_block_outputs_h_not_c():
  system, theta = made("lstm")
  state = system.init(jax.random.key(0), theta)
  assert state.hidden.shape == (3, 1, 6)  # one block "unit" of 3 units x (h, c)
  outputs = metaopt.recurrent.cell_outputs(system.cell, state.hidden[0], theta["cell"],
                                           state.obs[0])
  np.testing.assert_array_equal(outputs.reshape(3, 1),
                                state.hidden[0].reshape(3, 2)[:, :1])


# -------------------------------------------------------------------- continuous control

def test_the_masked_pendulum_is_gymnaxs_pendulum_without_its_velocity():
  env = envs.make("masked_pendulum")
  assert env.continuous and env.num_actions == 1 and env.obs_size == 2
  g_env, params = gymnax.make("Pendulum-v1")
  obs, state = env.reset(jax.random.key(0))
  g_obs, g_state = g_env.reset(jax.random.key(0), params)
  np.testing.assert_allclose(obs, g_obs[:2])
  step = jax.jit(env.step)
  g_step = jax.jit(lambda k, s, a: g_env.step(k, s, a, params))
  total = 0.0
  for t in range(200):
    key = jax.random.key(10 + t)
    action = jnp.array([1.5 * np.sin(t / 7.0)])
    obs, state, reward, done = step(key, state, action)
    g_obs, g_state, g_reward, _, _, _ = g_step(key, g_state, action[0])
    np.testing.assert_allclose(reward, g_reward, rtol=1e-5)
    total += float(reward)
    assert bool(done) == (t == 199)  # gymnax's 200-step time limit, then a fresh episode
    if t < 199:
      np.testing.assert_allclose(obs, g_obs[:2], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(obs, [np.cos(g_state.theta), np.sin(g_state.theta)], atol=1e-5)
  assert total < 0


def test_the_gaussian_policy():
  policy = metaopt.rl.gaussian()
  mean, log_std = jnp.array([0.5, -1.0]), jnp.array([0.0, np.log(2.0)])
  action = jnp.array([1.0, 0.5])
  want = jax.scipy.stats.norm.logpdf(action, mean, jnp.exp(log_std)).sum()
  np.testing.assert_allclose(policy.log_prob((mean, log_std), action), want, rtol=1e-6)
  np.testing.assert_allclose(policy.entropy((mean, log_std)),
                             np.sum(0.5 * np.log(2 * np.pi * np.e * np.exp(2 * log_std))),
                             rtol=1e-6)
  draws = jax.vmap(lambda k: policy.sample(k, (mean, log_std)))(
      jax.random.split(jax.random.key(0), 20_000))
  # Means within 4 standard errors; standard deviations within 3%.
  np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 4 * np.exp(log_std) / np.sqrt(2e4))
  np.testing.assert_allclose(draws.std(0), np.exp(log_std), rtol=0.03)


@pytest.mark.parametrize("cell", ["rtu_linear", "gru"])
def test_rtrl_is_exact_with_a_gaussian_policy(cell, x64):
  """Continuous actions (masked Pendulum, a learned log std): exact, like the discrete agents."""
  system, theta = made(cell, env="masked_pendulum", num_envs=2)
  est = metaopt.rtrl_elementwise(system, num_steps=3)
  got = metaopt.sum_window_grads(est, theta, jax.random.key(3), num_windows=8)
  exact = metaopt.exact_grad(system, theta, jax.random.key(3), num_steps=3, num_windows=8)
  chex.assert_trees_all_close(got, exact, rtol=1e-9, atol=1e-10)
  assert float(jnp.abs(exact["readout"]["log_std"]).max()) > 1e-3


# --------------------------------------------------------------------------- the encoder

def one_step_encoder_system(system):
  """The same agent, differentiated as the reference trains its encoder: the layer's state
  carries its history's dependence on the cell's weights but none on the encoder, which reaches
  each step's loss through that step's layer update only."""
  hist = lambda theta: {"cell": theta["cell"],
                        "readout": jax.lax.stop_gradient(theta["readout"])}

  def step(state, theta, key):
    new_state, aux = agent_lib.transition(system, state, hist(theta), key)

    def loss(h, begin, obs, a):
      h = agent_lib.with_encoder_step(system, theta, h, begin, obs)
      return agent_lib.env_loss(system, theta, h, obs, a)[0]

    return new_state, jnp.mean(jax.vmap(loss)(state.hidden, state.begin, state.obs, aux))

  return system._replace(init=lambda key, theta: system.init(key, hist(theta)), step=step)


@pytest.mark.parametrize("cell", ["rtu_nonlinear", "gru", "elstm_readout_gate"])
def test_rtrl_gives_the_encoder_its_one_step_gradient(cell, x64):
  system, theta = made(cell, encoder_size=4)
  assert theta["readout"]["enc_w"].shape == (4, 4)
  est = metaopt.rtrl_elementwise(system, num_steps=3)
  got = metaopt.sum_window_grads(est, theta, jax.random.key(3), num_windows=8)
  want = metaopt.exact_grad(one_step_encoder_system(system), theta, jax.random.key(3),
                            num_steps=3, num_windows=8)
  chex.assert_trees_all_close(got, want, rtol=1e-9, atol=1e-12)
  # The layer's weights get their exact gradient; the encoder's one-step one is not the full one.
  full = metaopt.exact_grad(system, theta, jax.random.key(3), num_steps=3, num_windows=8)
  chex.assert_trees_all_close(got["cell"], full["cell"], rtol=1e-9, atol=1e-12)
  assert float(jnp.abs(got["readout"]["enc_w"] - full["readout"]["enc_w"]).max()) > 1e-4


# ------------------------------------------------------------------------ PPO with BPTT

def first_update(learner, theta, key):
  """theta - the first minibatch's gradient (sgd(1), one epoch, one minibatch)."""
  new_state, _ = learner.step(learner.init(key, theta))
  return jax.tree.map(lambda a, b: a - b, theta, new_state.theta)


@pytest.mark.parametrize("cell, env", [("rtu_linear", "repeat_first"),
                                       ("lstm", "masked_pendulum")])
def test_ppo_with_bptt_over_the_whole_rollout_is_real_time_ppo(cell, env, x64):
  """From the horizon start, BPTT through the whole rollout and the RTRL traces give the same
  first update to the layer and the heads; the encoder gets the full gradient under BPTT and its
  one-step gradient under real-time PPO, which is BPTT truncated at one step."""
  system, theta = made(cell, env=env, encoder_size=3, horizon=10**6)
  options = dict(num_steps=6, num_epochs=1, num_minibatches=1)
  key = jax.random.key(7)
  real_time = first_update(metaopt.rl.real_time_ppo(system, optax.sgd(1.0), **options), theta,
                           key)
  whole = first_update(metaopt.rl.bptt_ppo(system, optax.sgd(1.0), **options), theta, key)
  one = first_update(metaopt.rl.bptt_ppo(system, optax.sgd(1.0), truncation=1, **options),
                     theta, key)
  tol = dict(rtol=1e-8, atol=1e-12)
  chex.assert_trees_all_close(real_time["cell"], whole["cell"], **tol)
  encoder = ("enc_w", "enc_b")
  heads = lambda g: {k: v for k, v in g["readout"].items() if k not in encoder}
  chex.assert_trees_all_close(heads(real_time), heads(whole), **tol)
  chex.assert_trees_all_close(real_time["readout"]["enc_w"], one["readout"]["enc_w"], **tol)
  assert float(jnp.abs(whole["readout"]["enc_w"] - one["readout"]["enc_w"]).max()) > 1e-6
  # A truncation drops what the whole rollout sees.
  assert float(jnp.abs(whole["cell"]["W_h" if cell == "lstm" else "nu_log"]
                       - one["cell"]["W_h" if cell == "lstm" else "nu_log"]).max()) > 1e-6


def test_bptt_ppo_learns_a_memory_task():
  """A GRU trained by PPO with BPTT over 8 steps learns RepeatFirst (length 4, 2 symbols) well
  above chance (0.5) in 100 rollouts."""
  a = online_rl.online_agent(cell="gru", env="repeat_first", hidden_size=8, num_envs=8,
                             env_options={"length": 4, "num_symbols": 2}, entropy_cost=0.0)
  learner = metaopt.rl.bptt_ppo(a.system, optax.adam(3e-3), num_steps=16, truncation=8,
                                num_minibatches=2)
  step = jax.jit(learner.step)
  state = learner.init(jax.random.key(0), a.theta)
  for _ in range(100):
    state, _ = step(state)
  before = state.inner
  for _ in range(10):
    state, _ = step(state)
  score = float(jnp.sum(state.inner.returns - before.returns)
                / jnp.sum(state.inner.episodes - before.episodes))
  assert score > 0.8, score


@pytest.mark.parametrize("kwargs, match", [
    (dict(truncation=5), "truncation"), (dict(truncation=0), "truncation"),
    (dict(truncation=4, num_minibatches=4), "num_minibatches"),
    (dict(clip=-1.0, num_minibatches=1), "clip"),
])
def test_bad_bptt_ppo_options(kwargs, match):
  system, _ = made("gru")
  with pytest.raises(ValueError, match=match):
    metaopt.rl.bptt_ppo(system, optax.adam(1e-3), num_steps=8, **kwargs)
  with pytest.raises(ValueError, match="AgentSystem"):
    metaopt.rl.bptt_ppo(object(), optax.adam(1e-3))


def test_bad_agent_options_of_the_comparators():
  with pytest.raises(ValueError, match="encoder_size"):
    online_rl.online_agent(encoder_size=-2)
  system, _ = made("gru")
  with pytest.raises(ValueError, match="reward_scale"):
    metaopt.rl.agent_system(system.cell, env_reset=system.env_reset, env_step=system.env_step,
                            heads=system.heads, horizon=10, reward_scale=0.0)
  with pytest.raises(ValueError, match="policy"):
    metaopt.rl.agent_system(system.cell, env_reset=system.env_reset, env_step=system.env_step,
                            heads=system.heads, horizon=10, policy="gaussian")


@pytest.mark.slow
def test_launch_online_rl_runs_the_comparators(tmp_path):
  """A GRU by PPO with BPTT over 4 steps and an LRU by real-time PPO, the reference network's
  encoder, on the masked Pendulum: the launcher's summary names both and the returns are
  Pendulum's (negative, unscaled by --reward_scale)."""
  logdir = str(tmp_path / "run")
  out = subprocess.run([
      sys.executable, "-m", "launch.online_rl", "--env=masked_pendulum", "--cells=gru,lru", "--algorithm=ppo",
      "--estimators=tbptt[num_steps=4],rtrl_elementwise", "--rollout_steps=8",
      "--ppo_minibatches=2", "--hidden_size=3", "--num_envs=2", "--seeds=2",
      "--encoder_size=4", "--reward_scale=0.1", "--train_steps=400", "--log_every=200",
      f"--logdir={logdir}"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  runs = json.load(open(os.path.join(logdir, "summary.json")))["runs"]
  assert [(r["cell"], r["estimator"]) for r in runs] == [
      ("gru", "tbptt[num_steps=4]"), ("gru", "rtrl_elementwise"),
      ("lru", "tbptt[num_steps=4]"), ("lru", "rtrl_elementwise")]
  for r in runs:
    returns = np.array([point[1] for point in r["curve"]])
    assert np.all(returns < -100), returns  # 200-step episodes of about -4 to -8 per step
  assert "BPTT over sequences" in open(os.path.join(logdir, "summary.md")).read()


def test_every_rl_flagfile_is_valid(tmp_path):
  """Each flagfile the RL guide's tables name passes launch.online_rl's checks (no compute)."""
  import test_launch_flags  # pylint: disable=g-import-not-at-top
  names = sorted(n for n in os.listdir(os.path.join(ROOT, "launch", "configs"))
                 if n.startswith("rl_"))
  assert len(names) >= 20
  cases = [[[f"--flagfile=launch/configs/{n}", "--logdir={case}/run"], str(tmp_path)]
           for n in names]
  out = subprocess.run([sys.executable, "-c", test_launch_flags.HARNESS, "online_rl",
                        json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, check=False)
  assert "RESULTS" in out.stdout, out.stderr[-3000:]
  results = json.loads(out.stdout.split("RESULTS", 1)[1])
  assert [r["outcome"] for r in results] == ["accepted"] * len(names), list(zip(names, results))
