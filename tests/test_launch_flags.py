"""Every bad flag value of launch.tune, launch.meta_train, launch.online_rnn, launch.online_rl and
launch.benchmark is
refused by the
script's validate_flags() with one line naming the flag, before any file is written.

The table runs in one subprocess per script (the three scripts define flags of the same names,
which absl keeps in one global registry): each case parses its flags in-process and calls the
script's validate_flags(), so the ~80 cases take seconds, not a process start each. The test
that main() calls validate_flags() before anything else is in test_launch_tune.py.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = str(2**70)

BASE = {
    "tune": ["--problem=influence_balancing", "--problem_option=horizon=20", "--num_steps=5",
             "--outer_steps=8", "--checkpoint_every=4", "--meta_optimizer=sgd",
             "--meta_lr=1e-4", "--estimator=rtrl", "--logdir={case}/run"],
    "online_rnn": ["--hidden_size=8", "--train_steps=20", "--eval_every=10", "--eval_steps=10",
                   "--estimators=rtrl_elementwise,uoro", "--logdir={case}/run"],
    "online_rl": ["--env=repeat_first", "--hidden_size=4", "--num_envs=2", "--seeds=2",
                  "--train_steps=20", "--log_every=10", "--cells=rtu_linear,elstm",
                  "--estimators=rtrl_elementwise,tbptt[num_steps=2]", "--logdir={case}/run"],
    "meta_train": ["--family=quadratic", "--family_option=dim=4", "--horizon=20", "--num_steps=5",
                   "--num_tasks=2", "--outer_steps=4", "--num_test_tasks=2",
                   "--logdir={case}/run"],
    "benchmark": ["--suites=headline", "--estimators=tbptt", "--sweep_estimators=tbptt",
                  "--memory_estimators=tbptt", "--repeats=1", "--output_dir={case}/out"],
}
PES = "--estimator=pes"
# (extra flags, the flag the message must name). Each case folder holds file.txt, outside/ and
# link -> outside/target.txt beforehand; nothing in it may change.
CASES = {
    "meta_train": [
        (["--family=mnist"], "family"), (["--family="], "family"),
        (["--family_option=dim=0"], "family_option"), (["--family_option=dim=abc"], "family_option"),
        (["--family_option=noequals"], "family_option"), (["--family_option=dimm=3"], "family_option"),
        (["--learned_optimizer=lstm"], "learned_optimizer"),
        (["--learned_optimizer_option=hidden=(0,)"], "learned_optimizer_option"),
        (["--learned_optimizer_option=decays=(1.5,)"], "learned_optimizer_option"),
        (["--learned_optimizer_option=step_mult=-1"], "learned_optimizer_option"),
        (["--learned_optimizer_option=bogus=1"], "learned_optimizer_option"),
        (["--learned_optimizer_option=hidden=32"], "learned_optimizer_option"),
        (["--family=mnist1d_mlp", "--family_option=init_scales=2"], "family_option"),
        (["--estimator=rtrl"], "estimator"), (["--estimator=uoro"], "estimator"),
        (["--estimator="], "estimator"), (["--estimator=pes[num_particles=3]"], "estimator"),
        (["--horizon=0"], "horizon"), (["--horizon=-1"], "horizon"), (["--horizon=abc"], "horizon"),
        (["--num_steps=0"], "num_steps"), (["--num_steps=7"], "num_steps"),
        (["--num_particles=3"], "num_particles"), (["--num_particles=0"], "num_particles"),
        (["--sigma=0"], "sigma"), (["--sigma=nan"], "sigma"), (["--sigma=-1"], "sigma"),
        (["--num_tasks=0"], "num_tasks"), (["--num_tasks=-1"], "num_tasks"),
        (["--num_tasks=1000000000000"], "num_tasks"),
        (["--meta_optimizer=adamw"], "meta_optimizer"),
        (["--meta_lr=0"], "meta_lr"), (["--meta_lr=-1"], "meta_lr"), (["--meta_lr=nan"], "meta_lr"),
        (["--meta_lr=inf"], "meta_lr"),
        (["--max_grad_norm=-1"], "max_grad_norm"), (["--max_grad_norm=nan"], "max_grad_norm"),
        (["--outer_steps=0"], "outer_steps"), (["--seed=-1"], "seed"), (["--seed=" + BIG], "seed"),
        (["--checkpoint_every=-1"], "checkpoint_every"), (["--test_every=-1"], "test_every"),
        (["--log_every=0"], "log_every"), (["--num_test_tasks=0"], "num_test_tasks"),
        (["--validate_every=-1"], "validate_every"), (["--shrink=0"], "shrink"),
        (["--shrink=1.5"], "shrink"), (["--shrink=nan"], "shrink"),
        (["--num_validation_tasks=0"], "num_validation_tasks"),
        (["--adam_lrs=abc"], "adam_lrs"), (["--adam_lrs=0"], "adam_lrs"),
        (["--adam_lrs=-1e-3"], "adam_lrs"), (["--adam_lrs="], "adam_lrs"),
        (["--sgd_lrs=nan"], "sgd_lrs"),
        (["--num_processes=0"], "num_processes"), (["--process_id=1"], "process_id"),
        (["--process_id=-1"], "process_id"),
        (["--coordinator_address=127.0.0.1:1234"], "coordinator_address"),
        (["--num_processes=2"], "coordinator_address"),
        (["--num_processes=2", "--coordinator_address=localhost"], "coordinator_address"),
        (["--num_processes=2", "--coordinator_address=127.0.0.1:70000"], "coordinator_address"),
        (["--logdir={case}/file.txt"], "logdir"), (["--logdir={case}/link"], "logdir"),
        (["--logdir=/proc/metaopt-cannot-write-here"], "logdir"),
    ],
    "tune": [
        (["--problem=mnist"], "problem"), (["--problem="], "problem"),
        (["--problem=no_such_module_xyz:make"], "problem"),
        (["--problem=unrolled:no_such_factory"], "problem"), (["--problem=unrolled:a:b"], "problem"),
        (["--problem=unrolled.registry:names"], "problem"),  # returns a list, not a Problem
        (["--problem_option=widht=3"], "problem_option"),
        (["--problem_option=horizon=0"], "problem_option"),
        (["--problem_option=horizon=-5"], "problem_option"),
        (["--problem_option=horizon=abc"], "problem_option"),
        (["--problem_option=noequals"], "problem_option"),
        (["--estimator=bptt"], "estimator"), (["--estimator="], "estimator"),
        (["--estimator=uoro[rank=0]"], "estimator"),
        (["--estimator=pes[num_particles=3]"], "estimator"),
        (["--num_steps=0"], "num_steps"), (["--num_steps=-1"], "num_steps"),
        (["--num_steps=7"], "num_steps"), (["--num_steps=1000000000000"], "num_steps"),
        (["--num_steps=abc"], "num_steps"), (["--num_steps=1.5"], "num_steps"),
        ([PES, "--num_particles=3"], "num_particles"), ([PES, "--num_particles=0"], "num_particles"),
        ([PES, "--num_particles=-2"], "num_particles"), ([PES, "--sigma=0"], "sigma"),
        ([PES, "--sigma=-1"], "sigma"), ([PES, "--sigma=nan"], "sigma"),
        ([PES, "--sigma=inf"], "sigma"),
        (["--num_chains=0"], "num_chains"), (["--num_chains=-1"], "num_chains"),
        (["--num_chains=1000000000000"], "num_chains"), (["--num_chains=1e9"], "num_chains"),
        (["--meta_optimizer=adamw"], "meta_optimizer"),
        (["--meta_lr=0"], "meta_lr"), (["--meta_lr=-1"], "meta_lr"), (["--meta_lr=nan"], "meta_lr"),
        (["--meta_lr=inf"], "meta_lr"), (["--meta_lr=abc"], "meta_lr"),
        (["--max_grad_norm=0"], "max_grad_norm"), (["--max_grad_norm=-1"], "max_grad_norm"),
        (["--max_grad_norm=nan"], "max_grad_norm"), (["--max_grad_norm=inf"], "max_grad_norm"),
        (["--outer_steps=0"], "outer_steps"), (["--outer_steps=-1"], "outer_steps"),
        (["--seed=-1"], "seed"), ([f"--seed={BIG}"], "seed"),
        (["--logdir=/proc/metaopt-cannot-write-here"], "logdir"),
        (["--logdir={case}/file.txt"], "logdir"), (["--logdir={case}/file.txt/run"], "logdir"),
        (["--logdir={case}/link"], "logdir"),
        (["--checkpoint_every=0"], "checkpoint_every"), (["--checkpoint_every=-1"], "checkpoint_every"),
        (["--log_every=-1"], "log_every"), (["--image_every=-1"], "image_every"),
        (["--max_skipped=-1"], "max_skipped"), (["--evaluate=maybe"], "evaluate"),
        (["--max_update=-1"], "max_update"), (["--max_update=nan"], "max_update"),
        (["--warmup_steps=-1"], "warmup_steps"), (["--mode=single"], "mode"),
        (["--decay_steps=-1"], "decay_steps"),
        (["--mode=single_run"], "outer_steps"),  # the base case's --outer_steps=8 is not one run
    ],
    "online_rnn": [
        (["--cell=gru"], "cell"), (["--task=maze"], "task"),
        (["--task_option=delay=0"], "task_option"), (["--task_option=delay=-1"], "task_option"),
        (["--task_option=nope=1"], "task_option"), (["--task_option=noequals"], "task_option"),
        (["--hidden_size=0"], "hidden_size"), (["--hidden_size=-1"], "hidden_size"),
        (["--hidden_size=1000000000"], "hidden_size"),
        (["--cell=dense_tanh", "--estimators=uoro", "--hidden_size=100000"], "hidden_size"),
        (["--estimators="], "estimators"), (["--estimators=bptt"], "estimators"),
        (["--estimators=full_bptt"], "estimators"),
        (["--estimators=uoro,uoro"], "estimators"), (["--estimators=uoro[rank=0]"], "estimators"),
        (["--num_steps=0"], "num_steps"), (["--num_steps=-1"], "num_steps"),
        (["--num_steps=3"], "num_steps"),
        (["--estimators=pes", "--num_particles=3"], "num_particles"),
        (["--estimators=pes", "--num_particles=0"], "num_particles"),
        (["--estimators=pes", "--sigma=0"], "sigma"), (["--estimators=pes", "--sigma=nan"], "sigma"),
        (["--estimators=pes", "--sigma=inf"], "sigma"),
        (["--train_steps=0"], "train_steps"), (["--train_steps=-10"], "train_steps"),
        (["--train_steps=15"], "train_steps"),
        (["--learning_rate=0"], "learning_rate"), (["--learning_rate=-1"], "learning_rate"),
        (["--learning_rate=nan"], "learning_rate"), (["--learning_rate=inf"], "learning_rate"),
        (["--max_grad_norm=0"], "max_grad_norm"), (["--max_grad_norm=-1"], "max_grad_norm"),
        (["--max_grad_norm=nan"], "max_grad_norm"), (["--max_grad_norm=inf"], "max_grad_norm"),
        (["--eval_every=0"], "eval_every"), (["--eval_every=-1"], "eval_every"),
        (["--eval_steps=0"], "eval_steps"), (["--eval_steps=-1"], "eval_steps"),
        (["--target_accuracy=nan"], "target_accuracy"),
        (["--target_accuracy=-0.1"], "target_accuracy"),
        (["--target_accuracy=1.5"], "target_accuracy"),
        (["--seed=-1"], "seed"), ([f"--seed={BIG}"], "seed"),
        (["--logdir=/proc/metaopt-cannot-write-here"], "logdir"),
        (["--logdir={case}/file.txt/run"], "logdir"), (["--logdir={case}/link"], "logdir"),
    ],
    "online_rl": [
        (["--env=pong"], "env"), (["--env_option=length=0"], "env_option"),
        (["--env_option=nope=1"], "env_option"), (["--env_option=noequals"], "env_option"),
        (["--cells=transformer"], "cells"), (["--cells="], "cells"), (["--cells=elstm,elstm"], "cells"),
        (["--estimators="], "estimators"), (["--estimators=bptt"], "estimators"),
        (["--estimators=full_bptt"], "estimators"), (["--estimators=pes"], "estimators"),
        (["--estimators=uoro,uoro"], "estimators"),
        (["--estimators=tbptt[num_steps=3]"], "estimators"),
        (["--num_steps=0"], "num_steps"), (["--hidden_size=0"], "hidden_size"),
        (["--hidden_size=1000000000"], "hidden_size"), (["--num_envs=0"], "num_envs"),
        (["--seeds=0"], "seeds"), (["--head_hidden=-1"], "head_hidden"),
        (["--train_steps=0"], "train_steps"),
        (["--train_steps=15"], "train_steps"), (["--log_every=0"], "log_every"),
        (["--learning_rate=0"], "learning_rate"), (["--learning_rate=nan"], "learning_rate"),
        (["--max_grad_norm=-1"], "max_grad_norm"), (["--gamma=1.5"], "gamma"),
        (["--gamma=nan"], "gamma"), (["--entropy_cost=-1"], "entropy_cost"),
        (["--value_cost=inf"], "value_cost"), (["--algorithm=dqn"], "algorithm"),
        (["--algorithm=ppo", "--estimators=uoro", "--rollout_steps=10"], "estimators"),
        (["--algorithm=ppo", "--estimators=tbptt[num_steps=3]", "--rollout_steps=10"],
         "estimators"),
        (["--algorithm=ppo", "--estimators=tbptt[num_steps=5]", "--rollout_steps=10",
          "--ppo_minibatches=3"], "ppo_minibatches"),
        (["--encoder_size=-1"], "encoder_size"), (["--reward_scale=0"], "reward_scale"),
        (["--reward_scale=nan"], "reward_scale"),
        (["--algorithm=ppo", "--estimators=rtrl_elementwise", "--rollout_steps=3"],
         "rollout_steps"),
        (["--algorithm=ppo", "--estimators=rtrl_elementwise", "--rollout_steps=5",
          "--ppo_minibatches=3"], "ppo_minibatches"),
        (["--rollout_steps=0"], "rollout_steps"), (["--ppo_epochs=0"], "ppo_epochs"),
        (["--clip=0"], "clip"), (["--clip=nan"], "clip"), (["--gae_lambda=2"], "gae_lambda"),
        (["--logdir=/proc/metaopt-cannot-write-here"], "logdir"),
        (["--logdir={case}/file.txt/run"], "logdir"), (["--logdir={case}/link"], "logdir"),
    ],
    "benchmark": [
        (["--suites="], "suites"), (["--suites=nope"], "suites"),
        (["--estimators="], "estimators"), (["--estimators=bptt"], "estimators"),
        (["--sweep_estimators="], "sweep_estimators"),
        (["--sweep_estimators=bptt"], "sweep_estimators"),
        (["--particles_estimator=uoro"], "particles_estimator"),
        (["--particles_estimator=bptt"], "particles_estimator"),
        (["--memory_estimators=bptt"], "memory_estimators"),
        (["--num_steps=0"], "num_steps"), (["--num_steps=-1"], "num_steps"),
        (["--num_steps=30"], "num_steps"),
        (["--num_particles=0"], "num_particles"), (["--num_particles=3"], "num_particles"),
        (["--num_particles=-2"], "num_particles"),
        (["--repeats=0"], "repeats"), (["--repeats=-1"], "repeats"),
        (["--output_dir=/proc/metaopt-cannot-write-here"], "output_dir"),
        (["--output_dir={case}/file.txt/out"], "output_dir"),
        (["--output_dir={case}/file.txt"], "output_dir"),
        (["--memory_horizons=abc"], "memory_horizons"), (["--memory_horizons=0"], "memory_horizons"),
        (["--memory_horizons=-20"], "memory_horizons"), (["--memory_horizons=30"], "memory_horizons"),
        (["--memory_horizons="], "memory_horizons"),
        (["--memory_problem=mnist"], "memory_problem"), (["--memory_timing=maybe"], "memory_timing"),
        (["--output_json=/proc/metaopt-cannot-write-here.json"], "output_json"),
        (["--output_json={case}/outside"], "output_json"),
        (["--output_json={case}/file.txt/results.json"], "output_json"),
        (["--output_json={case}/link"], "output_json"),
    ],
}

HARNESS = r"""
import importlib, json, os, sys, time
from absl import app, flags
script, cases = sys.argv[1], json.loads(sys.argv[2])
module = importlib.import_module("launch." + script)
FLAGS = flags.FLAGS

def snapshot(folder):
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      out[rel] = ("link:" + os.readlink(path) if os.path.islink(path) else
                  "dir" if os.path.isdir(path) else open(path, "rb").read().decode("latin-1"))
  return out

results = []
for i, (args, tmp) in enumerate(cases):
  case = os.path.join(tmp, f"case{i}")
  os.makedirs(os.path.join(case, "outside"))
  open(os.path.join(case, "file.txt"), "w").write("precious")
  open(os.path.join(case, "outside", "target.txt"), "w").write("precious")
  os.symlink(os.path.join(case, "outside", "target.txt"), os.path.join(case, "link"))
  before = snapshot(case)
  args = [a.replace("{case}", case) for a in args]
  FLAGS.unparse_flags()
  start = time.time()
  try:
    FLAGS(["prog", *args])
    (getattr(module, "validate_flags", None) or module.config_from_flags)()
    outcome, message = "accepted", ""
  except (app.UsageError, flags.Error) as e:
    outcome, message = "usage", str(e)
  except SystemExit as e:
    outcome, message = "exit", str(e.code)
  except Exception as e:
    outcome, message = "traceback", f"{type(e).__name__}: {e}"
  results.append({"outcome": outcome, "message": message, "seconds": time.time() - start,
                  "unchanged": snapshot(case) == before})
print("RESULTS" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """Runs each script's table (the valid base flags first) in one subprocess; cached."""
  cache = {}

  def get(script):
    if script not in cache:
      tmp = str(tmp_path_factory.mktemp(script))
      cases = [[BASE[script], tmp]] + [[BASE[script] + args, tmp] for args, _ in CASES[script]]
      out = subprocess.run([sys.executable, "-c", HARNESS, script, json.dumps(cases)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
      assert "RESULTS" in out.stdout, out.stderr[-3000:]
      cache[script] = json.loads(out.stdout.split("RESULTS", 1)[1])
    return cache[script]

  return get


@pytest.mark.parametrize("script", sorted(CASES))
def test_the_base_flags_are_valid(script, outcomes):
  assert outcomes(script)[0]["outcome"] == "accepted", outcomes(script)[0]


@pytest.mark.parametrize("script, args, flag", [
    (script, args, flag) for script, cases in CASES.items() for args, flag in cases],
    ids=[f"{script}:{' '.join(args)}" for script, cases in CASES.items() for args, _ in cases])
def test_a_bad_flag_is_refused_in_one_line_naming_it_and_writes_nothing(script, args, flag,
                                                                        outcomes):
  result = outcomes(script)[CASES[script].index((args, flag)) + 1]
  assert result["outcome"] == "usage", result
  assert f"--{flag}" in result["message"] and "\n" not in result["message"].strip(), result
  assert result["unchanged"], result
