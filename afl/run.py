"""Entry point behind launch.py: validate, prepare the workdir, run."""
from __future__ import annotations

import os
import sys

import ml_collections

from afl import config as config_lib
from afl import divergence
from afl import metrics
from afl import workdir as workdir_lib


def _make_logger(workdir: str | None):
  path = os.path.join(workdir, "log.txt") if workdir else None

  def log(msg: str):
    print(f"[afl] {msg}", file=sys.stderr, flush=True)
    if path:
      with open(path, "a") as f:
        f.write(msg + "\n")
  return log


def run(config: ml_collections.ConfigDict, workdir: str | None,
        overwrite: bool = False, resume: bool = False) -> dict:
  """Validates `config`, runs the simulation, returns the summary; raises
  `divergence.Diverged` (after writing the summary and report) when the
  model diverged."""
  cfg = config_lib.build_config(config)
  cfg.distributed.initialize()
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() > 0:
    workdir = None  # every process runs the same loop; process 0 writes
  if workdir:
    workdir_lib.prepare(workdir, cfg, overwrite, resume)
  log = _make_logger(workdir)
  from afl.simulation import Simulation  # pylint: disable=g-import-not-at-top
  sim = Simulation(cfg, workdir, log=log)
  try:
    summary = sim.run(resume=resume)
  except OSError as e:
    failure = workdir_lib.write_failure(workdir, e) if workdir else None
    if failure is None:
      raise
    raise failure from None
  log("summary: " + metrics.dumps(summary))
  if workdir:
    from afl import report  # pylint: disable=g-import-not-at-top
    report.write_report(workdir)
  if summary["stop_reason"] == "diverged":
    ckpt = workdir_lib.last_checkpoint(workdir) if workdir else None
    raise divergence.Diverged(
        f"the model diverged at version {summary['diverged_at_version']}: "
        f"{summary['divergence']}; "
        + (f"the last finite checkpoint is {ckpt}" if ckpt
           else "no checkpoint was kept")
        + " (likely causes in the log)")
  return summary
