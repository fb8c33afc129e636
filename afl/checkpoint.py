"""Checkpoint and resume of a whole simulation with orbax-checkpoint.

A checkpoint holds every stateful component of the run by name (the loop
state, metrics history, server, server mode, scheduler, communication and
privacy ledger), each through the `afl.state` protocol: its arrays go
through orbax's StandardSave, its host state into one JsonSave, in one
composite step directory that orbax writes atomically (a save killed
half-way leaves no step behind). Resuming from step v replays nothing and
continues exactly: a run killed and resumed ends with the same parameters
as one never interrupted (tests/test_checkpoint.py).

After orbax finishes a step, afl writes `afl_checksums.json` into it (the
SHA-256 of every other file, written atomically). `resume` verifies the
newest step against it (a step without one, e.g. killed between the two
writes, is checked by orbax's reading alone), falls back to the next older
step when it is damaged, naming it in a warning, and moves damaged steps
aside to `checkpoints_damaged/` (never deleted); with no intact step it
stops with one line (`CheckpointError`).

numpy leaves whose dtype JAX keeps (not 64-bit ones while x64 is off) are
handed to orbax as CPU `jax.Array`s: orbax deep-copies numpy arrays before
writing them in the background, which for the 300 MB of pending updates
at a million clients cost more than the write, while `jax.device_put` on
the CPU device uses a numpy buffer in place. `save` waits for the write,
so nothing changes those buffers meanwhile; `restore` copies such leaves
back into writable numpy arrays.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                            "checkpoints"), options=opts)


SUMS = "afl_checksums.json"
DAMAGED = "checkpoints_damaged"  # next to checkpoints/, in the workdir


class CheckpointError(RuntimeError):
  """No intact checkpoint to resume from (one-line message)."""


def step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(mngr.directory), str(step))


def _digests(path: str) -> dict:
  out = {}
  for d, dirs, files in os.walk(path):
    dirs.sort()
    for f in sorted(files):
      full = os.path.join(d, f)
      rel = os.path.relpath(full, path)
      if rel in (SUMS, SUMS + ".tmp"):  # .tmp: a kill while writing SUMS
        continue
      with open(full, "rb") as fh:
        out[rel] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _write_sums(path: str):
  sums = _digests(path)
  tmp = os.path.join(path, SUMS + ".tmp")
  with open(tmp, "w") as f:
    json.dump(sums, f)
  os.replace(tmp, os.path.join(path, SUMS))


def verify(path: str) -> str | None:
  """What is wrong with the step folder `path` by its checksums, or None
  (also None without a checksum file: orbax's reading decides then)."""
  sums = os.path.join(path, SUMS)
  if not os.path.exists(sums):
    return None
  try:
    with open(sums) as f:
      want = json.load(f)
  except (OSError, ValueError):
    return f"{SUMS} is unreadable"
  got = _digests(path)
  for rel in sorted(set(want) | set(got)):
    if rel not in got:
      return f"{rel} is missing"
    if rel not in want:
      return f"{rel} was not written by the checkpoint"
    if got[rel] != want[rel]:
      return f"{rel} does not match its checksum"
  return None


def save(mngr: ocp.CheckpointManager, components: dict, step: int,
         elapsed: float):
  """Writes `step` (overwriting nothing already there), then its
  checksums."""
  if mngr.latest_step() == step:
    return
  items, host = {}, dict(elapsed=elapsed)
  for name, component in components.items():
    arrays, host[name] = component.state_dict()
    items[name] = ocp.args.StandardSave(_for_orbax(_nonempty(arrays)))
  mngr.save(step, args=ocp.args.Composite(host=ocp.args.JsonSave(host),
                                          **items))
  mngr.wait_until_finished()
  _write_sums(step_dir(mngr, step))


def restore_intact(mngr: ocp.CheckpointManager, components: dict,
                   max_to_keep: int, log=print):
  """Loads the newest intact step into `components` (module doc).

  Returns (elapsed seconds or None without any checkpoint, the manager to
  go on with: a new one when damaged steps were moved aside)."""
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    path = step_dir(mngr, step)
    problem = verify(path)
    if problem is None:
      try:
        elapsed = restore(mngr, components, step)
      except Exception as e:  # pylint: disable=broad-except
        lines = str(e).strip().splitlines()
        problem = (f"orbax cannot read it: {type(e).__name__}"
                   + (f": {lines[0][:200]}" if lines else ""))
    if problem is None:
      if not damaged:
        return elapsed, mngr
      root = str(mngr.directory)
      aside = os.path.join(os.path.dirname(root), DAMAGED)
      os.makedirs(aside, exist_ok=True)
      for bad, _ in damaged:
        dest = os.path.join(aside, str(bad))
        while os.path.exists(dest):
          dest += "_"
        shutil.move(step_dir(mngr, bad), dest)
      log(f"resuming from checkpoint {path}; damaged newer one(s) moved to "
          f"{aside}")
      return elapsed, manager(os.path.dirname(root), max_to_keep)
    damaged.append((step, problem))
    log(f"warning: checkpoint {path} is damaged ({problem}); trying an "
        "older one")
  if damaged:
    raise CheckpointError(
        f"no intact checkpoint in {mngr.directory}: "
        + "; ".join(f"step {s}: {p}" for s, p in damaged)
        + "; start again with --overwrite")
  return None, mngr


def restore(mngr: ocp.CheckpointManager, components: dict,
            step: int | None = None):
  """Loads the latest (or given) step into `components`; returns elapsed
  seconds, or None when there is no checkpoint."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  host = mngr.restore(step, args=ocp.args.Composite(
      host=ocp.args.JsonRestore())).host
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{name: ocp.args.StandardRestore() for name in components}))
  for name, component in components.items():
    arrays = jax.tree_util.tree_map(_writable, dict(restored[name]))
    arrays.pop("_present")
    component.load_state_dict(arrays, host[name])
  return host["elapsed"]


def _for_orbax(arrays: dict) -> dict:
  """numpy leaves of a dtype JAX keeps -> CPU jax.Arrays (module doc)."""
  cpu = jax.devices("cpu")[0]

  def put(x):
    if (isinstance(x, np.ndarray)
        and jax.dtypes.canonicalize_dtype(x.dtype) == x.dtype):
      return jax.device_put(x, cpu)
    return x
  return jax.tree_util.tree_map(put, arrays)


def _writable(x):
  # A restored jax.Array's numpy view is read-only: copy it out.
  return np.array(x) if isinstance(x, jax.Array) else np.asarray(x)


def _nonempty(arrays: dict) -> dict:
  """orbax cannot write an empty tree: a marker leaf keeps the item there.
  (Zero-size arrays are not allowed either; components avoid them.)"""
  return dict(arrays, _present=np.zeros((1,), np.int8))
