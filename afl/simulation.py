"""The simulation loop: scheduler events -> lazy cohorts -> server versions.

See DESIGN.md, "Scheduler: exact lazy batching". The loop is plain Python
over jitted functions; everything it holds is plain data.
"""
from __future__ import annotations

import collections
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from afl import aggregators
from afl import attacks
from afl import communication as comm_lib
from afl import client as client_lib
from afl import models
from afl.config import ConfigError, ExperimentConfig
from afl.data import loaders
from afl.data import text as text_lib
from afl.data import partition as partition_lib
from afl.metrics import MetricsWriter
from afl.privacy import ledger as privacy_lib
from afl.scheduler import Scheduler, Task
from afl.server import Server, make_optimizer


def _seeds(seed: int):
  """Independent host generators for partition and scheduler, and the root
  JAX key; fixed by the run seed alone."""
  part_ss, sched_ss = np.random.SeedSequence(seed).spawn(2)
  return (np.random.default_rng(part_ss), np.random.default_rng(sched_ss),
          jax.random.PRNGKey(seed))


def load_data(cfg: ExperimentConfig, log: Callable = print):
  d = cfg.data
  if d.name in text_lib.CORPORA:
    tokenizer = d.tokenizer or (models.resolve_checkpoint(cfg.model.checkpoint)
                                if cfg.model.checkpoint else None)
    return text_lib.load_text_dataset(
        d.name, tokenizer_path=tokenizer, max_length=d.max_length,
        seed=cfg.seed, train_limit=d.train_limit, test_limit=d.test_limit,
        log=log)
  kwargs = dict(allow_download=d.allow_download, log=log,
                hf_image_key=d.hf_image_key, hf_label_key=d.hf_label_key,
                train_limit=d.train_limit, test_limit=d.test_limit)
  if d.name == "synthetic":
    kwargs.update(num_train=d.synthetic_train, num_test=d.synthetic_test,
                  shape=tuple(d.synthetic_shape),
                  num_classes=d.synthetic_classes, seed=cfg.seed)
  return loaders.load_image_dataset(d.name, d.dir or None, **kwargs)


def make_partition(cfg: ExperimentConfig, labels, rng):
  d = cfg.data
  try:
    return partition_lib.make(d.partition, labels, cfg.num_clients, rng,
                              alpha=d.dirichlet_alpha, sigma=d.quantity_sigma,
                              min_size=d.min_shard_size)
  except ValueError as e:  # e.g. too few examples for num_clients
    raise ConfigError(f"config.data.partition: {e}") from None


def make_eval_fn(apply_fn, x, y, batch_size: int, frozen=None):
  """Returns params -> (accuracy, loss) over the whole test set.

  The test set is padded once to a multiple of the batch so one program is
  compiled; batches are a Python loop (convs inside lax.map are slow on
  XLA:CPU, see ../shared/repro).
  """
  n = len(y)
  b = min(batch_size, n)
  nb = -(-n // b)
  pad = nb * b - n
  xp = jnp.asarray(np.concatenate([x, np.zeros((pad,) + x.shape[1:],
                                                x.dtype)]))
  yp = jnp.asarray(np.concatenate([y, np.zeros(pad, y.dtype)]))
  mp = jnp.asarray(np.arange(nb * b) < n)

  # The test arrays are arguments, not closure constants: XLA would embed
  # them in the executable (slow compiles, a second copy in memory).
  @jax.jit
  def batch_stats(params, frozen, xp, yp, mp, i):
    xb = jax.lax.dynamic_slice_in_dim(xp, i * b, b)
    yb = jax.lax.dynamic_slice_in_dim(yp, i * b, b)
    mb = jax.lax.dynamic_slice_in_dim(mp, i * b, b)
    logits = apply_fn(params, xb, frozen)
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None],
                                axis=1)[:, 0]
    correct = jnp.argmax(logits, -1) == yb
    return jnp.sum(jnp.where(mb, correct, 0)), jnp.sum(jnp.where(mb, loss, 0))

  def evaluate(params):
    stats = [batch_stats(params, frozen, xp, yp, mp, np.int32(i))
             for i in range(nb)]
    correct = sum(float(c) for c, _ in stats)
    loss = sum(float(l) for _, l in stats)
    return correct / n, loss / n

  return evaluate


class Simulation:
  """Builds everything from a validated config and runs it."""

  def __init__(self, cfg: ExperimentConfig, workdir: str | None = None,
               log: Callable = print):
    self.cfg = cfg
    self.workdir = workdir
    self.log = log
    part_rng, sched_rng, root = _seeds(cfg.seed)
    self.dataset = load_data(cfg, log)
    ds = self.dataset
    self.partition = make_partition(cfg, ds.train_y, part_rng)
    log(partition_lib.format_summary(
        partition_lib.summarize(self.partition, ds.train_y, ds.num_classes)))
    self.num_examples = self.partition.sizes()

    init_key, self.client_root = jax.random.split(root)
    self.apply_fn, params, frozen = models.build_model(
        cfg.model, ds.num_classes, ds.train_x.shape[1:], init_key, log)
    self.num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    log(f"model {cfg.model.name}: {self.num_params:,} federated parameters")

    atk = cfg.attack
    atk.check_against(cfg.num_clients, ds.num_classes)
    self.malicious = atk.malicious_mask(cfg.num_clients, cfg.seed)
    data_max = float(ds.train_x.max())
    if atk.kind != "none":
      log(f"attack {atk.kind}: {int(self.malicious.sum())} malicious clients")
    self.data = client_lib.ClientData(
        x=jnp.asarray(ds.train_x), y=jnp.asarray(ds.train_y),
        indices=jnp.asarray(self.partition.indices, jnp.int32),
        offsets=jnp.asarray(self.partition.offsets, jnp.int32),
        malicious=jnp.asarray(self.malicious), frozen=frozen)
    c = cfg.client
    s = cfg.server
    capacity = cfg.concurrency if s.mode == "sync" else s.buffer_size
    self.privacy = privacy_lib.PrivacyLedger(cfg, capacity,
                                             self.num_examples, log)
    client_dp = self.privacy.client_dp()
    microbatch = 0 if client_dp else client_lib.resolve_grad_microbatch(
        c.grad_microbatch, c.batch_size,
        image_conv=cfg.model.name in models.IMAGE_CONV_MODELS)
    fns = client_lib.make_client_fns(
        client_lib.cross_entropy_loss(self.apply_fn),
        make_optimizer(c.optimizer, c.lr, dict(c.optimizer_kwargs)),
        c.batch_size, c.local_steps, dp=client_dp,
        data_attack=(atk.data_attack(ds.num_classes, data_max)
                     if atk.has_data_attack else None),
        grad_microbatch=microbatch)
    self.backend_kind = client_lib.resolve_backend(
        c.backend, has_conv=cfg.model.name in models.CONV_MODELS)
    mesh = (client_lib.client_mesh() if self.backend_kind == "vmap"
            else None)
    if mesh is not None:
      log(f"cohorts sharded over {mesh.devices.size} devices")
    workers = client_lib.resolve_workers(c.workers)
    self.backend = client_lib.Backend(
        fns, self.backend_kind, mesh, workers=workers,
        chunk=client_lib.resolve_chunk(c.vmap_chunk))
    log(f"client backend: {self.backend_kind} (config: {c.backend}), "
        f"{self.backend.workers} worker thread(s)"
        + (f", gradients in micro-batches of {microbatch}" if microbatch
           else ""))

    robust_async = s.mode == "fedasync" and (
        cfg.aggregator.name != "mean" or cfg.trust.enabled
        or atk.has_update_attack)
    self.server = Server(s, params, aggregators.get(
        cfg.aggregator.name, **cfg.aggregator.kwargs()),
                         capacity, **self.privacy.server_kwargs(),
                         trust_cfg=(cfg.trust.trust_config()
                                    if cfg.trust.enabled else None),
                         num_clients=cfg.num_clients,
                         norm_clip=cfg.aggregator.norm_clip,
                         robust_window=(cfg.aggregator.window
                                        if robust_async else 0),
                         secagg=cfg.secagg,
                         key=jax.random.fold_in(root, 2), seed=cfg.seed,
                         update_attack=(atk.update_attack()
                                        if atk.has_update_attack else None),
                         mesh=client_lib.client_mesh(jax.local_devices()))
    if (self.server.mesh is not None
        and self.server.aggregator.coordinatewise is not None):
      log(f"aggregation sharded over {self.server.mesh.devices.size} devices"
          " along the parameter axis")
    self.comm = comm_lib.Communication(cfg.compression, params)
    self.scheduler = Scheduler(cfg.scheduler, cfg.num_clients,
                               cfg.concurrency, c.local_steps, sched_rng)
    self.evaluate = make_eval_fn(self.apply_fn, ds.test_x, ds.test_y,
                                 cfg.eval.batch_size, frozen)
    self.evaluate_backdoor = None
    if atk.kind == "backdoor":
      keep = ds.test_y != atk.target  # ASR counts non-target examples
      xt = np.asarray(attacks.stamp_trigger(
          ds.test_x[keep], atk.trigger_size,
          atk.resolved_trigger_value(data_max)))
      # Accuracy against the target label on triggered inputs = ASR.
      self.evaluate_backdoor = make_eval_fn(
          self.apply_fn, xt, np.full(len(xt), atk.target, np.int32),
          cfg.eval.batch_size, frozen)

    # Loop state (plain data).
    self.version = 0
    self.now = 0.0
    self.versions = {0: params}  # versions referenced by in-flight tasks
    self.refs = collections.Counter()
    self.untrained: list[Task] = []
    self.results = {}  # task seq -> (delta, loss)
    self.buffer = []  # (delta, staleness, client_id)
    self.counters = collections.Counter()
    self.staleness_hist = collections.Counter()
    self.since_eval = collections.defaultdict(list)  # reset at evaluations
    self.history = []
    self.trust_snapshots = []  # (version, [num_clients] trust) per eval
    self.last_eval = 0

  # Hooks for components with state of their own (trust, residuals, ...):
  # arrays go to orbax, the rest to JSON (afl/checkpoint.py).
  def extra_arrays(self) -> dict:
    srv = self.server
    out = dict(privacy=self.privacy.state_arrays(),
               comm=self.comm.state_arrays(),
               window={str(i): w[0] for i, w in enumerate(srv.window)})
    if srv.trust is not None:
      out["trust"] = dict(score=srv.trust.score,
                          quarantined=srv.trust.quarantined)
    if self.trust_snapshots:
      out["trust_snapshots"] = np.stack([t for _, t in self.trust_snapshots])
    return out

  def extra_host(self) -> dict:
    srv = self.server
    return dict(num_aggregations=srv.num_aggregations,
                privacy=self.privacy.state_host(),
                comm=self.comm.state_host(),
                window=[[int(s), int(c), bool(b)] for _, s, c, b in srv.window],
                trust_versions=[v for v, _ in self.trust_snapshots])

  def load_extra(self, arrays: dict, host: dict):
    srv = self.server
    srv.num_aggregations = host["num_aggregations"]
    self.privacy.load_state(arrays["privacy"], host["privacy"])
    self.comm.load_state(arrays["comm"], host["comm"])
    srv.window = [(arrays["window"][str(i)], s, c, b)
                  for i, (s, c, b) in enumerate(host["window"])]
    if srv.trust is not None:
      srv.trust = srv.trust.replace(
          score=jnp.asarray(arrays["trust"]["score"]),
          quarantined=jnp.asarray(arrays["trust"]["quarantined"]))
    self.trust_snapshots = [
        (v, np.asarray(t)) for v, t in zip(
            host["trust_versions"], arrays.get("trust_snapshots", []))]

  # -- dispatch and training -------------------------------------------

  def _dispatch(self):
    task = self.scheduler.dispatch(self.now, self.version)
    self.refs[task.start_version] += 1
    self.comm.downloaded()
    if not task.dropped:  # a task that will drop out is never trained
      self.untrained.append(task)
    return task

  def _train(self, needed: Task):
    tasks = self.untrained if self.cfg.client.lazy_batching else [needed]
    out = self.backend([self.versions[t.start_version] for t in tasks],
                       [t.client_id for t in tasks],
                       [t.task_index for t in tasks],
                       self.client_root, self.data)
    for t, r in zip(tasks, out):
      self.results[t.seq] = r
    done = {t.seq for t in tasks}
    self.untrained = [t for t in self.untrained if t.seq not in done]
    self.counters["cohorts"] += 1
    self.counters["trained"] += len(tasks)

  def _release(self, task: Task):
    v = task.start_version
    self.refs[v] -= 1
    if self.refs[v] == 0:
      del self.refs[v]
      if v != self.version:
        self.versions.pop(v, None)

  def _new_version(self):
    if self.cfg.server.mode != "fedasync":
      self.privacy.server_aggregated()
    old = self.version
    self.version += 1
    self.versions[self.version] = self.server.params
    if old not in self.refs:
      self.versions.pop(old, None)

  # -- the event loop --------------------------------------------------

  def _record_arrival(self, staleness, loss):
    self.counters["client_updates"] += 1
    self.staleness_hist[int(staleness)] += 1
    self.since_eval["staleness"].append(staleness)
    self.since_eval["train_loss"].append(float(loss))

  def _handle(self, task: Task) -> bool:
    """Processes one event; returns True when a new version was made."""
    cfg = self.cfg
    mode = cfg.server.mode
    if task.dropped:
      self.counters["dropouts"] += 1
      self._release(task)
      return self._after_event(made_version=False)
    if task.seq not in self.results:
      self._train(task)
    delta, loss = self.results.pop(task.seq)
    staleness = self.version - task.start_version
    self.privacy.client_released(task.client_id)
    if 0 <= cfg.server.max_staleness < staleness:
      self.counters["stale_dropped"] += 1
      self._release(task)
      return self._after_event(made_version=False)
    delta = self.comm.upload(task.client_id, delta)
    self._record_arrival(staleness, loss)
    made = False
    if mode == "fedasync":
      self.counters["non_finite"] += self.server.fedasync_apply(
          self.versions[task.start_version], delta, staleness,
          task.client_id, bool(self.malicious[task.client_id]))
      self._after_aggregation()
      made = True
    else:
      self.buffer.append((delta, staleness, task.client_id))
      if mode == "fedbuff" and len(self.buffer) == cfg.server.buffer_size:
        made = self._flush_buffer()
    self._release(task)
    return self._after_event(made_version=made)

  def _after_aggregation(self):
    """Trust bookkeeping after an aggregation: transitions go to the log."""
    info = self.server.last_info
    if self.server.trust is None or info is None:
      return
    for cid in np.flatnonzero(np.asarray(info["entered"])):
      self.counters["quarantine_entries"] += 1
      self.log(f"trust: client {cid} quarantined at version {self.version}"
               f" (malicious={bool(self.malicious[cid])})")
    for cid in np.flatnonzero(np.asarray(info["exited"])):
      self.counters["quarantine_exits"] += 1
      self.log(f"trust: client {cid} released at version {self.version}")

  def _flush_buffer(self) -> bool:
    if not self.buffer:
      return False
    deltas, stale, ids = zip(*self.buffer)
    self.counters["non_finite"] += self.server.buffered_apply(
        list(deltas), list(stale), [self.num_examples[i] for i in ids],
        list(ids), malicious=self.malicious[list(ids)])
    self._after_aggregation()
    self.buffer = []
    return True

  def _after_event(self, made_version: bool) -> bool:
    if self.cfg.server.mode == "sync":
      if self.scheduler.in_flight == 0:  # round complete
        made_version = self._flush_buffer()
        if made_version:
          self._new_version()
        self._start_round()
      return made_version
    if made_version:
      self._new_version()
    self._dispatch()
    return made_version

  def _start_round(self):
    for _ in range(self.cfg.concurrency):
      self._dispatch()

  def _stop_reason(self):
    stop = self.cfg.stop
    if self.version >= stop.max_versions:
      return "max_versions"
    if self.scheduler.peek_time() > stop.max_virtual_time:
      return "max_virtual_time"
    if time.perf_counter() - self.t0 > stop.max_wall_seconds:
      return "max_wall_seconds"
    return None

  def _eval_record(self):
    acc, loss = self.evaluate(self.server.params)
    extra = {}
    if self.evaluate_backdoor is not None:
      extra["attack_success_rate"] = self.evaluate_backdoor(
          self.server.params)[0]
    w = self.since_eval
    rec = dict(
        version=self.version,
        virtual_time=self.now,
        wall_time=time.perf_counter() - self.t0,
        test_accuracy=acc,
        test_loss=loss,
        mean_staleness=float(np.mean(w["staleness"])) if w["staleness"]
        else None,
        train_loss=float(np.mean(w["train_loss"])) if w["train_loss"]
        else None,
        client_updates=self.counters["client_updates"],
        dropouts=self.counters["dropouts"],
        stale_dropped=self.counters["stale_dropped"],
        cohorts=self.counters["cohorts"],
        mean_cohort_size=(self.counters["trained"] / self.counters["cohorts"]
                          if self.counters["cohorts"] else None),
        non_finite_dropped=self.counters["non_finite"],
        **self._trust_metrics(),
        **self.comm.metrics(),
        **self.privacy.metrics(),
        **extra,
    )
    self.since_eval.clear()
    self.history.append(rec)
    return rec

  def _trust_metrics(self) -> dict:
    trust = self.server.trust
    if trust is None:
      return {}
    score = np.asarray(trust.score)
    q = np.asarray(trust.quarantined)
    honest = ~self.malicious
    out = dict(num_quarantined=int(q.sum()),
               quarantined_malicious=int((q & self.malicious).sum()),
               quarantined_honest=int((q & honest).sum()),
               quarantine_entries=self.counters["quarantine_entries"],
               quarantine_exits=self.counters["quarantine_exits"],
               mean_trust_honest=float(score[honest].mean()) if honest.any()
               else None,
               mean_trust_malicious=float(score[self.malicious].mean())
               if self.malicious.any() else None)
    self.trust_snapshots.append((self.version, score.copy()))
    return out

  def run(self, resume: bool = False) -> dict:
    """Runs to a stop condition; returns the summary dict.

    With a workdir, checkpoints every `checkpoint.every_versions` versions
    and at the end; `resume=True` continues from the latest checkpoint.
    """
    cfg = self.cfg
    mngr = None
    if self.workdir and cfg.checkpoint.enabled:
      from afl import checkpoint  # pylint: disable=g-import-not-at-top
      mngr = checkpoint.manager(self.workdir, cfg.checkpoint.max_to_keep)
    elapsed = None
    if resume and mngr is not None:
      elapsed = checkpoint.restore(mngr, self)
      if elapsed is not None:
        self.log(f"resumed from checkpoint at version {self.version}")
    self.t0 = time.perf_counter() - (elapsed or 0.0)
    if self.workdir:
      with open(os.path.join(self.workdir, "malicious.json"), "w") as f:
        json.dump(dict(ids=np.flatnonzero(self.malicious).tolist(),
                       attack=cfg.attack.kind), f)
    writer = MetricsWriter(self.workdir, cfg, progress=cfg.logging.progress,
                           max_versions=cfg.stop.max_versions,
                           history=self.history if elapsed is not None
                           else None)
    if elapsed is None:
      writer.write(self._eval_record())
      if cfg.server.mode == "sync":
        self._start_round()
      else:
        for _ in range(cfg.concurrency):
          self._dispatch()
    every = cfg.checkpoint.every_versions
    while True:
      reason = self._stop_reason()
      if reason:
        break
      task = self.scheduler.pop()
      self.now = task.arrival_time
      if self._handle(task):
        writer.progress(self.version, self.now)
        if self.version - self.last_eval >= cfg.eval.every_versions:
          writer.write(self._eval_record())
          self.last_eval = self.version
        if mngr is not None and every and self.version % every == 0:
          checkpoint.save(mngr, self, time.perf_counter() - self.t0)
    if self.history[-1]["version"] != self.version:
      writer.write(self._eval_record())
      self.last_eval = self.version
    if mngr is not None:
      checkpoint.save(mngr, self, time.perf_counter() - self.t0)
    summary = self.summary(reason)
    writer.close(summary, self.staleness_hist, self.history)
    if self.workdir and self.trust_snapshots:
      self._write_trust()
    return summary

  def _write_trust(self):
    versions = np.array([v for v, _ in self.trust_snapshots])
    scores = np.stack([t for _, t in self.trust_snapshots])
    np.savez_compressed(os.path.join(self.workdir, "trust.npz"),
                        versions=versions, trust=scores,
                        malicious=self.malicious)
    if self.cfg.logging.plots:
      from afl import plotting  # pylint: disable=g-import-not-at-top
      plotting.trust_plot(os.path.join(self.workdir, "trust.png"), versions,
                          scores, self.malicious)

  def summary(self, reason: str) -> dict:
    last = self.history[-1]
    hist = self.staleness_hist
    total = sum(hist.values())
    return dict(
        final_test_accuracy=last["test_accuracy"],
        final_test_loss=last["test_loss"],
        best_test_accuracy=max(h["test_accuracy"] for h in self.history),
        num_server_versions=self.version,
        client_updates=self.counters["client_updates"],
        dropouts=self.counters["dropouts"],
        stale_dropped=self.counters["stale_dropped"],
        mean_staleness=(sum(k * v for k, v in hist.items()) / total
                        if total else None),
        max_staleness=max(hist) if hist else None,
        virtual_time=self.now,
        wall_seconds=time.perf_counter() - self.t0,
        cohorts=self.counters["cohorts"],
        mean_cohort_size=last["mean_cohort_size"],
        backend=self.backend_kind,
        num_params=int(self.num_params),
        non_finite_dropped=self.counters["non_finite"],
        num_malicious=int(self.malicious.sum()),
        **{k: v for k, v in last.items() if k.startswith(("quarantine",
                                                          "num_quarantined",
                                                          "mean_trust"))},
        **{k: v for k, v in last.items() if k == "attack_success_rate"},
        **self.comm.metrics(),
        **self.privacy.metrics(),
        stop_reason=reason,
    )

