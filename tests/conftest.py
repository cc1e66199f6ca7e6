import atexit
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

# One persistent XLA compilation cache for the session (set before anything imports jax), which
# the launch scripts the tests run as subprocesses inherit: a program many tests build (the same
# tiny problem, estimator and tuner) compiles once. JAX keys the cache by the program and its
# compile options, so a hit is the same executable. Fresh per session; a user's own setting wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="metaopt-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# The suite is compile-bound (hundreds of small programs, each run a few times): XLA:CPU's LLVM
# passes at level 0 and its classic fusion emitters (instead of the newer MLIR ones) compile the same
# operations, without fast math either way, in about half the time. A user's XLA_FLAGS come first.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import glob
import socket
import subprocess

import chex
import pytest

# The fast tier, `-m "not slow"` (under 3 min on 2 cores): each of these tests took 2.5 s or more in
# it (pytest -n 2 --durations=0). They run in the full suite; a parametrized one keeps its first
# case in the fast tier, the grid's representative slice.
FULL_SUITE_ONLY = frozenset({
    "metaopt/_src/estimators/nres.py::metaopt._src.estimators.nres.nres",
    "metaopt/_src/estimators/reinforce.py::metaopt._src.estimators.reinforce.reinforce",
    "metaopt/_src/estimators/uoro.py::metaopt._src.estimators.uoro.uoro",
    "metaopt/_src/estimators/uoro_preactivation.py::metaopt._src.estimators.uoro_preactivation.uoro_preactivation",
    "metaopt/_src/learned_optimizers/mlp.py::metaopt._src.learned_optimizers.mlp.mlp_lopt",
    "metaopt/_src/rl/agent.py::metaopt._src.rl.agent.agent_system",
    "metaopt/_src/rl/real_time_ppo.py::metaopt._src.rl.real_time_ppo.real_time_ppo",
    "tests/test_benchmark.py::test_step_breakdown_backward_pieces_cost_more_than_the_primal_step",
    "tests/test_benchmark.py::test_the_tuner_runs_its_outer_steps_in_one_loop_on_device_at_little_more_than_the_windows",
    "tests/test_estimators.py::test_rtrl_matches_jax_grad_in_float64",
    "tests/test_estimators.py::test_vmap_over_keys_matches_separate_calls",
    "tests/test_launch_flags.py::test_a_bad_flag_is_refused_in_one_line_naming_it_and_writes_nothing",
    "tests/test_launch_flags.py::test_the_base_flags_are_valid",
    "tests/test_learned_optimizers.py::test_a_family_samples_different_tasks_of_one_shape",
    "tests/test_learned_optimizers.py::test_an_extended_run_keeps_its_tests_and_its_periods",
    "tests/test_learned_optimizers.py::test_compare_picks_each_baselines_best_rate_on_the_held_out_tasks",
    "tests/test_learned_optimizers.py::test_meta_train_resumes_exactly_where_it_stopped",
    "tests/test_learned_optimizers.py::test_mlp_lopt_is_lopts_mlp_optimizer",
    "tests/test_learned_optimizers.py::test_tbptt_over_a_whole_horizon_is_the_exact_meta_gradient",
    "tests/test_learned_optimizers.py::test_train_task_gives_every_optimizer_the_same_task_init_and_data",
    "tests/test_meta_loss.py::test_meta_loss_gives_the_same_estimate_on_the_same_keys",
    "tests/test_online_rl.py::test_episode_statistics_count_finished_episodes",
    "tests/test_online_rl.py::test_hidden_state_restarts_on_done",
    "tests/test_online_rl.py::test_real_time_ppo_first_update_is_exact",
    "tests/test_online_rl.py::test_rtrl_is_exact_for_the_actor_critic_loss",
    "tests/test_online_rl.py::test_rtrl_stays_exact_with_the_reference_codes_mlp_heads",
    "tests/test_online_rl.py::test_truncated_bptt_over_one_step_is_not_exact",
    "tests/test_optax_adapter.py::test_hypergradient_of_every_entry_matches_finite_differences",
    "tests/test_problems.py::test_digits_mlp_learns",
    "tests/test_problems.py::test_every_estimator_runs_a_window_on_every_problem",
    "tests/test_problems.py::test_mnist1d_is_generated_locally_has_22_hyperparameters_and_learns",
    "tests/test_problems.py::test_mnist1d_validation_minibatches_and_the_cosine_baseline_schedule",
    "tests/test_readme.py::test_readme_example_runs_and_rtrl_is_exact",
    "tests/test_rtrl_elementwise.py::test_dense_cell_is_refused_but_generic_estimators_are_exact",
    "tests/test_rtrl_elementwise.py::test_float32_weights_work_with_x64_enabled",
    "tests/test_rtrl_elementwise.py::test_structured_rtrl_equals_generic_rtrl",
    "tests/test_studies.py::test_black_box_search_tries_theta0_first_on_the_keys_of_every_other_model",
    "tests/test_studies.py::test_launch_study_refuses_a_damaged_sqlite_study_in_one_line",
    "tests/test_study_concurrency.py::test_every_queued_trial_runs_exactly_once_with_eight_workers",
    "tests/test_study_concurrency.py::test_many_processes_creating_one_sqlite_study_at_once",
    "tests/test_study_flags.py::test_bad_flag_is_refused_in_one_line_before_any_write",
    "tests/test_tensorboard_views.py::test_help_is_no_error_and_an_error_is_one_line_with_a_hint",
    "tests/test_tensorboard_views.py::test_progress_lines_say_what_compiles_and_show_the_whole_schedule",
    "tests/test_tune_api.py::test_a_built_estimator_and_an_optax_meta_optimizer_work_and_are_named_custom",
    "tests/test_tune_api.py::test_an_interrupted_run_resumes_to_the_same_theta_and_steps",
    "tests/test_tune_api.py::test_evaluation_reads_one_inner_state",
    "tests/test_tune_api.py::test_every_estimator_tunes_and_logs",
    "tests/test_tune_api.py::test_single_run_mode_tunes_during_one_run_and_reports_its_own_model",
    "tests/test_tune_api.py::test_without_logdir_nothing_is_written_and_a_summary_comes_back",
    "tests/test_validation.py::test_good_variants_are_accepted",
    "tests/test_variance_reduction.py::test_online_shaping_learns_its_shape_after_each_block",
    "unrolled/families/digits_mlp.py::unrolled.families.digits_mlp.digits_mlp",
    "unrolled/families/mnist1d_mlp.py::unrolled.families.mnist1d_mlp.mnist1d_mlp",
})


def pytest_collection_modifyitems(config, items):
  del config
  kept = set()
  for item in items:
    function = item.nodeid.split("[")[0]
    if function not in FULL_SUITE_ONLY or item.get_closest_marker("slow"):
      continue
    if "[" in item.nodeid and function not in kept:
      kept.add(function)  # the representative case
      continue
    item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fresh_trace_counters():
  """chex.assert_max_traces counts per function source and call site, which a parametrized test
  shares between its cases: start every test from zero."""
  chex.clear_trace_counter()


def _postgres_bin(name):
  found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
  return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="session")
def postgres_url():
  """A real PostgreSQL server on loopback for the session (Debian's package; .ci/run installs it)."""
  initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
  if not (initdb and pg_ctl):
    message = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.environ.get("CI"):
      pytest.fail(message)  # CI must run this test, never skip it
    pytest.skip(message)
  folder = tempfile.mkdtemp(prefix="metaopt-pg-")
  as_user = []
  if os.geteuid() == 0:  # the server refuses to run as root
    shutil.chown(folder, "postgres", "postgres")
    as_user = ["runuser", "-u", "postgres", "--"]
  data = os.path.join(folder, "data")
  subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True,
                 capture_output=True)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
  subprocess.run([*as_user, pg_ctl, "-D", data, "-o", options, "-l",
                  os.path.join(folder, "log"), "-w", "start"], check=True, capture_output=True)
  try:
    import psycopg  # pylint: disable=g-import-not-at-top
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
      conn.execute("CREATE DATABASE metaopt")
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/metaopt"
  finally:
    subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
