"""The simulation loop: scheduler events -> lazy cohorts -> server versions.

`Simulation(cfg)` builds the components (`afl.build`) and keeps the loop's
own state as plain data (`LoopState`); the server mode object decides what
an arrival does (docs/architecture.md, "The loop" and "Exact lazy
batching"). Checkpoints save every component through the `afl.state`
protocol.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from typing import Callable

import jax
import numpy as np

from afl import backend as backend_lib
from afl import build as build_lib
from afl import client as client_lib
from afl import divergence
from afl import interrupt
from afl import scheduler as scheduler_lib
from afl import state as state_lib
from afl.config import ExperimentConfig
from afl.history import History
from afl.metrics import MetricsWriter
from afl.scheduler import Task
from afl.server.rows import Arrival


@dataclasses.dataclass(eq=False)
class LoopState:
  """What the loop itself holds: the version and clock, the versions still
  referenced by in-flight tasks, untrained tasks and trained results."""
  template: object  # the params pytree (structure for restoring)
  version: int = 0
  now: float = 0.0
  last_eval: int = 0
  versions: dict = dataclasses.field(default_factory=dict)
  refs: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  untrained: list = dataclasses.field(default_factory=list)
  results: dict = dataclasses.field(default_factory=dict)  # seq -> (d, loss)
  allocated: int = 0  # rows of the cohort arrays `results` may point into
  compact_slack = 4096  # rows allowed beyond 3x the pending ones

  def add_results(self, seqs, out):
    """Stores a cohort's (delta, loss) per task; compacts when sparse."""
    for s, r in zip(seqs, out):
      self.results[s] = r
    rows = {id(d.stacked): d.stacked for d, _ in out
            if isinstance(d, client_lib.Row)}
    self.allocated += sum(jax.tree_util.tree_leaves(a)[0].shape[0]
                          for a in rows.values())
    if self.allocated > 3 * len(self.results) + self.compact_slack:
      self._compact()

  def _compact(self):
    """Copies the pending rows of cohorts that are more than half consumed
    into arrays of their own (the same values, padded to a power of two), so
    a cohort's array is not kept alive by its last few stragglers."""
    cohorts = collections.defaultdict(list)
    for s, (d, _) in self.results.items():
      if isinstance(d, client_lib.Row):
        cohorts[id(d.stacked)].append(s)
    self.allocated = 0
    for seqs in cohorts.values():
      first = self.results[seqs[0]][0]
      size = jax.tree_util.tree_leaves(first.stacked)[0].shape[0]
      if 2 * len(seqs) >= size:
        self.allocated += size
        continue
      padded = backend_lib.bucket_size(len(seqs))
      rows = client_lib.regather([self.results[s][0] for s in seqs], padded)
      for s, row in zip(seqs, rows):
        self.results[s] = (row, self.results[s][1])
      self.allocated += padded

  def state_dict(self):
    arrays = {}
    for v, p in self.versions.items():
      arrays.update(state_lib.flatten(p, f"v{v}_"))
    if self.results:
      deltas, losses = zip(*self.results.values())
      arrays.update(state_lib.flatten_rows(client_lib.host_rows(deltas),
                                           "r_"))
      arrays["r_loss"] = np.asarray(losses, np.float32)
    host = dict(version=self.version, now=self.now, last_eval=self.last_eval,
                versions=list(self.versions), results=list(self.results),
                refs={str(k): v for k, v in self.refs.items()},
                untrained=len(self.untrained))
    arrays.update(scheduler_lib.tasks_to_arrays(self.untrained, "u_"))
    return arrays, host

  def load_state_dict(self, arrays: dict, host: dict):
    self.version, self.now = host["version"], host["now"]
    self.last_eval = host["last_eval"]
    self.versions = {int(v): state_lib.unflatten(self.template, arrays,
                                                 f"v{v}_")
                     for v in host["versions"]}
    seqs = host["results"]
    rows = state_lib.unflatten_rows(self.template, arrays, len(seqs), "r_")
    self.results = {int(s): (d, arrays["r_loss"][i])
                    for i, (s, d) in enumerate(zip(seqs, rows))}
    self.refs = collections.Counter({int(k): v
                                     for k, v in host["refs"].items()})
    self.untrained = scheduler_lib.tasks_from_arrays(
        arrays, host["untrained"], "u_")


class Simulation:
  """Builds everything from a validated config and runs it."""

  def __init__(self, cfg: ExperimentConfig, workdir: str | None = None,
               log: Callable = print):
    self.cfg = cfg
    self.workdir = workdir
    self.log = log
    self.c = build_lib.build(cfg, log)
    self.server = self.c.server
    self.scheduler = self.c.scheduler
    self.loop = LoopState(template=self.c.params,
                          versions={0: self.c.params})
    self.history = History(self.c.malicious)
    self.divergence = None  # (version, why) once the model diverged

  def components(self) -> dict:
    """Everything a checkpoint saves, by name (the `afl.state` protocol)."""
    c = self.c
    return dict(loop=self.loop, history=self.history, server=c.server,
                mode=c.mode, scheduler=c.scheduler, comm=c.comm,
                privacy=c.privacy)

  # -- what the server modes call --------------------------------------

  def dispatch(self):
    task = self.scheduler.dispatch(self.loop.now, self.loop.version)
    self.loop.refs[task.start_version] += 1
    self.c.comm.downloaded()
    if not task.dropped:  # a task that will drop out is never trained
      self.loop.untrained.append(task)
    return task

  def new_version(self):
    loop = self.loop
    self.c.privacy.server_aggregated(self.c.mode.last_client_ids)
    old = loop.version
    loop.version += 1
    loop.versions[loop.version] = self.server.params
    if old not in loop.refs:
      loop.versions.pop(old, None)

  # -- training and events ---------------------------------------------

  def _train(self, needed: Task):
    loop = self.loop
    tasks = loop.untrained if self.cfg.client.lazy_batching else [needed]
    out = self.c.backend([loop.versions[t.start_version] for t in tasks],
                         [t.client_id for t in tasks],
                         [t.task_index for t in tasks],
                         self.c.client_root, self.c.data)
    loop.add_results([t.seq for t in tasks], out)
    done = {t.seq for t in tasks}
    loop.untrained = [t for t in loop.untrained if t.seq not in done]
    self.history.cohort(len(tasks))

  def _release(self, task: Task):
    loop, v = self.loop, task.start_version
    loop.refs[v] -= 1
    if loop.refs[v] == 0:
      del loop.refs[v]
      if v != loop.version:
        loop.versions.pop(v, None)

  def _handle(self, task: Task) -> bool:
    """Processes one event; returns True when a new version was made."""
    loop, mode, counters = self.loop, self.c.mode, self.history.counters
    if task.dropped:
      counters["dropouts"] += 1
      self._release(task)
      return mode.end_event(self, False)
    if task.seq not in loop.results:
      self._train(task)
    delta, loss = loop.results.pop(task.seq)
    staleness = loop.version - task.start_version
    self.c.privacy.client_released(task.client_id)
    if 0 <= self.cfg.server.max_staleness < staleness:
      counters["stale_dropped"] += 1
      self._release(task)
      return mode.end_event(self, False)
    delta = self.c.comm.upload(task.client_id, delta)
    self.history.arrival(staleness, loss)
    cid = task.client_id
    made = mode.on_arrival(
        Arrival(delta, staleness, cid, int(self.c.num_examples[cid]),
                bool(self.c.malicious[cid])),
        loop.versions[task.start_version])
    self._release(task)
    made = mode.end_event(self, made)
    if made:
      self._log_trust()
    return made

  def _log_trust(self):
    """Quarantine transitions of the last aggregation go to the log."""
    info = self.server.last_info
    if self.server.trust is None or not info:
      return
    counters = self.history.counters
    for cid in np.flatnonzero(np.asarray(info["entered"])):
      counters["quarantine_entries"] += 1
      self.log(f"trust: client {cid} quarantined at version "
               f"{self.loop.version} "
               f"(malicious={bool(self.c.malicious[cid])})")
    for cid in np.flatnonzero(np.asarray(info["exited"])):
      counters["quarantine_exits"] += 1
      self.log(f"trust: client {cid} released at version {self.loop.version}")
    self.server.last_info = None

  def _diverged(self, why: str):
    """Records divergence at the current version (module afl.divergence)."""
    self.divergence = (self.loop.version, why)
    self.log(f"diverged at version {self.loop.version}: {why}; likely "
             "causes: " + "; ".join(divergence.likely_causes(self.cfg)))

  def _stop_reason(self):
    if self.divergence is not None:
      return "diverged"
    stop = self.cfg.stop
    if self.loop.version >= stop.max_versions:
      return "max_versions"
    if self.scheduler.peek_time() > stop.max_virtual_time:
      return "max_virtual_time"
    if time.perf_counter() - self.t0 > stop.max_wall_seconds:
      return "max_wall_seconds"
    return None

  def _eval_record(self):
    params = self.server.params
    acc, loss = self.c.evaluate(params)
    extra = {}
    if self.c.evaluate_backdoor is not None:
      extra["attack_success_rate"] = self.c.evaluate_backdoor(params)[0]
    if self.cfg.secagg.enabled:
      extra["secagg_clipped"] = self.server.secagg_clipped()
    self.history.counters["non_finite"] = self.server.non_finite()
    loop = self.loop
    why = divergence.loss_problem(loss, self.cfg.stop.max_test_loss)
    if why is not None:
      extra["diverged"] = True
      self._diverged(why)
    return self.history.record(
        dict(version=loop.version, virtual_time=loop.now,
             wall_time=time.perf_counter() - self.t0, test_accuracy=acc,
             test_loss=loss),
        self.history.trust_metrics(loop.version, self.server.trust),
        self.c.comm.metrics(), self.c.privacy.metrics(), extra)

  def _loop(self, writer, mngr, save, sigint) -> str:
    """Events until a stop condition; returns the stop reason. Between
    events (a safe point) a SIGINT stops it as "interrupted"."""
    cfg, loop = self.cfg, self.loop
    every = cfg.checkpoint.every_versions
    while True:
      reason = "interrupted" if sigint.set else self._stop_reason()
      if reason:
        return reason
      task = self.scheduler.pop()
      loop.now = task.arrival_time
      if self._handle(task):
        writer.progress(loop.version, loop.now)
        if not bool(divergence.all_finite(self.server.params)):
          self._diverged("the global parameters are not finite")
          continue  # no evaluation or checkpoint of a broken model
        if loop.version - loop.last_eval >= cfg.eval.every_versions:
          writer.write(self._eval_record())
          loop.last_eval = loop.version
        if (mngr is not None and every and loop.version % every == 0
            and self.divergence is None):
          save()

  def run(self, resume: bool = False) -> dict:
    """Runs to a stop condition; returns the summary dict.

    With a workdir, checkpoints every `checkpoint.every_versions` versions
    and at the end; `resume=True` continues from the latest checkpoint. A
    SIGINT stops the run at the next event boundary with a checkpoint
    (`interrupt.Interrupted`).
    """
    with interrupt.deferred_sigint() as sigint:
      return self._run(resume, sigint)

  def _run(self, resume: bool, sigint) -> dict:
    cfg, loop = self.cfg, self.loop
    mngr = None
    if self.workdir and cfg.checkpoint.enabled:
      from afl import checkpoint  # pylint: disable=g-import-not-at-top
      mngr = checkpoint.manager(self.workdir, cfg.checkpoint.max_to_keep)
    elapsed = None
    if resume and mngr is not None:
      elapsed, mngr = checkpoint.restore_intact(
          mngr, self.components(), cfg.checkpoint.max_to_keep, self.log)
      if elapsed is not None:
        self.log(f"resumed from checkpoint at version {loop.version}")
      else:
        self.log(f"resume: no checkpoint in {self.workdir} yet; starting at "
                 "version 0")
    self.t0 = time.perf_counter() - (elapsed or 0.0)
    if self.workdir:
      with open(os.path.join(self.workdir, "malicious.json"), "w") as f:
        json.dump(dict(ids=np.flatnonzero(self.c.malicious).tolist(),
                       attack=cfg.attack.kind), f)
    writer = MetricsWriter(self.workdir, cfg, progress=cfg.logging.progress,
                           max_versions=cfg.stop.max_versions,
                           history=self.history.records
                           if elapsed is not None else None)
    if elapsed is None:
      writer.write(self._eval_record())
      self.c.mode.start(self)
    save = lambda: checkpoint.save(mngr, self.components(), loop.version,
                                   time.perf_counter() - self.t0)
    reason = self._loop(writer, mngr, save, sigint)
    if reason == "interrupted":
      if mngr is not None:
        save()
      writer.abort()  # no summary: the run is not complete
      where = (f"continue with --resume (checkpoint in {self.workdir})"
               if mngr is not None else "no checkpoint (no --workdir)")
      raise interrupt.Interrupted(
          f"interrupted at version {loop.version}; {where}")
    if (self.divergence is None
        and self.history.records[-1]["version"] != loop.version):
      writer.write(self._eval_record())
      loop.last_eval = loop.version
    if mngr is not None and self.divergence is None:
      save()
    summary = self.summary(reason)
    writer.close(summary, self.history.staleness_hist, self.history.records)
    if self.workdir and self.history.trust_snapshots:
      self._write_trust()
    if self.workdir and cfg.model.entry.prop("hf") and (
        self.divergence is None):
      from afl.models import peft_io  # pylint: disable=g-import-not-at-top
      peft_io.export_run(self.workdir, cfg.model, self.server.params,
                         self.c.data.frozen, self.c.dataset.num_classes,
                         self.log)
    return summary

  def _write_trust(self):
    snaps = self.history.trust_snapshots
    versions = np.array([v for v, _ in snaps])
    scores = np.stack([t for _, t in snaps])
    np.savez_compressed(os.path.join(self.workdir, "trust.npz"),
                        versions=versions, trust=scores,
                        malicious=self.c.malicious)
    if self.cfg.logging.plots:
      from afl import plotting  # pylint: disable=g-import-not-at-top
      plotting.trust_plot(os.path.join(self.workdir, "trust.png"), versions,
                          scores, self.c.malicious)

  def summary(self, reason: str) -> dict:
    return dict(
        self.history.summary(self.loop.version, self.loop.now,
                             time.perf_counter() - self.t0),
        backend=self.c.backend_kind, num_params=int(self.c.num_params),
        **self.c.comm.metrics(), **self.c.privacy.metrics(),
        **self._trust_reference(), stop_reason=reason,
        **self._divergence_summary())

  def _divergence_summary(self) -> dict:
    if self.divergence is None:
      return {}
    version, why = self.divergence
    return dict(final_test_accuracy=None, final_test_loss=None,
                diverged_at_version=version, divergence=why)

  def _trust_reference(self) -> dict:
    t = self.cfg.trust
    if not t.enabled:
      return {}
    if t.reference == "median":
      return dict(trust_reference="median")
    return dict(trust_reference="root", trust_root_examples=t.root_examples,
                trust_assumption="the server holds clean training examples "
                "(FLTrust root data)")
