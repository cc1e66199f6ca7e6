"""Structured RTRL for element-wise recurrent cells: exact against jax.grad and generic rtrl;
the cells, the memory streams and the online-RNN launcher."""

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
import systems
from unrolled import online_rnn
from unrolled import streams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELEMENTWISE_CELLS = ["elstm", "rtu_linear", "rtu_nonlinear", "lru"]
FAST_CELLS = {"rtu_nonlinear"}  # what `-m "not slow"` runs of the per-cell tests


def f64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def tiny(cell, *, hidden_size=3, horizon=6, init_dependent=False):
  """A small online RNN; optionally with an initial hidden state that depends on the weights."""
  problem = online_rnn.online_rnn(cell=cell, hidden_size=hidden_size, horizon=horizon,
                                  task_options={"delay": 2, "num_symbols": 3})
  system = problem.system
  if init_dependent:
    c = system.cell
    initial = lambda p: 0.3 * jnp.tanh(sum(jnp.sum(x) for x in jax.tree.leaves(p))) * jnp.ones_like(
        c.initial(p))
    system = metaopt.recurrent.elementwise_system(
        c._replace(initial=initial), stream_init=system.stream_init, observe=system.observe,
        readout_loss=system.readout_loss, horizon=horizon)
  return system, problem.theta


def windows_sum(est, theta, key, num_windows):
  """metaopt.sum_window_grads, jitted."""
  return jax.jit(lambda th, k: metaopt.sum_window_grads(est, th, k, num_windows=num_windows))(
      theta, key)


def exact(system, theta, key, num_steps, num_windows):
  """metaopt.exact_grad on the keys windows_sum gives the estimator, horizon resets included."""
  return jax.jit(lambda th, k: metaopt.exact_grad(system, th, k, num_steps=num_steps,
                                                  num_windows=num_windows))(theta, key)


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("init_dependent", [False, True], ids=["zero_init", "theta_init"])
@pytest.mark.parametrize("cell", systems.slow_unless(ELEMENTWISE_CELLS, FAST_CELLS))
def test_structured_rtrl_equals_grad_of_full_unroll(cell, init_dependent, x64):
  system, theta = tiny(cell, init_dependent=init_dependent)
  theta = f64(theta)
  est = metaopt.rtrl_elementwise(system, num_steps=2)
  got = systems.flat(windows_sum(est, theta, jax.random.key(0), 6))  # 2 horizons
  want = systems.flat(exact(system, theta, jax.random.key(0), 2, 6))
  assert got.dtype == np.float64
  rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert rel <= 1e-6, rel


@pytest.mark.parametrize("cell", systems.slow_unless(ELEMENTWISE_CELLS, FAST_CELLS))
def test_structured_rtrl_equals_generic_rtrl(cell, x64):
  system, theta = tiny(cell, hidden_size=2, init_dependent=True)
  theta = f64(theta)
  structured = windows_sum(metaopt.rtrl_elementwise(system, num_steps=3), theta,
                           jax.random.key(1), 4)
  generic = windows_sum(metaopt.rtrl(system, num_steps=3), theta, jax.random.key(1), 4)
  chex.assert_tree_all_finite(generic)  # assert_trees_all_close takes NaN for equal to NaN
  chex.assert_trees_all_close(structured, generic, rtol=1e-9, atol=1e-12)


def test_traces_are_linear_in_the_weights():
  """Memory: C x (weights per unit) per unit, i.e. C times the cell's weights, not a Jacobian."""
  for cell, channels in (("elstm", 1), ("rtu_linear", 2)):
    system, theta = tiny(cell, hidden_size=16)
    state = metaopt.rtrl_elementwise(system, num_steps=2).init(jax.random.key(0), theta)
    trace_size = sum(x.size for x in jax.tree.leaves(state.traces))
    assert trace_size == channels * sum(x.size for x in jax.tree.leaves(theta["cell"]))


def test_dense_cell_is_refused_but_generic_estimators_are_exact():
  problem = online_rnn.online_rnn(cell="dense_tanh", hidden_size=3, horizon=4,
                                  task_options={"delay": 1})
  with pytest.raises(ValueError, match="ElementwiseSystem"):
    metaopt.rtrl_elementwise(problem.system, num_steps=2)
  est = metaopt.rtrl(problem.system, num_steps=2)
  got = windows_sum(est, problem.theta, jax.random.key(0), 2)
  want = exact(problem.system, problem.theta, jax.random.key(0), 2, 2)
  chex.assert_tree_all_finite(want)  # assert_trees_all_close takes NaN for equal to NaN
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)


def test_bad_theta_layout_is_refused_before_compute():
  system, theta = tiny("elstm")
  est = metaopt.rtrl_elementwise(system, num_steps=2)
  with pytest.raises(ValueError, match='"cell" and "readout"'):
    est.init(jax.random.key(0), {"cell": theta["cell"]})
  bad = {**theta, "cell": {**theta["cell"], "b_z": jnp.zeros(5)}}
  with pytest.raises(ValueError, match="leading \\(unit\\) axis"):
    est.init(jax.random.key(0), bad)
  with pytest.raises(ValueError, match="num_steps"):
    metaopt.rtrl_elementwise(system, num_steps=4)


def test_unroll_is_not_retraced_and_state_is_checkpointable():
  system, theta = tiny("rtu_nonlinear")
  state, theta, unroll = systems.jit_unroll_without_retracing(
      metaopt.rtrl_elementwise(system, num_steps=2), theta)
  restored = jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, state))
  a = unroll(state, theta, jax.random.key(9))[1]
  b = unroll(restored, theta, jax.random.key(9))[1]
  chex.assert_tree_all_finite(a)  # assert_trees_all_equal takes NaN for equal to NaN
  chex.assert_trees_all_equal(a, b)


def run_stream(stream, n, seed=0):
  def body(s, k):
    s, x, target = stream.observe(s, k)
    return s, (x, target)
  _, (x, (label, mask)) = jax.lax.scan(body, stream.init(jax.random.key(seed)),
                                      jax.random.split(jax.random.key(seed + 1), n))
  return np.asarray(x), np.asarray(label), np.asarray(mask)


def test_delayed_recall_asks_for_the_cue_seen_delay_steps_earlier():
  delay, k = 7, 4
  x, label, mask = run_stream(streams.delayed_recall(delay=delay, num_symbols=k), 80)
  cue_steps = np.flatnonzero(x[:, k] == 1)
  np.testing.assert_array_equal(cue_steps, np.arange(0, 80, delay + 1))
  scored = np.flatnonzero(mask)
  np.testing.assert_array_equal(scored, cue_steps[:len(scored)] + delay)
  np.testing.assert_array_equal(label[scored], np.argmax(x[scored - delay, :k], axis=1))
  assert len(set(label[scored])) > 1


def test_t_maze_asks_for_the_cue_at_the_junction():
  x, label, mask = run_stream(streams.t_maze(min_length=3, max_length=6), 200)
  starts = np.flatnonzero(x[:, :2].sum(1) == 1)
  junctions = np.flatnonzero(x[:, 3] == 1)
  np.testing.assert_array_equal(np.flatnonzero(mask), junctions)
  assert len(junctions) >= 20
  # zip stops at the shorter: every episode is checked, only the last one may be cut off.
  assert len(starts) - len(junctions) in (0, 1)
  for s, j in zip(starts, junctions):
    assert 4 <= j - s <= 7  # cue, corridor of 3..6, junction
    assert label[j] == np.argmax(x[s, :2])
    assert np.all(x[s + 1:j, 2] == 1)  # the corridor in between
  assert len(set(label[junctions])) == 2


def test_stream_options_are_checked():
  with pytest.raises(ValueError, match="delay"):
    streams.delayed_recall(delay=0)
  with pytest.raises(ValueError, match="min_length"):
    streams.t_maze(min_length=5, max_length=2)
  with pytest.raises(ValueError, match="unknown cell"):
    online_rnn.online_rnn(cell="gru")


def launch(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "launch.online_rnn", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_launch_online_rnn_trains_and_logs_every_estimator(tmp_path):
  logdir = str(tmp_path / "run")
  specs = ["rtrl_elementwise", "uoro", "tbptt[num_steps=4]", "pes[num_steps=4]"]
  out = launch("--cell=rtu_linear", "--task=t_maze", "--hidden_size=4", "--train_steps=200",
               "--eval_every=100", "--eval_steps=100", "--num_particles=2",
               f"--estimators={','.join(specs)}", f"--logdir={logdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.load(open(os.path.join(logdir, "summary.json")))
  assert [r["estimator"] for r in summary["estimators"]] == specs
  for spec, record in zip(specs, summary["estimators"]):
    assert record["seconds_per_step"] > 0
    acc = event_accumulator.EventAccumulator(os.path.join(logdir, spec.replace("[", "_")
                                                          .replace("]", "_")))
    acc.Reload()
    accuracy = acc.Tensors("eval/accuracy")
    assert [e.step for e in accuracy] == [100, 200]
    assert [float(tensor_util.make_ndarray(e.tensor_proto)) for e in accuracy] == pytest.approx(
        [c[1] for c in record["curve"]])
  assert "| rtrl_elementwise |" in open(os.path.join(logdir, "summary.md")).read()
  assert open(os.path.join(logdir, "accuracy.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--cell=dense_tanh", "--estimators=rtrl_elementwise"], "element-wise cell"),
    (["--estimators=full_bptt"], "not an online estimator"),
    (["--estimators=tbptt[num_steps=7]", "--eval_every=100", "--train_steps=200"],
     "dividing --eval_every"),
    (["--task_option=delay=0"], "delay"),
    (["--estimators=pes", "--num_particles=3"], "num_particles"),
    (["--estimators=uoro,uoro"], "repeats an estimator"),
])
def test_launch_online_rnn_refuses_bad_flags(args, message, tmp_path):
  out = launch(*args, f"--logdir={tmp_path / 'run'}", timeout=60)
  assert out.returncode != 0
  assert message in out.stderr


@pytest.mark.parametrize("cell", systems.slow_unless(["elstm", "rtu_nonlinear", "dense_tanh"],
                                                     FAST_CELLS))
def test_float32_weights_work_with_x64_enabled(cell, x64):
  problem = online_rnn.online_rnn(cell=cell, task="t_maze", hidden_size=2, horizon=4)
  theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), problem.theta)
  est = metaopt.uoro(problem.system, num_steps=2)
  _, grad, _ = est.unroll(est.init(jax.random.key(0), theta), theta, jax.random.key(1))
  assert {x.dtype for x in jax.tree.leaves(grad)} == {np.dtype(np.float32)}


def test_lru_is_the_complex_recurrence_of_orvieto_et_al():
  """h' = lambda h + gamma (B x) with lambda = exp(-exp(nu_log) + i exp(theta_log)), moduli on
  the ring [r_min, r_max] and gamma initialised to sqrt(1 - |lambda|^2)."""
  from unrolled import cells  # pylint: disable=g-import-not-at-top
  layer = cells.lru(r_min=0.5, r_max=0.8)
  params = layer.init_params(jax.random.key(0), 3, 64)
  lam = jnp.exp(-jnp.exp(params["nu_log"]) + 1j * jnp.exp(params["theta_log"]))
  assert bool(jnp.all((jnp.abs(lam) >= 0.5 - 1e-6) & (jnp.abs(lam) <= 0.8 + 1e-6)))
  np.testing.assert_allclose(jnp.exp(params["gamma_log"]), jnp.sqrt(1 - jnp.abs(lam) ** 2),
                             rtol=1e-5)
  h = jax.random.normal(jax.random.key(1), (64, 2))
  x = jax.random.normal(jax.random.key(2), (3,))
  got = jax.vmap(layer.cell.step, in_axes=(0, 0, None))(h, params, x)
  b = params["B_re"] + 1j * params["B_im"]
  want = lam * (h[:, 0] + 1j * h[:, 1]) + jnp.exp(params["gamma_log"]) * (b @ x)
  np.testing.assert_allclose(got[:, 0], want.real, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[:, 1], want.imag, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make, kwargs, message", [
    ("lru", {"r_min": 0.9, "r_max": 0.5}, "r_min < r_max"),
    ("lru", {"r_max": 1.5}, "r_max <= 1"),
    ("lru", {"max_phase": 0.0}, "max_phase"),
    ("rtu", {"r_min": -0.1}, "0 <= r_min"),
    ("rtu", {"activation": "gelu"}, "activation"),
])
def test_cells_refuse_bad_options(make, kwargs, message):
  from unrolled import cells  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=message):
    getattr(cells, make)(**kwargs)
