"""Run outputs: config.json, metrics.jsonl (flushed per line), summary.json,
plots, and a progress bar."""
from __future__ import annotations

import json
import math
import os
import sys

from afl import config as config_lib


def _clean(x):
  """JSON has no NaN/inf: write them as null / "inf"."""
  if isinstance(x, float):
    if math.isnan(x):
      return None
    if math.isinf(x):
      return "inf" if x > 0 else "-inf"
    return x
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if hasattr(x, "item"):  # numpy scalars
    return _clean(x.item())
  return x


def dumps(x) -> str:
  return json.dumps(_clean(x), allow_nan=False)


def config_record(cfg) -> dict:
  """The validated config exactly as config.json holds it."""
  return _clean(config_lib.to_dict(cfg))


class MetricsWriter:
  """Writes each evaluation record as it happens; `workdir=None` keeps all
  in memory only (tests)."""

  def __init__(self, workdir: str | None, cfg, *, progress: bool = True,
               max_versions: int = 0, history: list | None = None):
    """`history`: records restored from a checkpoint; metrics.jsonl is
    rewritten with exactly these (lines after the checkpoint are dropped)."""
    self.workdir = workdir
    self.cfg = cfg
    self._file = None
    if workdir:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config_record(cfg), f, indent=2)
      self._file = open(os.path.join(workdir, "metrics.jsonl"), "w")
      for record in history or []:
        self._file.write(dumps(record) + "\n")
      self._file.flush()
    self._tb = None
    if workdir and cfg.logging.tensorboard:
      from afl import tensorboard_io  # pylint: disable=g-import-not-at-top
      # Like metrics.jsonl, rewritten from the restored history: purging
      # from step 0 hides whatever earlier event files hold.
      self._tb = tensorboard_io.TensorBoardWriter(
          os.path.join(workdir, "tensorboard"), purge_step=0)
      for record in history or []:
        self._tb.write(record)
    self._bar = None
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=max_versions, unit="version", file=sys.stderr,
                       dynamic_ncols=True, leave=True)
    self._acc = history[-1]["test_accuracy"] if history else float("nan")

  def write(self, record: dict):
    self._acc = record["test_accuracy"]
    if self._file:
      self._file.write(dumps(record) + "\n")
      self._file.flush()
    if self._tb is not None:
      self._tb.write(record)
    self.progress(record["version"], record["virtual_time"])

  def progress(self, version: int, virtual_time: float):
    if self._bar is not None:
      self._bar.n = version
      self._bar.set_postfix(vtime=f"{virtual_time:.1f}",
                            acc=f"{self._acc:.4f}", refresh=False)
      self._bar.refresh()

  def abort(self):
    """Closes the files without a summary (an interrupted run)."""
    if self._bar is not None:
      self._bar.close()
    if self._file:
      self._file.close()
    if self._tb is not None:
      self._tb.close()

  def close(self, summary: dict, staleness_hist: dict, history: list):
    self.abort()
    if not self.workdir:
      return
    with open(os.path.join(self.workdir, "summary.json"), "w") as f:
      f.write(dumps(summary) + "\n")
    if self.cfg.logging.plots:
      from afl import plotting  # pylint: disable=g-import-not-at-top
      plotting.write_run_plots(self.workdir, history, staleness_hist)
