"""Checkpoint and resume of a whole simulation with orbax-checkpoint.

A checkpoint holds everything the event loop reads: server state (params,
optimizer, aggregator state), the versions still referenced, trained results
not yet arrived, the server buffer, untrained tasks, the scheduler (heap,
clocks, counters, numpy generator state) and the metric history. Arrays go
through orbax's StandardSave, the rest through JsonSave, in one composite
step directory that orbax writes atomically (a save killed half-way leaves
no step behind). Resuming from step v replays nothing and continues exactly:
a run killed and resumed ends with the same parameters as one never
interrupted (tests/test_checkpoint.py).
"""
from __future__ import annotations

import collections
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from afl import client as client_lib
from afl.scheduler import Task


def manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                            "checkpoints"), options=opts)


def _np(x):
  return np.asarray(x)


def _arrays(sim) -> dict:
  return dict(
      server=sim.server.state,
      versions={str(v): p for v, p in sim.versions.items()},
      results={str(s): dict(delta=client_lib.as_tree(d),
                            loss=_np(np.float32(l)))
               for s, (d, l) in sim.results.items()},
      buffer={str(i): client_lib.as_tree(d)
              for i, (d, _, _) in enumerate(sim.buffer)},
      scheduler=sim.scheduler.state_arrays(),
  )


def _host(sim, elapsed: float) -> dict:
  return dict(
      version=sim.version, now=sim.now, elapsed=elapsed,
      last_eval=sim.last_eval,
      refs={str(k): v for k, v in sim.refs.items()},
      version_keys=[str(v) for v in sim.versions],
      result_seqs=[str(s) for s in sim.results],
      untrained=[list(t) for t in sim.untrained],
      buffer=[[int(s), int(n)] for _, s, n in sim.buffer],
      counters=dict(sim.counters),
      staleness_hist={str(k): v for k, v in sim.staleness_hist.items()},
      since_eval={k: list(v) for k, v in sim.since_eval.items()},
      history=sim.history,
      scheduler=sim.scheduler.state_host(),
      extra=sim.extra_host(),
  )


def save(mngr: ocp.CheckpointManager, sim, elapsed: float):
  """Writes step `sim.version` (overwriting nothing already there)."""
  if mngr.latest_step() == sim.version:
    return
  mngr.save(sim.version, args=ocp.args.Composite(
      arrays=ocp.args.StandardSave(_arrays(sim)),
      # Shapes vary (e.g. residuals of however many clients took part), so
      # this item is restored as saved, without a target.
      extra=ocp.args.StandardSave(_nonempty(sim.extra_arrays())),
      host=ocp.args.JsonSave(_host(sim, elapsed))))
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, sim, step: int | None = None):
  """Loads the latest (or given) step into `sim`; returns elapsed seconds,
  or None when there is no checkpoint."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  host = mngr.restore(step, args=ocp.args.Composite(
      host=ocp.args.JsonRestore())).host
  p = sim.server.params
  template = dict(
      server=sim.server.state,
      versions={k: p for k in host["version_keys"]},
      results={k: dict(delta=p, loss=np.zeros((), np.float32))
               for k in host["result_seqs"]},
      buffer={str(i): p for i in range(len(host["buffer"]))},
      scheduler=sim.scheduler.state_arrays(),
  )
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  restored = mngr.restore(step, args=ocp.args.Composite(
      arrays=ocp.args.StandardRestore(abstract),
      extra=ocp.args.StandardRestore()))
  arrays = restored.arrays
  extra = jax.tree_util.tree_map(np.asarray, restored.extra)

  sim.server.state = arrays["server"]
  sim.versions = {int(k): v for k, v in arrays["versions"].items()}
  sim.results = {int(k): (r["delta"], r["loss"])
                 for k, r in arrays["results"].items()}
  sim.buffer = [(arrays["buffer"][str(i)], s, n)
                for i, (s, n) in enumerate(host["buffer"])]
  sim.version = host["version"]
  sim.now = host["now"]
  sim.last_eval = host["last_eval"]
  sim.refs = collections.Counter({int(k): v for k, v in host["refs"].items()})
  sim.untrained = [Task(*t) for t in host["untrained"]]
  sim.counters = collections.Counter(host["counters"])
  sim.staleness_hist = collections.Counter(
      {int(k): v for k, v in host["staleness_hist"].items()})
  sim.since_eval = collections.defaultdict(list, host["since_eval"])
  sim.history = host["history"]
  sim.scheduler.load_state(arrays["scheduler"], host["scheduler"])
  sim.load_extra(extra, host["extra"])
  return host["elapsed"]




def _nonempty(tree: dict) -> dict:
  """orbax cannot write an empty tree: a marker leaf keeps the item there.
  (Zero-size arrays are not allowed either; components avoid them.)"""
  return dict(tree, _present=np.zeros((1,), np.int8))
