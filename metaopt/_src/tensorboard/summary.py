"""What the tuner and the inner problems log to TensorBoard: coordinate names, schedules at
their knots, hypergradient noise views and their custom-scalar layout."""

from __future__ import annotations

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


WINDOW_DESCRIPTION = (
    "The hypergradient estimate of one window (the mean over the chains), the update the "
    "meta-optimiser gets at this outer step. It depends on where the window lies in its horizon "
    "(the first windows of a horizon see the most of it): hypergrad_horizon/* shows each "
    "horizon's sum. x: outer step.")


def log_tuner_info(writer: SummaryWriter, info: Mapping[str, object], step: int, *,
                   names: list[str], window: int) -> None:
  """Logs one outer step's ``info`` from :func:`~metaopt.tuner` (not stacked over steps).

  Tags: ``loss/per_inner_step`` (the window's summed meta-loss divided by
  ``window``), ``tuner/best_loss`` (the best validated theta's score, or the
  best horizon's mean loss without validation), ``estimator/<metric>`` for
  every other metric, the flat diagnostics ``diagnostics/{finite,num_skipped,
  num_rollbacks,step_scale}``, and per coordinate ``<name>`` of ``names``:
  ``hypergrad/<name>`` (the window's estimate, the chains' mean) and, with
  more than one chain, the histogram ``hypergrad_chains/samples/<name>`` (one
  value per chain). Each horizon's summed hypergradient and its noise across
  chains (``hypergrad_horizon/*``) are :class:`metaopt.tensorboard.HorizonNoise`'s.

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
  writer.scalar("loss/per_inner_step", np.asarray(info["loss"]) / window, step,
                description=f"The window's meta-loss per inner step (window of {window}, chains' "
                "mean). x: outer step.")
  writer.scalar("diagnostics/finite", float(info["finite"]), step)
  writer.scalar("diagnostics/num_skipped", info["num_skipped"], step)
  for k, tag in (("num_rollbacks", "diagnostics/num_rollbacks"),
                 ("step_scale", "diagnostics/step_scale"), ("best_loss", "tuner/best_loss")):
    if k in info and np.isfinite(info[k]):  # no best before the first horizon or validation
      writer.scalar(tag, info[k], step)
  for k, v in info.items():
    if k not in _TUNER_KEYS:
      writer.scalar(f"estimator/{k}", v, step)
  grad, chains = np.asarray(info["grad"]), np.asarray(info["chain_grads"])
  num_chains = chains.shape[0]
  for i, name in enumerate(names):
    writer.scalar(f"hypergrad/{name}", grad[i], step, description=WINDOW_DESCRIPTION)
    if num_chains > 1:
      writer.histogram(f"hypergrad_chains/samples/{name}", chains[:, i], step,
                       buckets=max(2, min(30, num_chains)))


def shown_values(values: Mapping[str, object]) -> dict[str, float]:
  """The scalars :func:`log_hyperparameters` logs under ``hyperparameters/``, by name: a scalar
  ``<name>``, an array ``<name>/<i>``, a schedule at its knots ``<name>/knot_<k>`` (``/<g>`` per
  group; :func:`schedule_points`), never a schedule's step-0 value alone.

  Examples:
    >>> import numpy as np
    >>> from metaopt._src.tensorboard.summary import shown_values
    >>> shown_values({"wd": 0.5, "lr_curve": np.array([1.0, 2.0]), "lr_knots": np.array([0, 1])})
    {'wd': 0.5, 'lr/knot_0': 1.0, 'lr/knot_1': 2.0}
  """
  points = schedule_points(values)
  extras = {f"{s}{suffix}" for s in points for suffix in ("", "_curve", "_knots")}
  out = {}
  for name, value in values.items():
    if name not in extras:
      value = np.asarray(value, np.float64)
      out.update({name: float(value)} if value.ndim == 0 else
                 {f"{name}/{i}": float(v) for i, v in enumerate(value.reshape(-1))})
  for name, (labels, _, at) in points.items():
    for g, row in enumerate(np.asarray(at, np.float64).reshape(-1, len(labels))):
      out.update({f"{name}/{label}" + (f"/{g}" if np.ndim(at) > 1 else ""): float(v)
                  for label, v in zip(labels, row)})
  return out


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
  for name, v in shown_values(values).items():
    writer.scalar(f"hyperparameters/{name}", v, step)
  for name, (labels, steps, at) in schedule_points(values).items():
    rows = at.reshape(-1, len(labels))
    if image:
      curve = np.asarray(values[f"{name}_curve"])
      writer.curve(f"schedule/{name}", np.arange(curve.shape[-1]),
                   curve.reshape(-1, curve.shape[-1]).T, step, xlabel="inner step",
                   ylabel=name.replace("_", " "), log_y=True,
                   markers=(np.broadcast_to(steps, rows.shape).T, rows.T),
                   labels=[f"group {g}" for g in range(len(rows))] if at.ndim > 1 else None)


def log_schedule_curves(writer: SummaryWriter, untuned: Mapping[str, object],
                        tuned: Mapping[str, object], *,
                        untuned_writer: SummaryWriter | None = None) -> None:
  """Each schedule over the inner steps of one horizon, untuned and tuned, as scalars.

  With ``untuned_writer`` (a sub-run's writer), the tag ``schedule_curve/<name>`` in
  both runs: TensorBoard draws the two in one chart, a colour per run. Without,
  the tags ``schedule/<name>/untuned`` and ``schedule/<name>/tuned`` in
  ``writer``. Group 0's schedule for one schedule per group; the step is the
  INNER step.
  """
  description = ("The schedule over the inner steps of one horizon (x: INNER step), tuned in "
                 "run '.', the initial one in run 'untuned'.")
  for key in untuned:
    if key.endswith("_curve"):
      name = key[:-len("_curve")]
      pairs = (((untuned_writer, untuned, f"schedule_curve/{name}"),
                (writer, tuned, f"schedule_curve/{name}"))
               if untuned_writer is not None else
               ((writer, untuned, f"schedule/{name}/untuned"),
                (writer, tuned, f"schedule/{name}/tuned")))
      for out, values, tag in pairs:
        curve = np.asarray(values[key]).reshape(-1, np.shape(values[key])[-1])[0]
        for t, v in enumerate(curve):
          out.scalar(tag, v, t, description=description)


def _chart(title, *tags):
  return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(tags)))


def tuner_layout(names: list[str], *, num_chains: int,
                 schedules: Mapping[str, list[str]] | None = None,
                 eval_metrics: tuple[str, ...] = (), log_names: frozenset[str] = frozenset(),
                 windows: int | None = None) -> layout_pb2.Layout:
  """A TensorBoard custom-scalars layout of what :func:`~metaopt.tune` logs.

  Categories, in order: "did tuning help?" (one chart per ``eval_metrics``
  entry: after one fresh horizon at theta so far, run '.', and at theta0, run
  'untuned'); per coordinate of theta, its horizon's summed hypergradient
  (``hypergrad_horizon/*``: mean ± one standard error across chains from 2
  chains, its signal-to-noise ratio from 4) and the per-window estimate; per
  schedule, one chart per knot over outer steps and the tuned and untuned
  curves over inner steps; last, the loss and the flat diagnostics. Titles
  say the x axis, the units (a coordinate in ``log_names`` is the log of its
  value) and the definitions.

  Args:
    names: :func:`coordinate_names` of theta.
    num_chains: the tuner's chains.
    schedules: ``{name: labels}`` of :func:`schedule_points`.
    eval_metrics: the metrics of a fresh horizon's evaluation.
    log_names: the coordinates that are the log of their value.
    windows: windows per horizon (for the titles).
  """
  every = f"every {windows} outer steps" if windows else "at each horizon's end"
  categories = []
  if eval_metrics:
    categories.append(layout_pb2.Category(title="did tuning help? (one fresh horizon, same keys)",
                                          chart=[_chart(
        f"{k}: theta so far (run '.') vs theta0 (run 'untuned'); x: outer step",
        rf"^eval/{re.escape(k)}$") for k in eval_metrics]))
  for name in names:
    wrt = f"d loss / d log({name})" if name in log_names else f"d loss / d {name}"
    charts = [layout_pb2.Chart(
        title=(f"{wrt}: each horizon's sum over its windows, mean of {num_chains} chains"
               + (" ± 1 standard error" if num_chains > 1 else "") + f"; x: outer step ({every})"),
        margin=layout_pb2.MarginChartContent(series=[layout_pb2.MarginChartContent.Series(
            value=f"hypergrad_horizon/mean/{name}", lower=f"hypergrad_horizon/lower/{name}",
            upper=f"hypergrad_horizon/upper/{name}")]))]
    if num_chains >= 4:
      charts.append(_chart(
          f"{name}: SNR of the horizon's sum = |mean| / standard error over {num_chains} "
          "chains; x: outer step", rf"^hypergrad_horizon/snr/{re.escape(name)}$"))
    charts.append(_chart(f"{wrt}: per window (depends on the window's place in its horizon); "
                         "x: outer step", rf"^hypergrad/{re.escape(name)}$"))
    categories.append(layout_pb2.Category(title=f"hypergradient {name}", chart=charts))
  for name, labels in (schedules or {}).items():
    charts = [_chart(f"{name} at {label.replace('_', ' ')}; x: outer step",
                     rf"^hyperparameters/{re.escape(name)}/{label}(/\d+)?$") for label in labels]
    charts.append(_chart(f"{name} over one horizon: tuned (run '.') vs untuned (run 'untuned'); "
                         "x: INNER step", rf"^schedule_curve/{re.escape(name)}$"))
    categories.append(layout_pb2.Category(title=f"schedule {name}", chart=charts))
  categories.append(layout_pb2.Category(title="loss and diagnostics", closed=True, chart=[
      _chart("window meta-loss per inner step (chains' mean); x: outer step",
             r"^loss/per_inner_step$"),
      _chart("best validated (or best horizon's) loss; x: outer step", r"^tuner/best_loss$"),
      _chart("diagnostics: finite, skipped, rollbacks, step scale; x: outer step",
             r"^diagnostics/")]))
  return layout_pb2.Layout(category=categories)
