"""TensorBoard event files written with the tensorboard package alone (TensorFlow is never
imported), and what the tuner and the inner problems log to them."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import stat
import struct
import time
from typing import Mapping

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.histogram.summary_v2 import histogram_pb
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from metaopt._src import files


class SummaryWriter:
  """Scalars, histograms, images and an hparams session, as TensorBoard reads them.

  Scalars and histograms are v2 summaries (``EventAccumulator`` lists them
  under ``Tags()['tensors']``); images are classic PNG image summaries. Every
  writer adds one new event file to ``logdir`` and starts it with a
  ``SessionLog.START`` event.

  Resuming: a run killed after its checkpoint at outer step ``k`` may already
  have written events of steps ``k + 1``, ``k + 2``, ... that the resumed run
  writes again. TensorBoard's readers disagree on which of them to show (the
  Python event multiplexer drops them only on a second ``SessionLog.START``,
  the Rust data server only for a tag written again at an earlier step, the
  legacy ``EventAccumulator`` never for tensor summaries), so with
  ``resume_step=k + 1`` this writer removes them from the files themselves:
  every event file directly in ``logdir`` that holds an event of a step
  ``>= resume_step`` is replaced, under the same name, by a copy without those
  events (the ``file_version`` record is always kept). The copy is written to
  a temporary file (a name TensorBoard does not read), fsync'ed and renamed
  over the original, so a crash leaves either the old file or the complete
  copy. Symbolic links are never read or written through; a truncated last
  record (the process was killed in the middle of writing it) is dropped; a
  record that fails its header checksum and everything after it are copied
  unchanged. The resuming writer must be the only writer of ``logdir``. A
  value it is asked to write at a step below ``resume_step`` is left out when
  the events kept hold that tag's last point at that very step: the
  interrupted run wrote it already (a run killed after its last checkpoint
  had logged its final metrics and hparams session).

  A TensorBoard left open across the resume has read the old files already:
  the Python multiplexer drops its copy of those steps at the resumed run's
  ``SessionLog.START`` (it ignores a run's first one, which is why every
  writer writes one); the Rust data server ignores ``SessionLog.START`` and
  drops them tag by tag as the resumed run logs each tag again, so until then,
  or until it restarts, it may still show a killed run's points beyond the
  resumed run's progress (never a step twice).

  Without ``resume_step`` nothing is removed, and the ``SessionLog.START`` is
  at step 0: the Python multiplexer then shows this run in place of the
  events an earlier writer of this module left in ``logdir`` (a run restarted
  from scratch).

  Args:
    logdir: the run's folder.
    resume_step: the first step the resumed run writes (the checkpoint's step
      plus one), or ``None`` for a new run.

  Raises:
    ValueError: if ``resume_step`` is not an integer ``>= 0``.

  Examples:
    >>> import os, tempfile, metaopt
    >>> logdir = tempfile.mkdtemp()
    >>> with metaopt.SummaryWriter(logdir) as writer:  # killed after step 3, checkpoint at 1
    ...   for step in (1, 2, 3):
    ...     writer.scalar("loss", 1.0 / step, step)
    >>> with metaopt.SummaryWriter(logdir, resume_step=2) as writer:  # steps 2 and 3 removed
    ...   for step in (2, 3, 4):
    ...     writer.scalar("loss", 1.0 / step, step)
    >>> len([f for f in os.listdir(logdir) if "tfevents" in f])
    2
  """

  def __init__(self, logdir: str, *, resume_step: int | None = None):
    if resume_step is not None:
      if isinstance(resume_step, bool) or not isinstance(resume_step, (int, np.integer)):
        raise ValueError(f"resume_step must be an integer or None, got {resume_step!r}")
      if resume_step < 0:
        raise ValueError(f"resume_step must be >= 0, got {resume_step}")
      resume_step = int(resume_step)
      # Before the new file exists: it is never rewritten.
      self._kept_last_step = _drop_events_from(logdir, resume_step)
    else:
      self._kept_last_step = {}
    self._writer = EventFileWriter(logdir, max_queue_size=1000, flush_secs=30)
    # The Python multiplexer ignores a run's first START and purges on the later ones, so every
    # writer starts with one: a resumed run's START then always purges what a reader still holds.
    self._emit_event(event_pb2.Event(
        step=0 if resume_step is None else resume_step, wall_time=time.time(),
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def _emit_event(self, event):
    self._writer.add_event(event)

  def _emit(self, summary, step):
    step = int(step)
    if self._kept_last_step:
      # A value the interrupted run already logged at a step below resume_step (the final
      # metrics and hparams session of a run killed after its last checkpoint): written once.
      values = [v for v in summary.value if self._kept_last_step.get(v.tag) != step]
      if len(values) < len(summary.value):
        if not values:
          return
        summary = summary_pb2.Summary(value=values)
    self._emit_event(event_pb2.Event(summary=summary, step=step, wall_time=time.time()))

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
            log_y: bool = False, markers=None, labels=None) -> None:
    """A line plot rendered to PNG (matplotlib, Agg) as an image summary; ``labels`` names the
    lines (the columns of ``y``) in a legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    lines = ax.plot(np.asarray(x), np.asarray(y))
    if labels is not None:
      ax.legend(lines, labels, fontsize="small")
    if markers is not None:
      mx, my = markers
      ax.plot(np.asarray(mx), np.asarray(my), "o")
    if log_y:
      ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{tag} at outer step {step}")
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

  def custom_scalars(self, layout: layout_pb2.Layout) -> None:
    """The custom-scalars dashboard's layout (the summary the tensorboard package's own
    ``custom_scalar.summary.pb`` makes, built without TensorFlow)."""
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.
                                    TensorShapeProto(), string_val=[layout.SerializeToString()])
    value = summary_pb2.Summary.Value(tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG,
                                      metadata=custom_scalar_metadata.create_summary_metadata(),
                                      tensor=tensor)
    self._emit(summary_pb2.Summary(value=[value]), 0)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self) -> "SummaryWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def pyplot():
  """matplotlib's pyplot on the Agg backend (files only, no display); imported on first use."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


# Both TensorBoard readers take every file whose name contains "tfevents" for an event file, so
# the temporary copies get a prefix of their own (write_atomic names them after their destination).
_TMP_PREFIX, _TMP_SUFFIX = ".summary-rewrite-", ".tmp"


def _drop_events_from(logdir: str, step: int) -> dict[str, int]:
  """Removes the events of steps ``>= step`` from the event files directly in ``logdir``.

  See :class:`SummaryWriter` (``resume_step``) for what is kept and how files are replaced.

  Returns:
    The last step of every summary tag in the events kept.
  """
  last_step = {}
  try:
    names = sorted(os.listdir(logdir))
  except FileNotFoundError:
    return last_step
  for name in names:
    path = os.path.join(logdir, name)
    if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
      # Left by a process killed during a rewrite; the rename never happened, so the original
      # file is intact and this partial copy is of no use.
      with contextlib.suppress(FileNotFoundError):
        if stat.S_ISREG(os.lstat(path).st_mode):
          os.remove(path)
    elif "tfevents" in name:
      _rewrite_event_file(path, step, last_step)
  return last_step


def _rewrite_event_file(path: str, step: int, last_step: dict[str, int] | None = None) -> None:
  """Replaces the event file ``path`` by a copy without the events of steps ``>= step``, if any.

  ``last_step[tag]`` is raised to the last step of ``tag`` among the events kept.
  """
  last_step = {} if last_step is None else last_step
  try:
    # O_NOFOLLOW: a planted link must not make us copy a file from elsewhere into the run folder.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
  except FileNotFoundError:
    return
  except OSError:
    if os.path.islink(path):
      return  # neither read nor replaced: it is not this run's file
    raise
  with os.fdopen(fd, "rb") as f:
    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode):
      return
    data = f.read()
  kept, end, dropped = [], 0, False
  while end + 12 <= len(data):
    header = data[end:end + 8]
    if struct.unpack("<I", data[end + 8:end + 12])[0] != masked_crc32c(header):
      break  # corrupt: no reader gets past this record; the rest is copied unchanged
    record_end = end + 12 + struct.unpack("<Q", header)[0] + 4
    if record_end > len(data):
      break  # the last record, cut short by a kill
    try:
      event = event_pb2.Event.FromString(data[end + 12:record_end - 4])
    except Exception:  # pylint: disable=broad-except  # a damaged record: as above
      break
    if event.step < step or event.HasField("file_version"):
      kept.append(data[end:record_end])
      for value in event.summary.value:
        last_step[value.tag] = max(event.step, last_step.get(value.tag, event.step))
    else:
      dropped = True
    end = record_end
  if not dropped:
    return
  tail = data[end:]
  if tail and not _is_truncated_record(tail):
    kept.append(tail)
  files.write_atomic(path, b"".join(kept), temp_prefix=_TMP_PREFIX)


def _is_truncated_record(tail: bytes) -> bool:
  """Whether ``tail``, the bytes after the last readable record, is the start of one record."""
  if len(tail) < 12:
    return True  # not even a whole header: nothing a reader could check
  header = tail[:8]
  return (struct.unpack("<I", tail[8:12])[0] == masked_crc32c(header)
          and 12 + struct.unpack("<Q", header)[0] + 4 > len(tail))


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
    >>> metaopt.coordinate_names({"lr": jnp.float32(0.1), "wd": jnp.zeros(2)})
    ['lr', 'wd/0', 'wd/1']
    >>> metaopt.coordinate_names(jnp.float32(0.5))
    ['theta']
    >>> metaopt.coordinate_names({"learning_rate": jnp.zeros(3)}, knots={"learning_rate": 3})
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
    >>> labels, steps, points = metaopt.schedule_points(values)["learning_rate"]
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
  """Signal-to-noise ratio |mean| / sqrt(variance / num_samples), readable at zero variance.

  The variance gets a floor of 1e-6 mean² (and 1e-30): an exact, noiseless
  hypergradient then reads 1000 instead of 1e16, so one such point does not
  flatten a TensorBoard chart of noisy ones.

  Examples:
    >>> import metaopt
    >>> round(float(metaopt.snr(2.0, 4.0)), 4), round(float(metaopt.snr(2.0, 0.0)))
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
    >>> with metaopt.SummaryWriter(tempfile.mkdtemp()) as writer:
    ...   metaopt.log_tuner_info(writer, jax.device_get(info), 1, names=["theta"], window=2)
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
    >>> with metaopt.SummaryWriter(tempfile.mkdtemp()) as writer:
    ...   metaopt.log_hyperparameters(writer, values, 1)
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
