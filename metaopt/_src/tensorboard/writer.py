"""TensorBoard event files written with the tensorboard package alone (TensorFlow is never
imported): scalars, histograms, images, curves, hparams, custom-scalar layouts, resumes."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import time
from typing import Mapping

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
from tensorboard.plugins.hparams import api_pb2 as hparams_api
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2 as hparams_plugin_data
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from metaopt._src.files import files


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
    >>> with metaopt.tensorboard.SummaryWriter(logdir) as writer:  # killed after step 3, checkpoint at 1
    ...   for step in (1, 2, 3):
    ...     writer.scalar("loss", 1.0 / step, step)
    >>> with metaopt.tensorboard.SummaryWriter(logdir, resume_step=2) as writer:  # steps 2 and 3 removed
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
    self._described = set()
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

  def scalar(self, tag: str, value, step: int, *, description: str | None = None) -> None:
    """A scalar; ``description`` (Markdown, shown under the chart) goes with the tag's first
    value in this writer (TensorBoard reads a tag's metadata from its first event)."""
    if description is not None and tag in self._described:
      description = None
    elif description is not None:
      self._described.add(tag)
    self._emit(scalar_pb(tag, np.asarray(value, np.float64), description=description), step)

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
              trial_id: str | None = None, *, experiment: bool = True,
              status: str | None = None) -> None:
    """One hparams session: the config (unless ``experiment=False``: a study writes one for
    all its sessions, :meth:`experiment`), the final metrics as scalars under their tags, and
    with ``status`` (``"STATUS_SUCCESS"``, ``"STATUS_FAILURE"``...) the session's end."""
    clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
             for k, v in hparams.items()}
    if experiment:
      self._emit(hparams_summary.hparams_config_pb(
          hparams=[hparams_summary.HParam(k) for k in clean],
          metrics=[hparams_summary.Metric(m) for m in metrics]), 0)
    self._emit(hparams_summary.hparams_pb(clean, trial_id=trial_id), 0)
    self.scalars(metrics, step)
    if status is not None:
      info = hparams_plugin_data.SessionEndInfo(status=hparams_api.Status.Value(status),
                                                end_time_secs=time.time())
      value = summary_pb2.Summary.Value(
          tag=hparams_metadata.SESSION_END_INFO_TAG, tensor=hparams_metadata.NULL_TENSOR,
          metadata=hparams_metadata.create_summary_metadata(
              hparams_plugin_data.HParamsPluginData(session_end_info=info)))
      self._emit(summary_pb2.Summary(value=[value]), step)

  def experiment(self, hparams: Mapping[str, list], metrics: Mapping[str, str]) -> None:
    """The HParams experiment of a set of sessions (written in a folder above them): each
    hparam with the values its sessions take (a discrete domain, so that TensorBoard lists
    and filters them), each metric tag with its description."""
    def domain(values):
      values = sorted(set(values), key=str)
      kinds = {type(v) for v in values}
      if len(kinds) == 1 and kinds <= {str, bool, float, int}:
        return hparams_summary.Discrete(values)
      return None
    self._emit(hparams_summary.hparams_config_pb(
        hparams=[hparams_summary.HParam(k, domain(v)) for k, v in hparams.items()],
        metrics=[hparams_summary.Metric(m, description=d) for m, d in metrics.items()]), 0)

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
