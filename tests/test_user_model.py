"""A user's own model: the "Tune your own model" examples (docs/guides/own_model.md; the README
shows the first, the same text: tests/test_readme.py), and a module of one's own outside the
package driven by launch.tune (TensorBoard read back, resume) and launch.study."""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import optuna
import pytest
from tensorboard.backend.event_processing import event_accumulator

from studies import storage as storage_lib

pytestmark = pytest.mark.slow  # each example tunes for ~20 s; the rest start subprocesses

ROOT = pathlib.Path(__file__).parent.parent
USERMOD = textwrap.dedent('''
    import jax, jax.numpy as jnp, optax, unrolled

    def make_problem(hidden=8, horizon=20):
      x = jax.random.normal(jax.random.key(0), (256, 4))
      y = jnp.sin(x.sum(1, keepdims=True))
      def init_params(key):
        k1, k2 = jax.random.split(key)
        return [(jax.random.normal(k1, (4, hidden)) / 2, jnp.zeros(hidden)),
                (jax.random.normal(k2, (hidden, 1)) / hidden, jnp.zeros(1))]
      def loss_fn(params, batch):
        (w1, b1), (w2, b2) = params
        return jnp.mean((jnp.tanh(batch[0] @ w1 + b1) @ w2 + b2 - batch[1]) ** 2)
      def sample_batch(key):
        i = jax.random.randint(key, (32,), 0, 200)
        return x[i], y[i]
      return unrolled.optax_problem(
          loss_fn=loss_fn, sample_batch=sample_batch, init_params=init_params, horizon=horizon,
          validation_batch=(x[200:], y[200:]),
          optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
          hyperparams={"learning_rate": unrolled.scheduled(
              unrolled.schedules.piecewise_linear_log(0.1, num_knots=3, horizon=horizon)),
                       "weight_decay": unrolled.log(1e-3)})

    def returns_dict():
      return {"system": None}

    broken = 3
''')


def readme_examples():
  """The python blocks of the "Tune your own model" guide: the plain-JAX MLP, then Flax."""
  guide = (ROOT / "docs" / "guides" / "own_model.md").read_text()
  assert guide.startswith("# Tune your own model\n")
  return re.findall(r"```python\n(.*?)```", guide, re.S)


@pytest.fixture
def user_folder(tmp_path):
  folder = tmp_path / "mine"
  folder.mkdir()
  (folder / "usermod.py").write_text(USERMOD)
  return folder


def launch(module, *args, folder, timeout=300):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
  return subprocess.run([sys.executable, "-m", f"launch.{module}", *args], cwd=folder.parent,
                        env=env, capture_output=True, text=True, timeout=timeout)


def events(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir),
                                           size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


@pytest.mark.parametrize("index, logdir", [(0, "runs/my-mlp"), (1, "runs/my-flax")])
def test_readme_examples_run_as_written_tune_and_log(index, logdir, tmp_path, monkeypatch,
                                                        capsys):
  code = readme_examples()[index]
  assert len([l for l in code.splitlines() if l.strip()]) <= 25, "an example grew past 25 lines"
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(compile(code, f"own_model.md example {index}", "exec"), scope)
  result, problem = scope["result"], scope["problem"]
  out = capsys.readouterr().out
  assert "untuned" in out and "step 60/60" in out
  assert result.summary["tuned"]["validation_loss"] < result.summary["untuned"]["validation_loss"]
  assert result.summary["num_skipped"] == 0
  tuned = problem.hyperparameters(result.theta)
  assert set(tuned) >= {"learning_rate", "weight_decay", "learning_rate_curve"}
  assert float(tuned["weight_decay"]) != pytest.approx(float(problem.hyperparameters(
      problem.theta)["weight_decay"]))  # both hyperparameters moved
  acc = events(tmp_path / logdir)
  assert [e.step for e in acc.Tensors("hypergrad/weight_decay")] == list(range(1, 61))
  assert "eval/validation_loss" in acc.Tags()["tensors"]
  assert json.load(open(tmp_path / logdir / "summary.json"))["theta"] == result.summary["theta"]


def test_a_user_module_runs_in_launch_tune_end_to_end_and_resumes(user_folder, tmp_path):
  logdir = tmp_path / "run"
  common = ["--problem=usermod:make_problem", "--problem_option=hidden=6", "--estimator=rtrl",
            "--num_steps=5", "--checkpoint_every=2", f"--logdir={logdir}"]
  out = launch("tune", *common, "--outer_steps=4", folder=user_folder)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "An optax training loop (37 parameters" in out.stdout and "step 4/4" in out.stdout
  config = json.load(open(logdir / "config.json"))
  assert config["problem"] == "usermod:make_problem" and config["problem_option"] == ["hidden=6"]
  out = launch("tune", *common, "--outer_steps=8", folder=user_folder)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resuming {logdir} from outer step 4" in out.stdout
  acc = events(logdir)
  for tag in ("hypergrad/learning_rate/knot_0", "hyperparameters/learning_rate/knot_2",
              "hyperparameters/weight_decay"):
    assert [e.step for e in acc.Tensors(tag)] == list(range(1, 9)), tag
  assert [e.step for e in acc.Tensors("eval/validation_loss")] == [2, 4, 6, 8]
  summary = json.load(open(logdir / "summary.json"))
  assert summary["outer_steps"] == 8 and np.isfinite(summary["theta"]).all()


def test_a_user_module_runs_one_study_trial(user_folder, tmp_path):
  output = tmp_path / "study"
  out = launch("study", "--study=bias_variance", "--problem=usermod:make_problem",
               "--estimators=rtrl", "--num_steps=5", "--num_chains=1", "--num_samples=4",
               "--n_trials=1", f"--output_dir={output}", folder=user_folder)
  assert out.returncode == 0, out.stderr[-3000:]
  study = optuna.load_study(study_name="bias_variance-usermod_make_problem",
                            storage=storage_lib.make_storage(
                                storage_lib.default_storage_url(str(output))))
  trials = study.get_trials(deepcopy=False)
  assert [t.state.name for t in trials] == ["COMPLETE"], trials
  assert trials[0].params["estimator"] == "rtrl" and np.isfinite(trials[0].values).all()


@pytest.mark.parametrize("module, problem, message", [
    # the flag tables (test_launch_flags, test_study_flags) hold more cases, in-process
    ("tune", "usermod:make_probem",
     "--problem='usermod:make_probem': module 'usermod' has no attribute"),
    ("tune", "usermod:returns_dict", "the factory returned dict, not an unrolled.Problem"),
    ("study", "usermod:broken", "'broken' is int 3, not a function"),
])
def test_a_bad_import_path_is_one_line_before_any_compute(module, problem, message, user_folder,
                                                          tmp_path):
  where = ([f"--logdir={tmp_path / 'out'}"] if module == "tune"
           else [f"--output_dir={tmp_path / 'out'}", "--estimators=rtrl"])
  out = launch(module, f"--problem={problem}", *where, folder=user_folder, timeout=120)
  assert out.returncode != 0
  errors = [l for l in out.stderr.splitlines() if message in l]
  assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "out").exists()
