"""TensorBoard event files of a run, written and read back.

`TensorBoardWriter` writes one scalar per numeric metrics field (step =
server version) with `tensorboardX`, imported only when used, so TensorFlow
is never needed; `read_tensorboard` parses the files back.
"""
from __future__ import annotations

import glob
import os
import struct
import time

from afl.run_records import is_number, read_jsonl


class TensorBoardWriter:
  """Writes metrics records as TensorBoard scalars (tensorboardX, no TF).

  One scalar per numeric field of each record, tagged with the field name,
  at step = the record's `version`.

  >>> w = TensorBoardWriter("/tmp/afl_tb_doc", purge_step=0)
  >>> w.write({"version": 0, "test_accuracy": 0.5})
  >>> w.close()
  >>> read_tensorboard("/tmp/afl_tb_doc")["test_accuracy"][-1]
  (0, 0.5)
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    """Args:
      logdir: the event files' directory (created).
      purge_step: when set, TensorBoard discards events of earlier files
        at this step or later; a resumed run passes its first new version
        so that records written after the checkpoint are not shown twice.
    """
    try:
      # pylint: disable-next=g-import-not-at-top
      from tensorboardX import SummaryWriter
    except ImportError as e:
      raise ImportError("logging.tensorboard needs the tensorboardX package "
                        "(pip install tensorboardX)") from e
    os.makedirs(logdir, exist_ok=True)
    # Files are named by the second they were opened; a unique suffix keeps
    # a second writer in the same second from truncating the first's file.
    self._writer = SummaryWriter(
        logdir, purge_step=purge_step, flush_secs=10,
        filename_suffix=f".{time.time_ns()}.{os.getpid()}")
    self.logdir = logdir

  def write(self, record: dict):
    step = int(record["version"])
    for key, value in record.items():
      if key == "version" or not is_number(value):
        continue
      self._writer.add_scalar(key, float(value), step)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def write_tensorboard(workdir: str, history: list[dict] | None = None,
                      logdir: str | None = None) -> str:
  """Writes `history` (default: workdir/metrics.jsonl) as TensorBoard
  scalars into `logdir` (default: workdir/tensorboard); returns logdir.

  Earlier events in logdir are superseded (purge from step 0).
  """
  if history is None:
    history = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  logdir = logdir or os.path.join(workdir, "tensorboard")
  writer = TensorBoardWriter(logdir, purge_step=0)
  for record in history:
    writer.write(record)
  writer.close()
  return logdir


def _records(path: str):
  """The payloads of a TFRecord file, checking both CRCs."""
  # pylint: disable-next=g-import-not-at-top
  from tensorboardX.record_writer import masked_crc32c
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    if hcrc != masked_crc32c(header):
      raise ValueError(f"{path}: corrupt record header at byte {pos}")
    body = data[pos + 12:pos + 12 + length]
    end = pos + 12 + length + 4
    if end > len(data):
      break  # a record cut short by a crash
    (bcrc,) = struct.unpack("<I", data[end - 4:end])
    if bcrc != masked_crc32c(body):
      raise ValueError(f"{path}: corrupt record at byte {pos}")
    yield body
    pos = end


def read_tensorboard(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Reads the scalars of every event file in `logdir` back.

  Files are read in the order they were started; a session-start event
  with a step (`purge_step`) drops what earlier files logged at that step
  or later, as TensorBoard does.

  Returns:
    {tag: [(step, value), ...]} in write order.
  """
  # pylint: disable-next=g-import-not-at-top
  from tensorboardX.proto import event_pb2
  files = []
  for path in glob.glob(os.path.join(logdir, "*tfevents*")):
    events = [event_pb2.Event.FromString(b) for b in _records(path)]
    if events:
      files.append((events[0].wall_time, path, events))
  scalars: dict[str, list[tuple[int, float]]] = {}
  for _, _, events in sorted(files):
    for ev in events:
      if (ev.HasField("session_log")
          and ev.session_log.status == ev.session_log.START):
        for tag in scalars:
          scalars[tag] = [(s, v) for s, v in scalars[tag] if s < ev.step]
      if ev.HasField("summary"):
        for v in ev.summary.value:
          if v.HasField("simple_value"):
            scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return scalars
