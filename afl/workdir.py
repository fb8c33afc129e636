"""Run folders: what afl writes in one, and how it is checked and cleared.

A run folder (`--workdir`) holds afl's own files (`RUN_FILES`, `RUN_DIRS`)
and may hold anything else of the user's. afl never deletes what it did not
write: `--overwrite` removes exactly afl's own entries and refuses, naming
the first foreign one, when the folder holds anything else. A workdir that
is a file, lies under a file or cannot be written is refused before any
work (`WorkdirError`: one line).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile

from afl import config as config_lib
from afl import metrics

# Everything a run writes at the top of its folder.
RUN_FILES = frozenset({
    "config.json", "metrics.jsonl", "summary.json", "log.txt", "report.md",
    "malicious.json", "trust.npz", "trust.png", "accuracy.png",
    "staleness.png"})
RUN_DIRS = frozenset({"checkpoints", "checkpoints_damaged", "tensorboard",
                      "adapter", "merged"})


class WorkdirError(OSError):
  """A workdir that cannot be used, or a write into it that failed."""


def foreign_entries(workdir: str) -> list[str]:
  """Sorted names in `workdir` that afl did not write (a file where afl
  writes a folder, or the reverse, counts as foreign)."""
  out = []
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name)
    ours = (name in RUN_FILES and os.path.isfile(path)
            and not os.path.islink(path)) or (
                name in RUN_DIRS and os.path.isdir(path)
                and not os.path.islink(path))
    if not ours:
      out.append(name)
  return out


def clear_run(workdir: str):
  """Removes afl's own entries from `workdir`; refuses (WorkdirError) when
  anything else is there, before removing anything."""
  foreign = foreign_entries(workdir)
  if foreign:
    more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
    raise WorkdirError(
        f"workdir {workdir} holds {os.path.join(workdir, foreign[0])}{more}, "
        "which afl did not write; --overwrite removes only a run's own "
        "files, so move it or choose another --workdir")
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if name in RUN_DIRS:
      shutil.rmtree(path)
    else:
      os.remove(path)


def _usable(workdir: str):
  """Creates `workdir` if needed and checks that files can be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} cannot be used: "
                       f"{e.strerror or e}"
                       + (f" ({e.filename})" if e.filename
                          and e.filename != workdir else "")) from None


def prepare(workdir: str, cfg: config_lib.ExperimentConfig,
            overwrite: bool = False, resume: bool = False):
  """Refuses a workdir that holds a run unless `overwrite` (start afresh,
  removing only afl's files) or `resume` (continue it; the config must be
  the same); refuses an unusable one (`WorkdirError`)."""
  _usable(workdir)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path) and not overwrite:
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise WorkdirError(f"{path} cannot be read ({e}); pass --overwrite "
                         "to start the run again") from None
    if old != metrics.config_record(cfg):
      raise config_lib.ConfigError(
          f"workdir {workdir} holds a run of a different config; pass "
          f"--overwrite to replace it or choose another --workdir")
    if not resume:
      raise config_lib.ConfigError(
          f"workdir {workdir} already holds this run; pass --resume to "
          f"continue it or --overwrite to start again")
  if overwrite:
    clear_run(workdir)


def last_checkpoint(workdir: str) -> str | None:
  """The newest checkpoint step folder in `workdir`, or None."""
  root = os.path.join(workdir, "checkpoints")
  steps = ([int(n) for n in os.listdir(root) if n.isdigit()]
           if os.path.isdir(root) else [])
  return os.path.join(root, str(max(steps))) if steps else None


def write_failure(workdir: str, err: OSError) -> WorkdirError | None:
  """A one-line `WorkdirError` for `err` when it is a failed write into
  `workdir` (any error on a path inside it, or a full disk); else None."""
  inside = err.filename and os.path.abspath(str(err.filename)).startswith(
      os.path.abspath(workdir) + os.sep)
  if not (inside or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
    return None
  ckpt = last_checkpoint(workdir)
  where = (f"the last checkpoint is {ckpt} (continue with --resume once "
           "there is room)" if ckpt else "no checkpoint was written")
  return WorkdirError(f"writing into workdir {workdir} failed: "
                      f"{err.strerror or err}"
                      + (f" ({err.filename})" if err.filename else "")
                      + f"; {where}")
