r"""Run an Optuna study of hypergradient estimators; many workers may share one study.

Examples:
  python -m launch.study --flagfile=launch/configs/study_toy_regression.flags
  python -m launch.study --study=bias_variance --problem=influence_balancing \
      --storage=postgresql+psycopg://user:pw@db-host:5432/metaopt --study_name=ib --n_trials=50

Several invocations with the same --storage and --study_name (or --n_workers > 1,
which spawns worker processes) share the study; rerunning continues it: workers
run trials until the study has --n_trials complete ones (trials under way in
other workers count; see studies/storage.py). A worker that dies makes the
command report it and exit non-zero; rerunning retries its trial.

Storage: by default a journal file in --output_dir (safe for several processes
on one machine; an existing study.db there is kept), else --storage. To keep a
database password off the command line (and out of `ps`), leave it out of the
URL and give it the libpq way, which psycopg reads: the PGPASSWORD environment
variable or a ~/.pgpass file; or put the whole URL in the METAOPT_STORAGE
environment variable, which is read when --storage is absent:

  export PGPASSWORD=...    # or a line host:port:db:user:password in ~/.pgpass
  python -m launch.study --storage=postgresql+psycopg://user@db-host:5432/metaopt ...

Every message shows the URL with its password as ***, and worker processes get
the URL through their environment, never their command line.

Every flag is checked before anything is written or computed (estimators are
built with every window length and particle count a trial may give them, and
their memory estimated); an error is one line naming the flag. Outputs
(figures, CSV, TensorBoard hparams sessions, summary.md) go to --output_dir.
"""

from __future__ import annotations

from absl import flags

import launch
from studies import study_runner

_STUDY = flags.DEFINE_enum("study", "bias_variance", ["bias_variance", "tuning"], "Which study.")
_PROBLEM = flags.DEFINE_string(
    "problem", "toy_regression", "Inner problem: a name of unrolled.names(), or the import path "
    "package.module:factory of a function returning an unrolled.Problem.")
_PROBLEM_OPTION = flags.DEFINE_multi_string("problem_option", [], "key=value problem option.")
_STORAGE = flags.DEFINE_string(
    "storage", None, "Optuna storage URL: journal:///PATH, sqlite:///PATH or "
    "postgresql+psycopg://USER@HOST:PORT/DB, the password from PGPASSWORD or ~/.pgpass "
    "(default: $METAOPT_STORAGE, else a journal file in --output_dir).")
_STUDY_NAME = flags.DEFINE_string("study_name", None, "Study name (default <study>-<problem>).")
_N_TRIALS = flags.DEFINE_integer("n_trials", 20, "Finished trials the study should reach.")
_N_WORKERS = flags.DEFINE_integer("n_workers", 1, "Worker processes to spawn (each runs trials "
                                  "until the study has --n_trials).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Outputs folder (default runs/studies/<study_name>).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the estimates' keys and of the search.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_interval", 10, "Seconds between worker heartbeats.")
_GRACE = flags.DEFINE_integer("grace_period", None, "Seconds without heartbeat before a trial is "
                              "failed and retried (default 3 x heartbeat_interval).")
_MAX_RETRY = flags.DEFINE_integer("max_retry", 2, "Retries of a trial whose worker died.")
_REPORT = flags.DEFINE_bool("report", True, "Write figures, CSV and TensorBoard at the end.")
# bias_variance
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["tbptt", "rtrl", "uoro", "pes"],
    "Estimators the trials choose from; options in brackets separated by ';', e.g. "
    "uoro[rho=one_step_variance;rank=4].")
_NUM_STEPS = flags.DEFINE_list("num_steps", ["1", "5", "10", "20"], "Window lengths to choose from.")
_NUM_PARTICLES = flags.DEFINE_list("num_particles", ["2", "8", "32"], "Particles to choose from.")
_SIGMA = flags.DEFINE_list("sigma_range", ["0.001", "0.1"], "Log-uniform range of sigma.")
_NUM_CHAINS = flags.DEFINE_list("num_chains", ["1", "4"], "Chains per estimate to choose from.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 128, "Independent estimates per trial (M).")
_GRID = flags.DEFINE_bool(
    "grid", False, "Enqueue every combination of the choices below as trials first (a systematic "
    "sweep; the sampler explores after it). --n_trials should cover the grid.")
_EXACT = flags.DEFINE_enum("exact", "full_bptt", ["full_bptt", "rtrl"],
                           "Reference for the exact hypergradient.")
# tuning
_METHODS = flags.DEFINE_list(
    "methods", ["online:rtrl", "online:pes", "tpe", "random"],
    "Methods of the tuning study: online:<estimator> (restarts; its first horizon is also the "
    "single-run mode), tpe, random, cmaes (Optuna's CmaEsSampler; pip install "
    "'metaopt[cmaes]'), grid (the practitioner's learning-rate grid, see --baseline_option).")
_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per method (tuning study).")
_BUDGETS = flags.DEFINE_list(
    "budgets", ["1", "3", "10", "30"], "Budgets in training runs of one horizon, every "
    "particle's inner steps counted (tuning study); each method runs to the largest.")
_BASELINE_OPTION = flags.DEFINE_multi_string(
    "baseline_option", [], "key=value problem option of the grid baseline's problem (e.g. "
    "schedule=cosine), on top of --problem_option.")
_BASELINE_KEY = flags.DEFINE_string(
    "baseline_key", "learning_rate", "theta entry (log units) the grid baseline scales.")
_NUM_EVALS = flags.DEFINE_integer("num_evals", 10, "Evaluation points per online run.")
_TUNE_NUM_STEPS = flags.DEFINE_integer("tune_num_steps", 10, "Window of the online methods.")
_TUNE_PARTICLES = flags.DEFINE_integer("tune_num_particles", 8, "Particles of online pes.")
_TUNE_SIGMA = flags.DEFINE_float("tune_sigma", 0.03, "Sigma of online pes.")
_META_OPTIMIZER = flags.DEFINE_enum("meta_optimizer", "adam", ["sgd", "adam"], "Online meta-optimiser.")
_META_LR = flags.DEFINE_float("meta_lr", None, "Online meta learning rate (default: metaopt's).")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", None,
                                    "Online: clip the hypergradient's global norm.")
_MAX_UPDATE = flags.DEFINE_float("max_update", None, "Online: bound on each coordinate of "
                                 "theta's change per outer step (default: metaopt's).")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", None, "Online: outer steps of meta "
                                     "learning-rate warm-up (default: metaopt's).")
_ROLLBACK = flags.DEFINE_float("rollback_factor", 1.5, "Online, with --validate_runs=0 only: set "
                               "theta back to the best horizon's after a horizon this many "
                               "times worse (0: never).")
_VALIDATE_RUNS = flags.DEFINE_float(
    "validate_runs", 1.0, "Online: runs of tuning between validations of theta (one fresh "
    "training run each, counted in the budget; the initial theta is validated first); the "
    "method reports its best validated model. 0: no validation (theta after b - 1 runs, "
    "retrained).")
_SIGNIFICANCE = flags.DEFINE_float(
    "significance", None, "Online: standard errors of the paired validation difference a theta "
    "must win by to become the best, or lose by to be sent back (default: metaopt's).")
_TRUST_RADIUS = flags.DEFINE_float(
    "trust_radius", None, "Online: every coordinate of theta stays within this of the best "
    "validated theta (times the step's shrink; default: metaopt's; 0: no trust region).")
_SINGLE_META_LR = flags.DEFINE_float("single_meta_lr", None, "The single-run mode's own meta "
                                     "learning rate (default: --meta_lr).")
_DECAY_STEPS = flags.DEFINE_integer("decay_steps", None, "Online: time scale of the meta learning "
                                    "rate's 1/sqrt decay, 0: constant (default: metaopt's).")
_SEARCH_WIDTH = flags.DEFINE_float("search_width", 3.0,
                                   "Black-box range: theta0 +- this (unconstrained units).")
_NUM_REPORTS = flags.DEFINE_integer("num_reports", 5, "Intermediate reports per black-box trial.")
# internal: set on spawned workers
_WORKER = flags.DEFINE_integer("worker_trials", None, "Internal: run at most this many trials "
                               "and exit.")
_IS_WORKER = flags.DEFINE_bool("worker", False, "Internal: a spawned worker (storage URL from "
                               "$METAOPT_STORAGE).")


def main(argv):
  """Runs the study (:func:`studies.study_runner.main`): every error the user can fix is one
  line on stderr (status 2 for flags)."""
  study_runner.main(flags.FLAGS, argv)


if __name__ == "__main__":
  launch.run(main)
