"""What the tuner and the inner problems log to TensorBoard: coordinate names, schedules at
their knots, hypergradient noise views and their custom-scalar layout."""

from __future__ import annotations

import math
import re
from typing import Mapping

import jax
import numpy as np
from tensorboard.plugins.custom_scalar import layout_pb2

from metaopt._src.tensorboard.writer import pyplot  # noqa: F401 (re-exported: summary.pyplot)
from metaopt._src.tensorboard.writer import SummaryWriter


def coordinate_names(theta, *, knots: Mapping[str, int] | None = None) -> list[str]:
  """One TensorBoard name per scalar coordinate of ``theta``, in ``ravel_pytree`` order.

  A leaf's name is its path with ``/`` between keys (``"theta"`` for a bare
  array); a leaf of more than one element gets ``/<i>`` per element. A leaf
  named in ``knots`` holds a schedule's knots on its last axis (that many):
  its elements are ``<name>/knot_<k>`` (``<name>/knot_<k>/<g>`` with one
  schedule per parameter group on a leading axis), the names
  :func:`log_hyperparameters` gives the schedule's values at its knots.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> metaopt.tensorboard.coordinate_names({"lr": jnp.float32(0.1), "wd": jnp.zeros(2)})
    ['lr', 'wd/0', 'wd/1']
    >>> metaopt.tensorboard.coordinate_names(jnp.float32(0.5))
    ['theta']
    >>> metaopt.tensorboard.coordinate_names({"learning_rate": jnp.zeros(3)}, knots={"learning_rate": 3})
    ['learning_rate/knot_0', 'learning_rate/knot_1', 'learning_rate/knot_2']
  """
  knots = knots or {}
  names = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
    base = jax.tree_util.keystr(path).strip("[]'\"").replace("']['", "/") or "theta"
    shape = np.shape(leaf)
    size = int(np.prod(shape))
    if base in knots and shape and shape[-1] == knots[base]:
      per_group = len(shape) > 1
      names.extend(f"{base}/knot_{i % shape[-1]}" + (f"/{i // shape[-1]}" if per_group else "")
                   for i in range(size))
    else:
      names.extend([base] if size == 1 else [f"{base}/{i}" for i in range(size)])
  return names


def schedule_points(values: Mapping[str, object]) -> dict[str, tuple[list[str], np.ndarray,
                                                                      np.ndarray]]:
  """Each schedule of ``values`` (as :func:`log_hyperparameters` takes them) at its knots.

  Returns:
    ``{name: (labels, steps, points)}``: ``labels`` name the points
    (``knot_<k>``, or ``step_<t>`` at five evenly spaced inner steps for a
    schedule without knots), ``steps`` are their inner steps and ``points``
    the values there, ``(G, K)`` for one schedule per parameter group, else
    ``(K,)``. Between inner steps, values are interpolated log-linearly, as
    the schedules interpolate between knots.

  Examples:
    >>> import numpy as np, metaopt
    >>> values = {"learning_rate": 0.1, "learning_rate_curve": np.geomspace(0.1, 0.001, 11),
    ...           "learning_rate_knots": np.array([0.0, 5.0, 10.0])}
    >>> labels, steps, points = metaopt.tensorboard.schedule_points(values)["learning_rate"]
    >>> labels, np.round(points, 4).tolist()
    (['knot_0', 'knot_1', 'knot_2'], [0.1, 0.01, 0.001])
  """
  out = {}
  for key in values:
    if not key.endswith("_curve"):
      continue
    name = key[:-len("_curve")]
    curve = np.asarray(values[key], np.float64)
    knots = values.get(f"{name}_knots")
    if knots is not None:
      steps = np.asarray(knots, np.float64).reshape(-1)
      labels = [f"knot_{k}" for k in range(steps.size)]
    else:
      steps = np.unique(np.linspace(0, curve.shape[-1] - 1, 5).round())
      labels = [f"step_{int(t)}" for t in steps]
    rows = curve.reshape(-1, curve.shape[-1])
    with np.errstate(divide="ignore", invalid="ignore"):
      points = np.stack([np.exp(np.interp(steps, np.arange(row.size), np.log(row)))
                         if np.all(row > 0) else np.interp(steps, np.arange(row.size), row)
                         for row in rows])
    out[name] = (labels, steps, points.reshape(curve.shape[:-1] + steps.shape))
  return out


# Info entries that log_tuner_info writes under their own tags; the rest are estimator metrics.
_TUNER_KEYS = ("loss", "grad", "chain_grads", "chain_variance", "finite", "num_skipped", "step",
               "theta", "grad_ema_mean", "grad_ema_var", "best_loss", "validation_loss",
               "step_scale", "num_rollbacks")


def snr(mean, variance, *, num_samples: int = 1):
  """Signal-to-noise ratio ``|mean| / sqrt(variance / num_samples)``, readable at zero variance.

  The variance gets a floor of 1e-6 mean² (and 1e-30): an exact, noiseless
  hypergradient then reads 1000 instead of 1e16, so one such point does not
  flatten a TensorBoard chart of noisy ones.

  Examples:
    >>> import metaopt
    >>> round(float(metaopt.tensorboard.snr(2.0, 4.0)), 4), round(float(metaopt.tensorboard.snr(2.0, 0.0)))
    (1.0, 1000)
  """
  mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
  return np.abs(mean) / np.sqrt(variance / num_samples + 1e-6 * mean**2 + 1e-30)


# Finite outer steps before the moving SNR over time is written: with the tuner's default
# ema_decay 0.9, the moving averages weigh about the last 10 hypergradients.
MIN_SNR_STEPS = 10


def log_tuner_info(writer: SummaryWriter, info: Mapping[str, object], step: int, *,
                   names: list[str], window: int) -> None:
  """Logs one outer step's ``info`` from :func:`~metaopt.tuner` (not stacked over steps).

  Tags: ``loss/window_sum`` and ``loss/per_inner_step`` (divided by
  ``window``), ``tuner/finite``, ``tuner/num_skipped``, ``tuner/num_rollbacks``,
  ``tuner/step_scale``, ``tuner/best_loss`` (the best validated theta's score, or
  the best horizon's mean loss without validation), ``estimator/<metric>``
  for every other metric, and per coordinate ``<name>`` of ``names``:
  ``hypergrad/<name>`` (the chains' mean), ``hypergrad_time/{mean,variance,
  lower,upper}/<name>`` (moving averages over time; lower and upper are mean ∓
  std) and ``hypergrad_time/snr/<name>`` once :data:`MIN_SNR_STEPS` finite
  steps exist; with more than one chain, ``hypergrad_chains/{variance,lower,
  upper}/<name>`` (across chains: the chains' mean ∓ their std) and the
  histogram ``hypergrad_chains/samples/<name>``, and from 4 chains
  ``hypergrad_chains/snr/<name>`` (that of the chains' mean). SNRs are
  :func:`snr`'s.

  Args:
    writer: where to write.
    info: one step of the tuner's ``info``.
    step: the outer step it belongs to.
    names: one name per coordinate of the flat hypergradient
      (:func:`coordinate_names` of theta).
    window: inner steps per window, for the per-step loss.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, tempfile, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2),
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum((s - 1.0) ** 2)), horizon=4)
    >>> t = metaopt.tuner(metaopt.rtrl(system, num_steps=2), optax.sgd(0.01))
    >>> state, info = jax.jit(t.update)(t.init(jax.random.key(0), jnp.float32(0.0)))
    >>> with metaopt.tensorboard.SummaryWriter(tempfile.mkdtemp()) as writer:
    ...   metaopt.tensorboard.log_tuner_info(writer, jax.device_get(info), 1, names=["theta"], window=2)
  """
  writer.scalar("loss/window_sum", info["loss"], step)
  writer.scalar("loss/per_inner_step", np.asarray(info["loss"]) / window, step)
  writer.scalar("tuner/finite", float(info["finite"]), step)
  writer.scalar("tuner/num_skipped", info["num_skipped"], step)
  for k, tag in (("num_rollbacks", "tuner/num_rollbacks"), ("step_scale", "tuner/step_scale"),
                 ("best_loss", "tuner/best_loss")):
    if k in info and np.isfinite(info[k]):  # no best before the first horizon or validation
      writer.scalar(tag, info[k], step)
  for k, v in info.items():
    if k not in _TUNER_KEYS:
      writer.scalar(f"estimator/{k}", v, step)
  grad, chains = np.asarray(info["grad"]), np.asarray(info["chain_grads"])
  ema_mean, ema_var = np.asarray(info["grad_ema_mean"]), np.asarray(info["grad_ema_var"])
  chain_var = np.asarray(info["chain_variance"])
  num_chains = chains.shape[0]
  finite_steps = int(info["step"]) - int(info["num_skipped"])
  for i, name in enumerate(names):
    writer.scalar(f"hypergrad/{name}", grad[i], step)
    std = math.sqrt(ema_var[i])
    for tag, value in (("mean", ema_mean[i]), ("variance", ema_var[i]),
                       ("lower", ema_mean[i] - std), ("upper", ema_mean[i] + std)):
      writer.scalar(f"hypergrad_time/{tag}/{name}", value, step)
    if finite_steps >= MIN_SNR_STEPS:
      writer.scalar(f"hypergrad_time/snr/{name}", snr(ema_mean[i], ema_var[i]), step)
    if num_chains > 1:
      std = math.sqrt(chain_var[i])
      for tag, value in (("variance", chain_var[i]), ("lower", grad[i] - std),
                         ("upper", grad[i] + std)):
        writer.scalar(f"hypergrad_chains/{tag}/{name}", value, step)
      if num_chains >= 4:  # a variance from fewer chains is too rough to divide by
        writer.scalar(f"hypergrad_chains/snr/{name}",
                      snr(grad[i], chain_var[i], num_samples=num_chains), step)
      writer.histogram(f"hypergrad_chains/samples/{name}", chains[:, i], step,
                       buckets=max(2, min(30, num_chains)))


def log_hyperparameters(writer: SummaryWriter, values: Mapping[str, object], step: int, *,
                        image: bool = False) -> None:
  """Logs hyperparameters in natural units: the dict an inner problem's ``hyperparameters`` returns.

  A scalar ``<name>`` goes to ``hyperparameters/<name>``, an array (one value
  per parameter group) to ``hyperparameters/<name>/<i>``. A schedule comes as
  ``<name>_curve`` (its value at every inner step; ``(G, horizon)`` for one
  schedule per parameter group), optionally with ``<name>_knots`` (the inner
  steps of its knots); its ``<name>`` entry, if any, is not logged (it is
  only the value at step 0). Its values at the knots (:func:`schedule_points`)
  go to ``hyperparameters/<name>/knot_<k>`` (``.../knot_<k>/<g>`` per group;
  ``step_<t>`` for a schedule without knots), the names
  :func:`coordinate_names` gives theta's knots, and, if ``image``, the curve
  over inner steps to the image ``schedule/<name>`` (log scale, a line per
  group, the knots marked).

  Examples:
    >>> import numpy as np, tempfile, metaopt
    >>> values = {"weight_decay": 1e-4, "learning_rate_curve": np.geomspace(0.1, 0.01, 20),
    ...           "learning_rate_knots": np.array([0.0, 19.0])}
    >>> with metaopt.tensorboard.SummaryWriter(tempfile.mkdtemp()) as writer:
    ...   metaopt.tensorboard.log_hyperparameters(writer, values, 1)
  """
  points = schedule_points(values)
  extras = {f"{s}{suffix}" for s in points for suffix in ("", "_curve", "_knots")}
  for name, value in values.items():
    if name in extras:
      continue
    value = np.asarray(value)
    if value.ndim == 0:
      writer.scalar(f"hyperparameters/{name}", value, step)
    else:
      for i, v in enumerate(value.reshape(-1)):
        writer.scalar(f"hyperparameters/{name}/{i}", v, step)
  for name, (labels, steps, at) in points.items():
    rows = at.reshape(-1, len(labels))
    for g, row in enumerate(rows):
      for label, v in zip(labels, row):
        writer.scalar(f"hyperparameters/{name}/{label}" + (f"/{g}" if at.ndim > 1 else ""), v,
                      step)
    if image:
      curve = np.asarray(values[f"{name}_curve"])
      writer.curve(f"schedule/{name}", np.arange(curve.shape[-1]),
                   curve.reshape(-1, curve.shape[-1]).T, step, xlabel="inner step",
                   ylabel=name.replace("_", " "), log_y=True,
                   markers=(np.broadcast_to(steps, rows.shape).T, rows.T),
                   labels=[f"group {g}" for g in range(len(rows))] if at.ndim > 1 else None)


def log_schedule_curves(writer: SummaryWriter, untuned: Mapping[str, object],
                        tuned: Mapping[str, object]) -> None:
  """Each schedule over the inner steps of one horizon, untuned and tuned, as scalars.

  Tags ``schedule/<name>/untuned`` and ``schedule/<name>/tuned`` (group 0's
  for one schedule per group), whose step is the INNER step: TensorBoard
  draws the two schedules over the horizon on one chart.
  """
  for key in untuned:
    if key.endswith("_curve"):
      name = key[:-len("_curve")]
      for which, values in (("untuned", untuned), ("tuned", tuned)):
        curve = np.asarray(values[key]).reshape(-1, np.shape(values[key])[-1])[0]
        for t, v in enumerate(curve):
          writer.scalar(f"schedule/{name}/{which}", v, t)


def tuner_layout(names: list[str], *, num_chains: int,
                 schedules: Mapping[str, list[str]] | None = None) -> layout_pb2.Layout:
  """A TensorBoard custom-scalars layout of :func:`log_tuner_info`'s tags.

  One category per coordinate of theta: margin charts of the hypergradient's
  mean ± one standard deviation across chains (with more than one chain: the
  estimator's noise) and over time (its moving averages), and a chart of its
  signal-to-noise ratio (across chains from 4 chains, else over time); then one category per
  schedule with its values at the knots over outer steps and its untuned and
  tuned curves over inner steps (:func:`log_schedule_curves`).

  Args:
    names: :func:`coordinate_names` of theta.
    num_chains: the tuner's chains.
    schedules: ``{name: labels}`` of :func:`schedule_points`.
  """
  categories = []
  for name in names:
    over_time = layout_pb2.Chart(
        title=f"{name}: moving mean ± std over time",
        margin=layout_pb2.MarginChartContent(series=[layout_pb2.MarginChartContent.Series(
            value=f"hypergrad_time/mean/{name}", lower=f"hypergrad_time/lower/{name}",
            upper=f"hypergrad_time/upper/{name}")]))
    charts = [over_time]
    if num_chains > 1:  # the estimator's noise: first
      charts.insert(0, layout_pb2.Chart(
          title=f"{name}: mean ± std across {num_chains} chains",
          margin=layout_pb2.MarginChartContent(series=[layout_pb2.MarginChartContent.Series(
              value=f"hypergrad/{name}", lower=f"hypergrad_chains/lower/{name}",
              upper=f"hypergrad_chains/upper/{name}")])))
    # One SNR per chart (a chart colours by run, not by tag): across chains where it is written.
    which = "chains" if num_chains >= 4 else "time"
    charts.append(layout_pb2.Chart(
        title=f"{name}: signal-to-noise ratio " + (
            f"across {num_chains} chains" if which == "chains" else "over time"),
        multiline=layout_pb2.MultilineChartContent(
            tag=[rf"^hypergrad_{which}/snr/{re.escape(name)}$"])))
    categories.append(layout_pb2.Category(title=f"hypergradient {name}", chart=charts))
  for name in schedules or {}:
    categories.append(layout_pb2.Category(title=f"schedule {name}", chart=[
        layout_pb2.Chart(title=f"{name} at its knots, over outer steps",
                         multiline=layout_pb2.MultilineChartContent(
                             tag=[rf"^hyperparameters/{re.escape(name)}/(knot|step)_"])),
        layout_pb2.Chart(title=f"{name} over inner steps: untuned and tuned",
                         multiline=layout_pb2.MultilineChartContent(
                             tag=[rf"^schedule/{re.escape(name)}/(untuned|tuned)$"]))]))
  return layout_pb2.Layout(category=categories)
