r"""Train a recurrent network online on a memory stream with several gradient estimators.

Here theta is the network's weights and the hidden state is the inner state:
each estimator's window gradient updates the weights while the stream runs.
Every estimator starts from the same weights and sees the same stream. Per
estimator, TensorBoard curves go to <logdir>/<estimator>/ (online loss,
evaluation accuracy and loss on a fresh stream with frozen weights); the
comparison goes to <logdir>/summary.json, <logdir>/summary.md and a plot of
accuracy against stream steps, <logdir>/accuracy.png.

Examples:
  python -m launch.online_rnn --flagfile=launch/configs/online_recall.flags
  python -m launch.online_rnn --cell=rtu_linear --task=t_maze --train_steps=20000 \
      --estimators=rtrl_elementwise,uoro,tbptt[num_steps=4]
"""

from __future__ import annotations

from absl import flags

import launch
import metaopt
from studies import online_rnn_run

_CELL = flags.DEFINE_enum("cell", "elstm", ["elstm", "rtu_linear", "rtu_nonlinear", "dense_tanh"],
                          "Recurrent cell.")
_TASK = flags.DEFINE_enum("task", "delayed_recall", ["delayed_recall", "t_maze"], "Stream task.")
_TASK_OPTION = flags.DEFINE_multi_string("task_option", [],
                                         "key=value option of the task, e.g. delay=20.")
_HIDDEN_SIZE = flags.DEFINE_integer("hidden_size", 32, "Recurrent units.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["rtrl_elementwise", "uoro", "tbptt[num_steps=5]", "tbptt[num_steps=25]",
                   "pes[num_steps=5]"],
    "Estimator specs; an estimator's own num_steps=... overrides --num_steps.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1, "Inner steps per window (weight update).")
# Which estimators take an option, from the table (for the flags' help).
_TAKING = {option: ", ".join(name for name, info in metaopt.ESTIMATOR_TABLE.items()
                             if option in info.takes) for option in ("num_particles", "sigma")}
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 8,
                                      f"Particles (even) of {_TAKING['num_particles']}.")
_SIGMA = flags.DEFINE_float("sigma", 0.01, f"Perturbation scale (> 0) of {_TAKING['sigma']}.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 50_000, "Inner (stream) steps per estimator.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate of the weights.")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", 1.0, "Clip each window's gradient norm.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 2_000, "Inner steps between evaluations.")
_EVAL_STEPS = flags.DEFINE_integer("eval_steps", 2_000, "Stream steps per evaluation.")
_TARGET_ACCURACY = flags.DEFINE_float("target_accuracy", 0.95,
                                      "Report the first step the evaluation reaches this.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and the stream.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Run folder (default runs/online_rnn-<cell>-<task>-<time>).")



def validate_flags():
  """Every check that needs no compute (:func:`studies.online_rnn_run.validate_flags`)."""
  return online_rnn_run.validate_flags(flags.FLAGS)


def main(argv):
  """Trains and compares the estimators (:func:`studies.online_rnn_run.main`)."""
  online_rnn_run.main(flags.FLAGS, argv)


if __name__ == "__main__":
  launch.run(main)
