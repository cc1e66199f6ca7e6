"""The tuner's answers in TensorBoard: did tuning help (fresh horizons at theta so far against
theta0, side by side as two runs) and how noisy is what the tuner follows (each horizon's summed
hypergradient across chains, free of the window positions' comb)."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from metaopt._src.tensorboard.summary import shown_values
from metaopt._src.tensorboard.summary import snr
from metaopt._src.tensorboard.writer import SummaryWriter

# The sub-run (a folder in the run's logdir) that holds theta0's values under the same tags as the
# tuned ones: TensorBoard colours and names lines by run, so each chart shows both with a legend.
UNTUNED = "untuned"

EVAL_DESCRIPTION = (
    "After one fresh horizon of inner training (same keys every time) at the theta the run would "
    "hand on if it stopped at this outer step (the best validated one with validation), in run "
    "'.'; at the initial theta0, in run 'untuned'. Comparable across outer steps; x: outer step.")


def horizon_descriptions(num_chains: int) -> dict[str, str]:
  """The description of each per-horizon tag (its definition, stated once per name)."""
  what = ("The horizon's hypergradient: the sum over its windows of the estimates the tuner "
          f"applied (the mean over {num_chains} chain(s), each at the theta of its window), "
          "logged at the horizon's last outer step.")
  return {
      "mean": what,
      "lower": what + " Minus one standard error of the chains' mean.",
      "upper": what + " Plus one standard error of the chains' mean.",
      "snr": (f"|mean| / standard error of the mean over {num_chains} chains of the horizon's "
              "summed hypergradient: the signal-to-noise ratio of what the tuner follows "
              "(above ~2, its sign is reliable)."),
  }


class HorizonNoise:
  """Sums the chains' hypergradients over each horizon (host side) and logs, at its last window,
  ``hypergrad_horizon/mean/<name>`` and, from 2 chains, ``lower``/``upper`` (∓ one standard
  error of the chains' mean), from 4 chains ``snr`` (:func:`~metaopt.tensorboard.snr` with
  ``num_samples`` the chains).

  The chains start their horizons together, so outer step ``s`` is window ``(s - 1) % windows``
  of one. A horizon with a non-finite step, or one a resumed run entered in its middle, is left
  out (a chain restarted after a non-finite step is out of step with the others from then on).

  Examples:
    >>> import numpy as np, tempfile, metaopt
    >>> with metaopt.tensorboard.SummaryWriter(tempfile.mkdtemp()) as writer:
    ...   noise = metaopt.tensorboard.HorizonNoise(writer, ["lr"], num_chains=4, windows=2)
    ...   for step in (1, 2):
    ...     noise.add({"chain_grads": np.full((4, 1), 0.5), "finite": True}, step)
  """

  def __init__(self, writer: SummaryWriter, names: list[str], *, num_chains: int, windows: int):
    self._writer, self._names, self._windows = writer, names, max(1, windows)
    self._num_chains = num_chains
    self._descriptions = horizon_descriptions(num_chains)
    self._sum = None  # (chains, coordinates); None: not in a horizon seen from its start

  def add(self, info: Mapping[str, np.ndarray], step: int) -> None:
    position = (step - 1) % self._windows
    chains = np.asarray(info["chain_grads"], np.float64)
    if position == 0:
      self._sum = np.zeros_like(chains)
    if self._sum is None:
      return
    if not bool(info["finite"]):
      self._sum = None
      return
    self._sum = self._sum + chains
    if position == self._windows - 1:
      self._log(self._sum, step)
      self._sum = None

  def _log(self, sums, step):
    mean = sums.mean(axis=0)
    n = self._num_chains
    var = sums.var(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)
    for i, name in enumerate(self._names):
      values = {"mean": mean[i]}
      if n > 1:
        se = math.sqrt(var[i] / n)
        values.update(lower=mean[i] - se, upper=mean[i] + se)
      if n >= 4:  # a variance from fewer chains is too rough to divide by
        values["snr"] = snr(mean[i], var[i], num_samples=n)
      for kind, value in values.items():
        self._writer.scalar(f"hypergrad_horizon/{kind}/{name}", value, step,
                            description=self._descriptions[kind])


def shown_metrics(values: Mapping[str, float]) -> list[str]:
  """A fresh horizon's metrics in the order a reader looks for them (validation, test, train,
  then the meta-loss), without one that repeats an earlier one's value exactly (the last
  meta-loss of a problem whose meta-loss is its validation loss)."""
  rank = lambda k: next((i for i, p in enumerate(("validation", "test", "train", "meta_loss"))
                         if k.startswith(p)), 3.5)
  out = []
  for k in sorted(values, key=lambda k: (rank(k), list(values).index(k))):
    if not any(values[k] == values[o] for o in out):
      out.append(k)
  return out


class FreshEvaluation:
  """``eval/<metric>`` after one fresh horizon: theta so far in the run's writer, theta0 in the
  ``untuned`` sub-run's, at the same outer steps (theta0's computed once)."""

  def __init__(self, writer: SummaryWriter, untuned_writer: SummaryWriter, fresh: Callable):
    self._writers, self._fresh, self._untuned = (writer, untuned_writer), fresh, None

  def untuned(self) -> dict[str, float] | None:
    return self._untuned

  def warm_up(self, theta0) -> None:
    """Compiles the fresh horizon (under the compile line) and evaluates theta0 with it."""
    if self._untuned is None:
      self._untuned = {k: float(v) for k, v in self._fresh(theta0).items()}

  def shown(self) -> list[str]:
    """The metrics logged (:func:`shown_metrics` of theta0's)."""
    return shown_metrics(self._untuned) if self._untuned else []

  def log(self, theta, step: int) -> None:
    values = {k: float(v) for k, v in self._fresh(theta).items()}
    for writer, at in zip(self._writers, (values, self._untuned)):
      for k in self.shown():
        writer.scalar(f"eval/{k}", at[k], step, description=EVAL_DESCRIPTION)


def log_coordinates(names: list[str], theta0_flat, values0: Mapping[str, object]) -> set[str]:
  """The coordinates of theta that are the log of the value TensorBoard shows for them (a
  schedule's knot or a scalar hyperparameter of the same name): their hypergradients are with
  respect to that log, which the charts' titles say."""
  shown = shown_values(values0)
  flat = np.asarray(theta0_flat, np.float64)
  return {n for i, n in enumerate(names)
          if n in shown and float(shown[n]) > 0
          and math.isclose(math.exp(flat[i]), float(shown[n]), rel_tol=1e-4)}
