"""Entry point behind launch.py: validate, prepare the workdir, run."""
from __future__ import annotations

import json
import os
import shutil
import sys

import ml_collections

from afl import config as config_lib
from afl import metrics


def _make_logger(workdir: str | None):
  path = os.path.join(workdir, "log.txt") if workdir else None

  def log(msg: str):
    print(f"[afl] {msg}", file=sys.stderr, flush=True)
    if path:
      with open(path, "a") as f:
        f.write(msg + "\n")
  return log


def prepare_workdir(workdir: str, cfg: config_lib.ExperimentConfig,
                    overwrite: bool = False, resume: bool = False):
  """Refuses a workdir that holds a run unless `overwrite` (start afresh) or
  `resume` (continue it; the config must be the same)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path) and not overwrite:
    with open(path) as f:
      old = json.load(f)
    if old != metrics.config_record(cfg):
      raise config_lib.ConfigError(
          f"workdir {workdir} holds a run of a different config; pass "
          f"--overwrite to replace it or choose another --workdir")
    if not resume:
      raise config_lib.ConfigError(
          f"workdir {workdir} already holds this run; pass --resume to "
          f"continue it or --overwrite to start again")
  if overwrite and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)


def run(config: ml_collections.ConfigDict, workdir: str | None,
        overwrite: bool = False, resume: bool = False) -> dict:
  """Validates `config`, runs the simulation, returns the summary."""
  cfg = config_lib.build_config(config)
  cfg.distributed.initialize()
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() > 0:
    workdir = None  # every process runs the same loop; process 0 writes
  if workdir:
    prepare_workdir(workdir, cfg, overwrite, resume)
  log = _make_logger(workdir)
  from afl.simulation import Simulation  # pylint: disable=g-import-not-at-top
  summary = Simulation(cfg, workdir, log=log).run(resume=resume)
  log("summary: " + metrics.dumps(summary))
  if workdir:
    from afl import report  # pylint: disable=g-import-not-at-top
    report.write_report(workdir)
  return summary
