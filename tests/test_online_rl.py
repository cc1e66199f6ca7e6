"""Online actor-critic agents (metaopt.rl.agent_system): the loop, its resets, exact RTRL of the
actor-critic loss, and launch.online_rl end to end."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

import metaopt
from unrolled import online_rl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def agent(cell, *, env="repeat_first", horizon=None, num_envs=3, head_hidden=0, **env_options):
  made = online_rl.online_agent(cell=cell, env=env, hidden_size=3, num_envs=num_envs,
                                gamma=0.9, env_options=env_options or {"length": 4,
                                                                       "num_symbols": 3},
                                head_hidden=head_hidden)
  system = made.system
  if horizon is not None:
    system = metaopt.rl.agent_system(system.cell, env_reset=system.env_reset,
                                  env_step=system.env_step, heads=system.heads,
                                  horizon=horizon, num_envs=num_envs, gamma=0.9)
  # Non-zero heads: the policy and the value both carry gradient into the layer.
  theta = jax.tree.map(lambda x: x + 0.3 * jnp.cos(jnp.arange(x.size).reshape(x.shape)),
                       made.theta)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  return system, jax.tree.map(lambda x: x.astype(dtype), theta)


# Every cell, and both window lengths in turn (windows of 1, and windows of 3 that end off the
# episodes' ends): each cell's own recursion is what differs, the windows are the estimator's.
@pytest.mark.parametrize("cell, num_steps", [
    (cell, (1, 3)[i % 2]) for i, cell in enumerate(online_rl.AGENT_CELLS)])
def test_rtrl_is_exact_for_the_actor_critic_loss(cell, num_steps, x64):
  """Against jax.grad of the whole unroll on the same keys (same sampled actions): two horizons
  of 12 steps, episodes of 4 (hidden state and traces reset on done), theta-dependent h_0."""
  system, theta = agent(cell, horizon=12)
  est = metaopt.rtrl_elementwise(system, num_steps=num_steps)
  windows = 24 // num_steps
  got = metaopt.sum_window_grads(est, theta, jax.random.key(3), num_windows=windows)
  exact = metaopt.exact_grad(system, theta, jax.random.key(3), num_steps=num_steps,
                             num_windows=windows)
  chex.assert_trees_all_close(got, exact, rtol=1e-9, atol=1e-12)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(exact["cell"])) > 1e-3


def test_rtrl_stays_exact_with_the_reference_codes_mlp_heads(x64):
  system, theta = agent("rtu_linear", horizon=12, head_hidden=5)
  assert theta["readout"]["pi_hidden_w"].shape == (5, 6)
  est = metaopt.rtrl_elementwise(system, num_steps=2)
  got = metaopt.sum_window_grads(est, theta, jax.random.key(3), num_windows=12)
  exact = metaopt.exact_grad(system, theta, jax.random.key(3), num_steps=2, num_windows=12)
  chex.assert_trees_all_close(got, exact, rtol=1e-9, atol=1e-12)


def test_truncated_bptt_over_one_step_is_not_exact(x64):
  """The memory a one-step truncation drops is real: it differs from the exact gradient."""
  system, theta = agent("rtu_linear", horizon=12)
  est = metaopt.tbptt(system, num_steps=1)
  got = metaopt.sum_window_grads(est, theta, jax.random.key(3), num_windows=24)
  exact = metaopt.exact_grad(system, theta, jax.random.key(3), num_steps=1, num_windows=24)
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in
            zip(jax.tree.leaves(got["cell"]), jax.tree.leaves(exact["cell"])))
  assert gap > 1e-4


def test_hidden_state_restarts_on_done():
  """After an episode ends, the hidden state is the cell's step from its initial state on the
  next episode's first observation: nothing of the old episode leaks in."""
  system, theta = agent("rtu_nonlinear", num_envs=2)
  state = system.init(jax.random.key(0), theta)
  initial = jax.vmap(system.cell.initial)(theta["cell"])
  fresh = jax.vmap(lambda x: jax.vmap(system.cell.step, (0, 0, None))(initial, theta["cell"], x))
  step = jax.jit(system.step)
  for k in range(9):
    before = state
    state, loss = step(state, theta, jax.random.fold_in(jax.random.key(1), k))
    done = state.episodes > before.episodes
    assert bool(jnp.any(done)) == (k % 4 == 3)  # episodes of 4 steps
    # All environments start together, so their episodes end together.
    if k % 4 == 3:
      np.testing.assert_allclose(state.hidden, fresh(state.obs), rtol=1e-6)
    else:
      assert not np.allclose(state.hidden, fresh(state.obs))
    assert np.isfinite(float(loss))


def test_episode_statistics_count_finished_episodes():
  def env_step(key, t, action):
    del key, action
    done = t + 1 >= 3
    t = jnp.where(done, 0, t + 1)
    return jnp.ones(1), t, jnp.float32(1.0), done

  cell = metaopt.recurrent.ElementwiseCell(lambda p: jnp.zeros(1), lambda h, p, x: p["w"] * h + x,
                                 lambda h, p, x: h)
  system = metaopt.rl.agent_system(cell, env_reset=lambda key: (jnp.ones(1), jnp.int32(0)),
                                env_step=env_step,
                                heads=lambda r, o, x: (r * jnp.ones(2), o[0, 0]),
                                horizon=100, num_envs=2)
  theta = {"cell": {"w": jnp.full(2, 0.5)}, "readout": jnp.float32(0.0)}
  state = system.init(jax.random.key(0), theta)
  for k in range(7):
    state, _ = system.step(state, theta, jax.random.key(k))
  np.testing.assert_array_equal(state.episodes, [2, 2])
  np.testing.assert_array_equal(state.returns, [6.0, 6.0])
  np.testing.assert_array_equal(state.lengths, [6, 6])
  np.testing.assert_array_equal(state.episode_return, [1.0, 1.0])
  # Uniform policy over 2 actions: entropy log 2 per step, summed over 7 steps.
  np.testing.assert_allclose(state.entropy, [7 * np.log(2)] * 2, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(gamma=1.5), "gamma"), (dict(num_envs=0), "num_envs"),
    (dict(entropy_cost=-1.0), "entropy_cost"), (dict(value_cost=float("nan")), "value_cost"),
])
def test_bad_agent_options(kwargs, match):
  system, _ = agent("elstm")
  options = dict(env_reset=system.env_reset, env_step=system.env_step, heads=system.heads,
                 horizon=10)
  with pytest.raises(ValueError, match=match):
    metaopt.rl.agent_system(system.cell, **{**options, **kwargs})


def test_bad_agent_builder_options():
  with pytest.raises(ValueError, match="unknown cell"):
    online_rl.online_agent(cell="transformer")
  with pytest.raises(ValueError, match="unknown env"):
    online_rl.online_agent(env="pong")
  with pytest.raises(ValueError, match="head_hidden"):
    online_rl.online_agent(head_hidden=-1)


def launch(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "launch.online_rl", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_launch_online_rl_trains_logs_and_resumes(tmp_path):
  logdir = str(tmp_path / "run")
  specs = ["rtrl_elementwise", "uoro"]
  args = ["--env=repeat_first", "--env_option=length=4", "--cells=rtu_linear",
          "--hidden_size=3", "--num_envs=2", "--seeds=2", "--train_steps=40", "--log_every=20",
          f"--estimators={','.join(specs)}", f"--logdir={logdir}"]
  out = launch(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.load(open(os.path.join(logdir, "summary.json")))
  runs = summary["runs"]
  assert [(r["cell"], r["estimator"]) for r in runs] == [
      ("rtu_linear", s) for s in specs]
  for record in runs:
    assert record["seconds_per_step"] > 0 and record["diverged_seeds"] == 0
    assert [point[0] for point in record["curve"]] == [20, 40]
    # 2 envs x 20 steps, episodes of 4: every interval finishes episodes with returns in [0, 1].
    assert all(0 <= r <= 1 for point in record["curve"] for r in point[1])
    folder = os.path.join(logdir, record["cell"], record["estimator"].replace("[", "_")
                          .replace("]", "_"))
    acc = event_accumulator.EventAccumulator(folder)
    acc.Reload()
    returns = acc.Tensors("agent/return")
    assert [e.step for e in returns] == [20, 40]
    assert [float(tensor_util.make_ndarray(e.tensor_proto)) for e in returns] == pytest.approx(
        [np.mean(point[1]) for point in record["curve"]], rel=1e-5)
    tags = set(acc.Tags()["tensors"])
    assert {"agent/entropy", "agent/value_loss", "agent/episode_length"} <= tags
    assert ("agent/trace_norm" in tags) == record["estimator"].startswith("rtrl")
  assert "| rtu_linear | rtrl_elementwise |" in open(os.path.join(logdir, "summary.md")).read()
  assert open(os.path.join(logdir, "returns.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  # Rerun: every run resumes from its finished checkpoint and gives the same curves.
  os.remove(os.path.join(logdir, "summary.json"))
  again = launch(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("resumed") == len(runs)
  assert [r["curve"] for r in json.load(open(os.path.join(logdir, "summary.json")))["runs"]] == [
      r["curve"] for r in runs]
  # Another configuration on the same folder is refused in one line, its checkpoints kept.
  changed = launch(*[a if a != "--seeds=2" else "--seeds=3" for a in args])
  assert changed.returncode != 0 and "another configuration" in changed.stderr


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def test_the_reference_codes_cell_choices():
  """RTU: relu and r^2 ~ U(0, 1) by name (esraaelelimy/rtus); eLSTM: the output gate moved to
  the readout (IDSIA/rtrl-elstm), so the layer traces no gate weights."""
  from unrolled import cells
  layer = cells.rtu_reference()
  params = layer.init_params(jax.random.key(0), 3, 2000)
  r_sq = np.exp(-2 * np.exp(np.asarray(params["nu_log"])))
  assert r_sq.min() < 0.01 and r_sq.max() > 0.99 and abs(r_sq.mean() - 0.5) < 0.03
  np.testing.assert_array_equal(layer.cell.output(jnp.array([-1.0, 2.0]), None, None), [0.0, 2.0])
  default = cells.rtu().init_params(jax.random.key(0), 3, 2000)
  r_sq = np.exp(-2 * np.exp(np.asarray(default["nu_log"])))
  assert 0.25 - 1e-5 <= r_sq.min() and r_sq.max() <= 0.98 + 1e-5
  gated, readout = cells.elstm(), cells.elstm(output_gate="readout")
  assert {"W_o", "b_o"} <= set(gated.init_params(jax.random.key(0), 3, 4))
  assert not {"W_o", "b_o"} & set(readout.init_params(jax.random.key(0), 3, 4))
  _, theta = agent("elstm_readout_gate")
  assert {"gate_w", "gate_b"} <= set(theta["readout"])
  with pytest.raises(ValueError, match="output_gate"):
    cells.elstm(output_gate="dense")


def test_real_time_ppo_first_update_is_exact(x64):
  """With the rollout's own weights (first minibatch of the first epoch), the gradient through
  the stored hidden states and traces equals jax.grad of the PPO loss through a re-unroll of
  the same trajectory from the horizon start (another implementation of the loss, here)."""
  import optax  # pylint: disable=g-import-not-at-top
  from metaopt._src.rl import agent as agent_lib  # pylint: disable=g-import-not-at-top
  system, theta = agent("rtu_nonlinear", horizon=100)
  num_steps, clip = 6, 0.2
  ppo = metaopt.rl.real_time_ppo(system, optax.sgd(1.0), num_steps=num_steps, num_epochs=1,
                              num_minibatches=1, clip=clip, normalize_advantages=False)
  key = jax.random.key(7)
  state = ppo.init(key, theta)
  new_state, _ = ppo.step(state)
  got = jax.tree.map(lambda a, b: a - b, theta, new_state.theta)  # sgd(1): theta - grad

  k_env, k_next = jax.random.split(key)
  k_roll = jax.random.split(k_next, 3)[0]
  keys = jax.random.split(k_roll, num_steps)

  def trajectory(th):
    def body(inner, k):
      outputs = jax.vmap(lambda h, o: metaopt.recurrent.cell_outputs(system.cell, h, th["cell"], o))(
          inner.hidden, inner.obs)
      logits, values = jax.vmap(lambda o, x: system.heads(th["readout"], o, x))(outputs,
                                                                               inner.obs)
      new_inner, aux = agent_lib.transition(system, inner, th, k)
      return new_inner, (jax.nn.log_softmax(logits), values, aux)
    inner, out = jax.lax.scan(body, system.init(k_env, th), keys)
    last = jax.vmap(lambda h, o: system.heads(
        th["readout"], metaopt.recurrent.cell_outputs(system.cell, h, th["cell"], o), o)[1])(
            inner.hidden, inner.obs)
    return out, last

  (log_p0, values0, aux), last0 = trajectory(theta)
  actions = aux.action
  old = jnp.take_along_axis(log_p0, actions[..., None], axis=-1)[..., 0]
  not_done = 1.0 - aux.done
  next_v = jnp.concatenate([values0[1:], last0[None]])
  deltas = aux.reward + system.gamma * not_done * next_v - values0
  adv, a = [], jnp.zeros_like(last0)
  for t in reversed(range(num_steps)):
    a = deltas[t] + system.gamma * 0.95 * not_done[t] * a
    adv.insert(0, a)
  adv = jnp.stack(adv)
  ret = adv + values0

  def loss(th):
    (log_p, values, _), _ = trajectory(th)
    ratio = jnp.exp(jnp.take_along_axis(log_p, actions[..., None], axis=-1)[..., 0] - old)
    surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv)
    clipped = values0 + jnp.clip(values - values0, -clip, clip)
    value_loss = jnp.maximum((values - ret) ** 2, (clipped - ret) ** 2) / 2
    entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
    return jnp.mean(surrogate + system.value_cost * value_loss - system.entropy_cost * entropy)

  chex.assert_trees_all_close(got, jax.grad(loss)(theta), rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_launch_online_rl_runs_real_time_ppo(tmp_path):
  logdir = str(tmp_path / "run")
  out = launch("--env=count_recall", "--env_option=length=4", "--cells=elstm_readout_gate",
               "--algorithm=ppo", "--estimators=rtrl_elementwise", "--rollout_steps=8",
               "--ppo_minibatches=2", "--hidden_size=3", "--num_envs=2", "--seeds=2",
               "--train_steps=32", "--log_every=16", f"--logdir={logdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  (record,) = json.load(open(os.path.join(logdir, "summary.json")))["runs"]
  assert record["num_steps"] == 8 and record["diverged_seeds"] == 0
  assert [point[0] for point in record["curve"]] == [16, 32]
  assert "real-time PPO" in open(os.path.join(logdir, "summary.md")).read()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_minibatches=5), "num_minibatches"), (dict(clip=0.0), "clip"),
    (dict(gae_lambda=1.5), "gae_lambda"), (dict(num_epochs=0), "num_epochs"),
])
def test_bad_real_time_ppo_options(kwargs, match):
  import optax  # pylint: disable=g-import-not-at-top
  system, _ = agent("elstm")
  with pytest.raises(ValueError, match=match):
    metaopt.rl.real_time_ppo(system, optax.adam(1e-3), num_steps=4, **kwargs)
