"""TensorBoard event files written with the tensorboard package alone (TensorFlow is never
imported), and what the tuner and the inner problems log to them."""

from __future__ import annotations

import io
import math
import time
from typing import Mapping

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram.summary_v2 import histogram_pb
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
  """Scalars, histograms, images and an hparams session, as TensorBoard reads them.

  Scalars and histograms are v2 summaries (``EventAccumulator`` lists them
  under ``Tags()['tensors']``); images are classic PNG image summaries.

  Args:
    logdir: the run's folder.
    resume_step: when a run resumes from a checkpoint taken at this step,
      a ``SessionLog.START`` event at this step tells TensorBoard to drop any
      events of later steps that the interrupted run wrote, so the curves
      have neither duplicated nor missing steps.
  """

  def __init__(self, logdir: str, *, resume_step: int | None = None):
    self._writer = EventFileWriter(logdir, max_queue_size=1000, flush_secs=30)
    if resume_step is not None:
      self._emit_event(event_pb2.Event(
          step=int(resume_step), wall_time=time.time(),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def _emit_event(self, event):
    self._writer.add_event(event)

  def _emit(self, summary, step):
    self._emit_event(event_pb2.Event(summary=summary, step=int(step), wall_time=time.time()))

  def scalar(self, tag: str, value, step: int) -> None:
    self._emit(scalar_pb(tag, np.asarray(value, np.float64)), step)

  def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
    for tag, value in values.items():
      self.scalar(prefix + tag, value, step)

  def histogram(self, tag: str, values, step: int, buckets: int = 30) -> None:
    self._emit(histogram_pb(tag, np.asarray(values, np.float64).ravel(), buckets=buckets), step)

  def image(self, tag: str, png: bytes, step: int, height: int, width: int) -> None:
    image = summary_pb2.Summary.Image(encoded_image_string=png, height=height, width=width,
                                      colorspace=4)
    self._emit(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)]), step)

  def curve(self, tag: str, x, y, step: int, *, xlabel: str = "", ylabel: str = "",
            log_y: bool = False, markers=None) -> None:
    """A line plot rendered to PNG (matplotlib, Agg) as an image summary."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot(np.asarray(x), np.asarray(y))
    if markers is not None:
      mx, my = markers
      ax.plot(np.asarray(mx), np.asarray(my), "o")
    if log_y:
      ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{tag} at step {step}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    width, height = fig.canvas.get_width_height()
    plt.close(fig)
    self.image(tag, buffer.getvalue(), step, height, width)

  def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float], step: int,
              trial_id: str | None = None) -> None:
    """One hparams session: the config, and the final metrics as scalars under their tags."""
    clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
             for k, v in hparams.items()}
    self._emit(hparams_summary.hparams_config_pb(
        hparams=[hparams_summary.HParam(k) for k in clean],
        metrics=[hparams_summary.Metric(m) for m in metrics]), 0)
    self._emit(hparams_summary.hparams_pb(clean, trial_id=trial_id), 0)
    self.scalars(metrics, step)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self) -> "SummaryWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def coordinate_names(theta) -> list[str]:
  """One TensorBoard name per scalar coordinate of ``theta``, in ``ravel_pytree`` order.

  A leaf's name is its path with ``/`` between keys (``"theta"`` for a bare
  array); a leaf of more than one element gets ``/<i>`` per element.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> metaopt.coordinate_names({"lr": jnp.float32(0.1), "wd": jnp.zeros(2)})
    ['lr', 'wd/0', 'wd/1']
    >>> metaopt.coordinate_names(jnp.float32(0.5))
    ['theta']
  """
  names = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
    base = jax.tree_util.keystr(path).strip("[]'\"").replace("']['", "/") or "theta"
    size = int(np.size(leaf))
    names.extend([base] if size == 1 else [f"{base}/{i}" for i in range(size)])
  return names


# Info entries that log_tuner_info writes under their own tags; the rest are estimator metrics.
_TUNER_KEYS = ("loss", "grad", "chain_grads", "chain_variance", "finite", "num_skipped", "step",
               "theta", "grad_ema_mean", "grad_ema_var")


def log_tuner_info(writer: SummaryWriter, info: Mapping[str, object], step: int, *,
                   names: list[str], window: int) -> None:
  """Logs one outer step's ``info`` from :func:`~metaopt.tuner` (not stacked over steps).

  Tags: ``loss/window_sum`` and ``loss/per_inner_step`` (divided by
  ``window``), ``tuner/finite``, ``tuner/num_skipped``, ``estimator/<metric>``
  for every other metric, and per coordinate ``<name>`` of ``names``:
  ``hypergrad/<name>``, ``hypergrad_time/{mean,variance,snr}/<name>`` (moving
  averages over time) and, with more than one chain,
  ``hypergrad_chains/{variance,snr}/<name>`` (across chains; the SNR is that of
  their mean) and the histogram ``hypergrad_chains/samples/<name>``.

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
    >>> with metaopt.SummaryWriter(tempfile.mkdtemp()) as writer:
    ...   metaopt.log_tuner_info(writer, jax.device_get(info), 1, names=["theta"], window=2)
  """
  writer.scalar("loss/window_sum", info["loss"], step)
  writer.scalar("loss/per_inner_step", np.asarray(info["loss"]) / window, step)
  writer.scalar("tuner/finite", float(info["finite"]), step)
  writer.scalar("tuner/num_skipped", info["num_skipped"], step)
  for k, v in info.items():
    if k not in _TUNER_KEYS:
      writer.scalar(f"estimator/{k}", v, step)
  grad, chains = np.asarray(info["grad"]), np.asarray(info["chain_grads"])
  ema_mean, ema_var = np.asarray(info["grad_ema_mean"]), np.asarray(info["grad_ema_var"])
  chain_var = np.asarray(info["chain_variance"])
  for i, name in enumerate(names):
    writer.scalar(f"hypergrad/{name}", grad[i], step)
    writer.scalar(f"hypergrad_time/mean/{name}", ema_mean[i], step)
    writer.scalar(f"hypergrad_time/variance/{name}", ema_var[i], step)
    writer.scalar(f"hypergrad_time/snr/{name}", abs(ema_mean[i]) / math.sqrt(ema_var[i] + 1e-30),
                  step)
    if chains.shape[0] > 1:
      writer.scalar(f"hypergrad_chains/variance/{name}", chain_var[i], step)
      writer.scalar(f"hypergrad_chains/snr/{name}",
                    abs(grad[i]) / math.sqrt(chain_var[i] / chains.shape[0] + 1e-30), step)
      writer.histogram(f"hypergrad_chains/samples/{name}", chains[:, i], step)


def log_hyperparameters(writer: SummaryWriter, values: Mapping[str, object], step: int, *,
                        image: bool = False) -> None:
  """Logs hyperparameters in natural units: the dict an inner problem's ``hyperparameters`` returns.

  A scalar ``<name>`` goes to ``hyperparameters/<name>``, an array to
  ``hyperparameters/<name>/<i>``. A schedule comes as ``<name>_curve`` (its
  value at every inner step), optionally with ``<name>_knots`` (the inner steps
  of its knots): the curve stands for an array ``<name>``, its values at the
  knots go to ``schedule/knot_<k>`` (``schedule/<name>/knot_<k>`` when there
  are several schedules) and, if ``image``, the curve to the image
  ``schedule/<name>`` (log scale).

  Examples:
    >>> import numpy as np, tempfile, metaopt
    >>> values = {"weight_decay": 1e-4, "learning_rate_curve": np.geomspace(0.1, 0.01, 20),
    ...           "learning_rate_knots": np.array([0.0, 19.0])}
    >>> with metaopt.SummaryWriter(tempfile.mkdtemp()) as writer:
    ...   metaopt.log_hyperparameters(writer, values, 1)
  """
  schedules = [k[:-len("_curve")] for k in values if k.endswith("_curve")]
  extras = {f"{s}_curve" for s in schedules} | {f"{s}_knots" for s in schedules}
  for name, value in values.items():
    value = np.asarray(value)
    if name in extras or (value.ndim and name in schedules):
      continue  # a schedule: its curve and knots below
    if value.ndim == 0:
      writer.scalar(f"hyperparameters/{name}", value, step)
    else:
      for i, v in enumerate(value.reshape(-1)):
        writer.scalar(f"hyperparameters/{name}/{i}", v, step)
  for name in schedules:
    curve, knots = np.asarray(values[f"{name}_curve"]), values.get(f"{name}_knots")
    prefix = "schedule/" if len(schedules) == 1 else f"schedule/{name}/"
    if knots is not None:  # log-linear between inner steps, as the schedules interpolate
      knot_values = np.exp(np.interp(np.asarray(knots), np.arange(curve.shape[-1]), np.log(curve)))
      for k, v in enumerate(knot_values.reshape(-1)):
        writer.scalar(f"{prefix}knot_{k}", v, step)
    if image:
      writer.curve(f"schedule/{name}", np.arange(curve.shape[-1]), curve, step,
                   xlabel="inner step", ylabel=name.replace("_", " "), log_y=True)
