"""Discrete-event scheduler: who trains when, in virtual time (host, numpy).

Each client has a slowness factor drawn once, `LogNormal(0, heterogeneity)`
(heterogeneity 0 makes every client equally fast). A task's duration is

  local_steps * step_time * slowness * X + network delay,

X ~ exponential(1), lognormal with mean 1, or 1 (constant), and the delay
~ exponential(network_delay). With probability `dropout_prob` a task drops
out at a uniform point of that duration and never arrives.

Events are ordered by (time, seq); `seq` is the dispatch counter, so ties are
broken the same way every run. Memory is O(num_clients) scalars (slowness,
task counters) plus O(in-flight) tasks, so 100k-client runs are cheap.
"""
from __future__ import annotations

import dataclasses
import heapq

import numpy as np

from afl.config import SchedulerConfig


@dataclasses.dataclass(frozen=True)
class Task:
  seq: int  # global dispatch counter (tie-break, identity)
  client_id: int
  task_index: int  # this client's own task counter (PRNG fold-in)
  start_version: int
  dispatch_time: float
  arrival_time: float  # arrival, or drop-out time when `dropped`
  dropped: bool


class Scheduler:
  """Dispatches tasks to idle clients and pops them in event order."""

  def __init__(self, cfg: SchedulerConfig, num_clients: int, concurrency: int,
               local_steps: int, rng: np.random.Generator):
    self.cfg = cfg
    self.num_clients = num_clients
    self.concurrency = concurrency
    self.local_steps = local_steps
    self.rng = rng
    if cfg.heterogeneity > 0:
      self.slowness = rng.lognormal(0.0, cfg.heterogeneity, num_clients)
    else:
      self.slowness = np.ones(num_clients)
    self.task_counts = np.zeros(num_clients, np.int64)
    self.busy: set[int] = set()
    self.heap: list[tuple[float, int, Task]] = []
    self.seq = 0

  @property
  def in_flight(self) -> int:
    return len(self.heap)

  def _pick_idle(self) -> int:
    # Rejection sampling is O(1) expected while in-flight << num_clients;
    # fall back to an explicit draw from the idle set otherwise.
    if len(self.busy) * 2 <= self.num_clients:
      while True:
        c = int(self.rng.integers(self.num_clients))
        if c not in self.busy:
          return c
    idle = np.setdiff1d(np.arange(self.num_clients),
                        np.fromiter(self.busy, np.int64))
    return int(idle[self.rng.integers(len(idle))])

  def _duration(self, client_id: int) -> float:
    cfg = self.cfg
    base = self.local_steps * cfg.step_time * self.slowness[client_id]
    if cfg.duration_dist == "exponential":
      work = base * self.rng.exponential()
    elif cfg.duration_dist == "lognormal":
      s = cfg.duration_sigma
      work = base * self.rng.lognormal(-0.5 * s * s, s)  # mean 1
    else:
      work = base
    delay = self.rng.exponential(cfg.network_delay) if cfg.network_delay else 0.
    return float(work + delay)

  def dispatch(self, now: float, version: int) -> Task:
    """Starts a task on an idle client, at virtual time `now`."""
    if len(self.busy) >= min(self.concurrency, self.num_clients):
      raise RuntimeError("concurrency limit reached; pop an event first")
    cid = self._pick_idle()
    duration = self._duration(cid)
    dropped = bool(self.cfg.dropout_prob > 0
                   and self.rng.random() < self.cfg.dropout_prob)
    if dropped:
      duration *= self.rng.random()
    task = Task(seq=self.seq, client_id=cid,
                task_index=int(self.task_counts[cid]), start_version=version,
                dispatch_time=now, arrival_time=now + duration,
                dropped=dropped)
    self.seq += 1
    self.task_counts[cid] += 1
    self.busy.add(cid)
    heapq.heappush(self.heap, (task.arrival_time, task.seq, task))
    return task

  def pop(self) -> Task:
    """Removes and returns the earliest event; its client becomes idle."""
    _, _, task = heapq.heappop(self.heap)
    self.busy.discard(task.client_id)
    return task

  def peek_time(self) -> float:
    return self.heap[0][0] if self.heap else np.inf

  # Checkpointing: everything is plain data.
  def state_dict(self) -> dict:
    return dict(slowness=self.slowness, task_counts=self.task_counts,
                heap=[dataclasses.astuple(t) for _, _, t in self.heap],
                seq=self.seq, rng=self.rng.bit_generator.state)

  def load_state_dict(self, d: dict):
    self.slowness = np.asarray(d["slowness"])
    self.task_counts = np.asarray(d["task_counts"]).copy()
    tasks = [Task(*t) for t in d["heap"]]
    self.heap = [(t.arrival_time, t.seq, t) for t in tasks]
    heapq.heapify(self.heap)
    self.busy = {t.client_id for t in tasks}
    self.seq = int(d["seq"])
    self.rng.bit_generator.state = d["rng"]
