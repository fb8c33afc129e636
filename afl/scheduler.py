"""Discrete-event scheduler: who trains when, in virtual time (host, numpy).

Each client has a slowness factor drawn once, `LogNormal(0, heterogeneity)`
(heterogeneity 0 makes every client equally fast). A task's duration is

  local_steps * step_time * slowness * X + network delay,

(`local_steps` an int, or per client: local epochs over unequal shards).

X ~ exponential(1), lognormal with mean 1, or 1 (constant), and the delay
~ exponential(network_delay). With probability `dropout_prob` a task drops
out at a uniform point of that duration and never arrives.

Events are ordered by (time, seq); `seq` is the dispatch counter, so ties are
broken the same way every run. Memory is O(num_clients) scalars (slowness,
task counters) plus O(in-flight) tasks, so 100k-client runs are cheap.
"""
from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

from afl.config import SchedulerConfig

_BLOCK = 4096  # random draws made per numpy call
_new_task = tuple.__new__  # Task(...) without NamedTuple's keyword handling


class Task(NamedTuple):
  """One dispatched task; tuples order by (arrival_time, seq), the heap key
  (seq is unique, so later fields never take part)."""
  arrival_time: float  # arrival, or drop-out time when `dropped`
  seq: int  # global dispatch counter (tie-break, identity)
  client_id: int
  task_index: int  # this client's own task counter (PRNG fold-in)
  start_version: int
  dispatch_time: float
  dropped: bool


_TASK_DTYPES = dict(arrival_time=np.float64, seq=np.int64,
                    client_id=np.int64, task_index=np.int64,
                    start_version=np.int64, dispatch_time=np.float64,
                    dropped=np.bool_)


def tasks_to_arrays(tasks, prefix: str) -> dict:
  """Tasks as one array per field (nothing for none: orbax refuses
  zero-size arrays), so that a checkpoint of 10,000 in-flight tasks is 7
  arrays, not 10,000 JSON lists."""
  if not tasks:
    return {}
  cols = list(zip(*tasks))
  return {f"{prefix}{name}": np.asarray(col, _TASK_DTYPES[name])
          for name, col in zip(Task._fields, cols)}


def tasks_from_arrays(arrays: dict, n: int, prefix: str) -> list:
  if not n:
    return []
  cols = [arrays[f"{prefix}{name}"].tolist() for name in Task._fields]
  return [Task(*row) for row in zip(*cols)]


class _Draws:
  """A numpy generator consumed as Python floats from pre-drawn blocks.

  The state to checkpoint is the generator state before the current block
  and the position in it: reloading redraws the block and continues
  bit-identically.
  """

  def __init__(self, rng: np.random.Generator, draw):
    self.rng = rng
    self.draw = draw  # (rng, n) -> [n, k] array
    self.refill()

  def refill(self):
    self.state_before = self.rng.bit_generator.state
    self.rows = self.draw(self.rng, _BLOCK).tolist()
    self.pos = 0

  def next(self):
    if self.pos == _BLOCK:
      self.refill()
    row = self.rows[self.pos]
    self.pos += 1
    return row

  def state_dict(self) -> dict:
    return dict(state=self.state_before, pos=self.pos)

  def load_state_dict(self, d: dict):
    self.rng.bit_generator.state = d["state"]
    self.refill()
    self.pos = int(d["pos"])


class Scheduler:
  """Dispatches tasks to idle clients and pops them in event order.

  Host speed: random numbers come from pre-drawn numpy blocks, the heap
  holds bare arrival times with the tasks in a dict beside it, per-event
  work is a few list and dict lookups (benchmarks/scheduler.py).
  """

  def __init__(self, cfg: SchedulerConfig, num_clients: int, concurrency: int,
               local_steps, rng: np.random.Generator):
    self.cfg = cfg
    self.num_clients = num_clients
    self.concurrency = concurrency
    self.local_steps = local_steps
    if cfg.heterogeneity > 0:
      slowness = rng.lognormal(0.0, cfg.heterogeneity, num_clients)
    else:
      slowness = np.ones(num_clients)
    self._set_clients(slowness, np.zeros(num_clients, np.int64))
    self._limit = min(concurrency, num_clients)
    self.busy: set[int] = set()
    # Event queue: a heap of arrival times (floats compare fastest) and the
    # task(s) at each time; equal times keep dispatch (= seq) order.
    self._times: list[float] = []
    self._at: dict[float, Task | list[Task]] = {}
    self.seq = 0
    picks_rng, draws_rng = rng.spawn(2)
    self._picks = _Draws(picks_rng, lambda g, n: g.integers(num_clients,
                                                            size=n))
    self._draws = _Draws(draws_rng, self._draw_block)

  def _set_clients(self, slowness: np.ndarray, task_counts: np.ndarray):
    self.slowness = slowness
    # Task counters as a list: fast scalar reads.
    self._counts = np.asarray(task_counts).tolist()

  @property
  def slowness(self) -> np.ndarray:
    """[num_clients] each client's slowness factor."""
    return self._slowness

  @slowness.setter
  def slowness(self, value):
    self._slowness = np.asarray(value)
    # Per-client mean work as a list: fast scalar reads in dispatch.
    self._base = (self.local_steps * self.cfg.step_time
                  * self._slowness).tolist()

  @property
  def task_counts(self) -> np.ndarray:
    """[num_clients] int64: tasks dispatched to each client so far."""
    return np.asarray(self._counts, np.int64)

  def _push(self, task: Task):
    t = task[0]
    prev = self._at.get(t)
    if prev is None:
      self._at[t] = task
    elif type(prev) is list:  # pylint: disable=unidiomatic-typecheck
      prev.append(task)
    else:
      self._at[t] = [prev, task]
    heapq.heappush(self._times, t)

  def _draw_block(self, g: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3]: work multiplier (mean 1), network delay, drop-out fraction
    (negative: no drop-out)."""
    cfg = self.cfg
    if cfg.duration_dist == "exponential":
      work = g.exponential(size=n)
    elif cfg.duration_dist == "lognormal":
      sig = cfg.duration_sigma
      work = g.lognormal(-0.5 * sig * sig, sig, n)
    else:
      work = np.ones(n)
    delay = (g.exponential(cfg.network_delay, n) if cfg.network_delay
             else np.zeros(n))
    drop = g.random(n) < cfg.dropout_prob
    frac = np.where(drop, g.random(n), -1.0)
    return np.stack([work, delay, frac], 1)

  @property
  def in_flight(self) -> int:
    return len(self._times)

  def tasks(self) -> list[Task]:
    """The tasks in flight, in event order."""
    out = []
    for entry in self._at.values():
      out.extend(entry if type(entry) is list else [entry])  # pylint: disable=unidiomatic-typecheck
    return sorted(out)

  def _pick_idle(self) -> int:
    # Rejection sampling is O(1) expected while in-flight << num_clients;
    # fall back to an explicit draw from the idle set otherwise.
    busy = self.busy
    if len(busy) * 2 <= self.num_clients:
      p = self._picks
      while True:
        if p.pos == _BLOCK:
          p.refill()
        c = p.rows[p.pos]
        p.pos += 1
        if c not in busy:
          return c
    idle = np.setdiff1d(np.arange(self.num_clients),
                        np.fromiter(busy, np.int64))
    return int(idle[self._picks.next() % len(idle)])

  def dispatch(self, now: float, version: int) -> Task:
    """Starts a task on an idle client, at virtual time `now`."""
    busy = self.busy
    if len(busy) >= self._limit:
      raise RuntimeError("concurrency limit reached; pop an event first")
    cid = self._pick_idle()
    d = self._draws
    if d.pos == _BLOCK:
      d.refill()
    work, delay, frac = d.rows[d.pos]
    d.pos += 1
    duration = self._base[cid] * work + delay
    dropped = frac >= 0.0
    if dropped:
      duration *= frac
    counts = self._counts
    task = _new_task(Task, (now + duration, self.seq, cid, counts[cid],
                            version, now, dropped))
    self.seq += 1
    counts[cid] += 1
    busy.add(cid)
    self._push(task)
    return task

  def pop(self) -> Task:
    """Removes and returns the earliest event; its client becomes idle."""
    t = heapq.heappop(self._times)
    task = self._at.pop(t)
    if type(task) is list:  # pylint: disable=unidiomatic-typecheck
      rest = task
      task = rest.pop(0)
      if rest:
        self._at[t] = rest
    self.busy.discard(task.client_id)
    return task

  def peek_time(self) -> float:
    return self._times[0] if self._times else np.inf

  # The checkpoint protocol (afl.state): per-client arrays, JSON-able rest.
  def state_dict(self):
    tasks = self.tasks()
    return (dict(slowness=self.slowness, task_counts=self.task_counts,
                 **tasks_to_arrays(tasks, "heap_")),
            dict(in_flight=len(tasks), seq=self.seq,
                 picks=self._picks.state_dict(),
                 draws=self._draws.state_dict()))

  def load_state_dict(self, arrays: dict, host: dict):
    self._set_clients(arrays["slowness"], arrays["task_counts"])
    tasks = tasks_from_arrays(arrays, host["in_flight"], "heap_")
    self._times, self._at = [], {}
    for task in sorted(tasks):  # equal times: pushed in seq order
      self._push(task)
    self.busy = {t.client_id for t in tasks}
    self.seq = int(host["seq"])
    self._picks.load_state_dict(host["picks"])
    self._draws.load_state_dict(host["draws"])
