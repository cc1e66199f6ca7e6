r"""Train recurrent actor-critic agents online in a partially observable environment.

The setting of Elelimy et al. (2024, Recurrent Trace Units) and Irie et al.
(2023, RTRL): one recurrent layer, policy and value heads, one weight update
per environment step (windows of --num_steps) with the one-step actor-critic
loss of :func:`metaopt.rl.agent_system`, gradients from each estimator. Every
(cell, estimator) pair runs all --seeds at once (vmapped); seeds differ in the
initial weights and the environments' randomness.

Per (cell, estimator), TensorBoard curves go to <logdir>/<cell>/<estimator>/
(mean over seeds of the undiscounted return of the episodes finished in each
logging interval, their length, the value loss, the policy's entropy and, for
RTRL, the norm of its traces), and a checkpoint after every interval:
rerunning the same command resumes. <logdir>/summary.json, summary.md and
returns.png compare them: return against environment steps, mean and 95%
confidence interval over seeds, and the cost per step against a forward step.

Examples:
  python -m launch.online_rl --flagfile=launch/configs/rl_memory_chain_10.flags
  python -m launch.online_rl --env=repeat_first --cells=rtu_linear,elstm \
      --estimators=rtrl_elementwise,tbptt[num_steps=4] --train_steps=20000
"""

from __future__ import annotations

from absl import flags

import launch
from studies import online_rl_run
from unrolled import envs
from unrolled import online_rl

_ENV = flags.DEFINE_enum("env", "memory_chain", sorted(envs.ENVS), "Environment.")
_ENV_OPTION = flags.DEFINE_multi_string("env_option", [],
                                        "key=value option of the env, e.g. memory_length=20.")
_CELLS = flags.DEFINE_list("cells", ["rtu_linear"],
                           f"Recurrent cells, from {list(online_rl.AGENT_CELLS)}.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["rtrl_elementwise", "tbptt[num_steps=1]", "tbptt[num_steps=16]"],
    "Estimator specs; an estimator's own num_steps=... overrides --num_steps.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1, "Environment steps per window (update).")
_HIDDEN_SIZE = flags.DEFINE_integer("hidden_size", 16, "Recurrent units.")
_HEAD_HIDDEN = flags.DEFINE_integer(
    "head_hidden", 0, "0: linear policy and value heads; else a tanh layer of this many units in "
    "each (the RTU paper's code: 64).")
_ENCODER_SIZE = flags.DEFINE_integer(
    "encoder_size", 0, "0: the layer reads the observation; else a Dense layer of this many tanh "
    "units encodes it first (the RTU paper's network: 64), trained by its one-step gradient under "
    "rtrl_elementwise and real-time PPO, by backprop through the window or sequence otherwise.")
_REWARD_SCALE = flags.DEFINE_float(
    "reward_scale", 1.0, "The learning targets read reward_scale * reward (returns are reported "
    "unscaled).")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 8, "Environments per agent, side by side.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Independent runs (seeds 0..seeds-1), vmapped.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20_000, "Environment steps per environment.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 1_000, "Steps between curve points and checkpoints.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (eps 1e-5).")
_MAX_GRAD_NORM = flags.DEFINE_float("max_grad_norm", 0.5, "Clip each window's gradient norm.")
_GAMMA = flags.DEFINE_float("gamma", 0.99, "Discount of the TD target.")
_ENTROPY_COST = flags.DEFINE_float("entropy_cost", 0.01, "Entropy bonus weight.")
_VALUE_COST = flags.DEFINE_float("value_cost", 0.5, "Value loss weight.")
_ALGORITHM = flags.DEFINE_enum(
    "algorithm", "actor_critic", ["actor_critic", "ppo"],
    "actor_critic: one update per window of --num_steps with the one-step actor-critic loss; "
    "ppo: PPO on rollouts of --rollout_steps: metaopt.rl.real_time_ppo for "
    "--estimators=rtrl_elementwise (RTRL traces stored), metaopt.rl.bptt_ppo for "
    "tbptt[num_steps=K] (BPTT over sequences of K steps; K=--rollout_steps: the whole rollout).")
_ROLLOUT_STEPS = flags.DEFINE_integer("rollout_steps", 128, "ppo: steps per environment per rollout.")
_PPO_EPOCHS = flags.DEFINE_integer("ppo_epochs", 4, "ppo: passes over each rollout.")
_PPO_MINIBATCHES = flags.DEFINE_integer("ppo_minibatches", 4, "ppo: minibatches (of single steps; of sequences with tbptt).")
_CLIP = flags.DEFINE_float("clip", 0.2, "ppo: ratio (and value) clip.")
_GAE_LAMBDA = flags.DEFINE_float("gae_lambda", 0.95, "ppo: GAE lambda.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Run folder (default runs/online_rl-<env>-<time>).")



def validate_flags():
  """Every check that needs no compute (:func:`studies.online_rl_run.validate_flags`)."""
  return online_rl_run.validate_flags(flags.FLAGS)


def main(argv):
  """Trains and compares the agents (:func:`studies.online_rl_run.main`)."""
  online_rl_run.main(flags.FLAGS, argv)


if __name__ == "__main__":
  launch.run(main)
