"""Checkpoint and resume of a whole simulation with orbax-checkpoint.

A checkpoint holds every stateful component of the run by name (the loop
state, metrics history, server, server mode, scheduler, communication and
privacy ledger), each through the `afl.state` protocol: its arrays go
through orbax's StandardSave, its host state into one JsonSave, in one
composite step directory that orbax writes atomically (a save killed
half-way leaves no step behind). Resuming from step v replays nothing and
continues exactly: a run killed and resumed ends with the same parameters
as one never interrupted (tests/test_checkpoint.py).
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                            "checkpoints"), options=opts)


def save(mngr: ocp.CheckpointManager, components: dict, step: int,
         elapsed: float):
  """Writes `step` (overwriting nothing already there)."""
  if mngr.latest_step() == step:
    return
  items, host = {}, dict(elapsed=elapsed)
  for name, component in components.items():
    arrays, host[name] = component.state_dict()
    items[name] = ocp.args.StandardSave(_nonempty(arrays))
  mngr.save(step, args=ocp.args.Composite(host=ocp.args.JsonSave(host),
                                          **items))
  mngr.wait_until_finished()


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
    arrays = jax.tree_util.tree_map(np.asarray, dict(restored[name]))
    arrays.pop("_present")
    component.load_state_dict(arrays, host[name])
  return host["elapsed"]


def _nonempty(arrays: dict) -> dict:
  """orbax cannot write an empty tree: a marker leaf keeps the item there.
  (Zero-size arrays are not allowed either; components avoid them.)"""
  return dict(arrays, _present=np.zeros((1,), np.int8))
