"""A dense tanh RNN trained on a delayed-recall stream: theta is its weights (for variance studies)."""

from __future__ import annotations

import jax.numpy as jnp

from unrolled import online_rnn
from unrolled.problem import Problem


def memory_rnn(*, hidden_size: int = 8, delay: int = 5, horizon: int = 50,
               seed: int = 0) -> Problem:
  """The dense tanh RNN of ``launch.online_rnn`` on delayed recall, as a problem.

  theta is every weight ({"cell": {"W_h", "W_x", "b"}, "readout": {"w", "b"}});
  the inner state is the hidden state (``hidden_size`` floats) and the
  stream's position; the loss of a horizon is the summed cross-entropy of the
  recall predictions. Built with :func:`metaopt.recurrent.dense_system`, so
  :func:`metaopt.uoro_preactivation` applies, and small enough for the
  oracle noise shaping of :func:`metaopt.uoro`.

  Args:
    hidden_size: recurrent units N.
    delay: steps between a symbol and its recall.
    horizon: inner steps before the hidden state and stream restart.
    seed: makes the initial weights.
  """
  model = online_rnn.online_rnn(cell="dense_tanh", task="delayed_recall",
                                hidden_size=hidden_size, seed=seed, horizon=horizon,
                                task_options={"delay": delay})

  def hyperparameters(theta):
    return {"recurrent_weight_norm": jnp.linalg.norm(theta["cell"]["W_h"])}

  return Problem(model.system, model.theta, model.description, hyperparameters,
                 num_params=model.num_params)
