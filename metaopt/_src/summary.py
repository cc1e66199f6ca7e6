"""TensorBoard event files written with the tensorboard package alone (TensorFlow is never imported)."""

from __future__ import annotations

import io
import time
from typing import Mapping

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
