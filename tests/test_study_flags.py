"""Every bad flag value of launch.study is refused before anything is written or computed, with one
line naming the flag (issue 13), and study names cannot leave the output root (issue 12).

All cases run in ONE subprocess (the imports cost seconds; launch.study defines absl flags on the
global FLAGS, which another launcher imported in this process would clash with): it parses each
argv in turn with FLAGS(argv) and calls launch.study.main, as `python -m launch.study` would."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (flag named in the error, extra argv). Each runs with --output_dir=<fresh folder>/out unless it
# sets its own, and must write nothing there.
BAD = [
    ("--n_trials", ["--n_trials=0"]),
    ("--n_workers", ["--n_workers=0"]),
    ("--n_workers", ["--n_workers=100000"]),
    ("--num_samples", ["--num_samples=0"]),
    ("--num_samples", ["--num_samples=1000000000000"]),
    ("--seed", ["--seed=-1"]),
    ("--seed", [f"--seed={2**70}"]),
    ("--heartbeat_interval", ["--heartbeat_interval=0"]),
    ("--heartbeat_interval", ["--heartbeat_interval=-5"]),
    ("--grace_period", ["--grace_period=0"]),
    ("--max_retry", ["--max_retry=-1"]),
    ("--worker_trials", ["--worker_trials=0"]),
    ("--problem", ["--problem=nope"]),
    ("--problem", ["--problem=no_such_module_xyz:make"]),
    ("--problem", ["--problem=unrolled:no_such_factory"]),
    ("--problem", ["--problem=unrolled.registry:names"]),  # returns a list, not a Problem
    ("--problem_option", ["--problem_option=horizon"]),
    ("--problem_option", ["--problem_option=nope=1"]),
    ("--sigma_range", ["--sigma_range=abc"]),
    ("--sigma_range", ["--sigma_range=0.1"]),
    ("--sigma_range", ["--sigma_range=0.1,0.001"]),
    ("--sigma_range", ["--sigma_range=-1,1"]),
    ("--sigma_range", ["--sigma_range=nan,1"]),
    ("--sigma_range", ["--sigma_range=1,inf"]),
    ("--num_steps", ["--num_steps=abc"]),
    ("--num_steps", ["--num_steps=0"]),
    ("--num_steps", ["--num_steps=-5"]),
    ("--num_steps", ["--num_steps=7"]),
    ("--num_steps", ["--num_steps="]),
    ("--num_particles", ["--num_particles=0"]),
    ("--num_particles", ["--num_particles=x"]),
    ("--num_chains", ["--num_chains=0"]),
    ("--num_chains", ["--num_chains=1e9"]),
    ("--num_chains", ["--num_chains=1000000000"]),
    ("--estimators", ["--estimators=nope"]),
    ("--estimators", ["--estimators=uoro[rank=0]"]),
    ("--estimators", ["--estimators=pes[num_particles=0]"]),
    ("--estimators", ["--estimators=rtrl[num_steps=7]"]),
    ("--estimators", ["--estimators="]),
    ("--study_name", ["--study_name=../../../x", "--output_dir="]),
    ("--study_name", ["--study_name=a/b", "--output_dir="]),
    ("--study_name", ["--study_name=.hidden", "--output_dir="]),
    ("--study_name", ["--study_name=", "--output_dir="]),
    ("--output_dir", ["--output_dir={file}/sub"]),
    ("--output_dir", ["--output_dir={file}"]),
    ("--storage", ["--storage=mysql://u:secret@h/db"]),
    ("--storage", ["--storage=journal:///{file}/x.journal"]),
    ("study database", ["--storage=sqlite:///{garbage}"]),
    # tuning
    ("--tune_num_steps", ["--study=tuning", "--tune_num_steps=0"]),
    ("--tune_num_particles", ["--study=tuning", "--tune_num_particles=0"]),
    ("--tune_sigma", ["--study=tuning", "--tune_sigma=0"]),
    ("--meta_lr", ["--study=tuning", "--meta_lr=inf"]),
    ("--meta_lr", ["--study=tuning", "--meta_lr=-1"]),
    ("--search_width", ["--study=tuning", "--search_width=nan"]),
    ("--num_reports", ["--study=tuning", "--num_reports=0"]),
    ("--num_seeds", ["--study=tuning", "--num_seeds=0"]),
    ("--budgets", ["--study=tuning", "--budgets=0"]),
    ("--budgets", ["--study=tuning", "--budgets=3,1"]),
    ("--budgets", ["--study=tuning", "--budgets=a"]),
    ("--max_update", ["--study=tuning", "--max_update=-1"]),
    ("--max_grad_norm", ["--study=tuning", "--max_grad_norm=0"]),
    ("--warmup_steps", ["--study=tuning", "--warmup_steps=-2"]),
    ("--decay_steps", ["--study=tuning", "--decay_steps=-1"]),
    ("--methods", ["--study=tuning", "--methods=tpe,tpe"]),
    ("--methods", ["--study=tuning", "--methods=cma"]),
    ("--baseline_key", ["--study=tuning", "--methods=grid", "--baseline_key=learning_rate"]),
    ("--baseline_option", ["--study=tuning", "--methods=grid", "--baseline_option=horizon=0"]),
    ("--num_evals", ["--study=tuning", "--num_evals=0"]),
    ("--methods", ["--study=tuning", "--methods=nope"]),
    ("--methods", ["--study=tuning", "--methods=online:uoro[rank=0]"]),
    ("--methods", ["--study=tuning", "--methods="]),
]

RUNNER = r"""
import contextlib, io, json, os, sys
from absl import flags
import launch.study as study
cases = json.loads(sys.stdin.read())
results = []
for argv in cases:
  flags.FLAGS.unparse_flags()
  err = io.StringIO()
  code = None
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      rest = flags.FLAGS(["launch.study", *argv])
      study.main(rest)
  except SystemExit as e:
    code = e.code
  except Exception as e:  # a raw traceback: not a clean rejection
    err.write("TRACEBACK " + type(e).__name__ + ": " + str(e))
    code = "traceback"
  results.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  base = tmp_path_factory.mktemp("flags")
  file = base / "a_file"
  file.write_text("x")
  garbage = base / "garbage.db"
  garbage.write_bytes(os.urandom(4096))
  cases, outs = [], []
  common = ["--problem=toy_regression", "--problem_option=horizon=20", "--num_samples=16",
            "--n_trials=1", "--report=false"]
  for i, (_, argv) in enumerate(BAD):
    out = base / f"case{i}" / "out"
    argv = [a.format(file=file, garbage=garbage) for a in argv]
    if not any(a.startswith("--output_dir") for a in argv):
      argv.append(f"--output_dir={out}")
    cases.append(common + argv)
    outs.append(out)
  before = sorted(os.listdir(os.path.join(ROOT, "runs", "studies"))) if os.path.isdir(
      os.path.join(ROOT, "runs", "studies")) else []
  proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(cases), cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = sorted(os.listdir(os.path.join(ROOT, "runs", "studies"))) if os.path.isdir(
      os.path.join(ROOT, "runs", "studies")) else []
  assert after == before, "a case wrote under runs/studies"
  assert garbage.stat().st_size == 4096
  return dict(zip(range(len(BAD)), zip(json.loads(proc.stdout.splitlines()[-1]), outs)))


@pytest.mark.parametrize("index", range(len(BAD)), ids=[" ".join(a) for _, a in BAD])
def test_bad_flag_is_refused_in_one_line_before_any_write(results, index):
  flag = BAD[index][0]
  result, out = results[index]
  lines = [line for line in result["stderr"].splitlines()
           if line.startswith("launch.study: error:")]
  assert result["code"] in (1, 2), result
  assert len(lines) == 1 and flag in lines[0], result["stderr"][-2000:]
  assert "Traceback" not in result["stderr"] and "secret" not in result["stderr"]
  assert not os.path.exists(out), f"{out} was created"
