"""The event engine as it was before afl.engine_kernels (pure Python), kept
as the reference the compiled engine must reproduce event for event.

Frozen: only tests import it (tests/test_engine_exact.py).
"""
import heapq

import numpy as np

from afl import scheduler as scheduler_lib
from afl.scheduler import Scheduler
from afl.scheduler import Task

_BLOCK = 4096
_new_task = tuple.__new__


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


class ReferenceScheduler:
  """Dispatches tasks to idle clients and pops them in event order.

  Host speed: random numbers come from pre-drawn numpy blocks, the heap
  holds bare arrival times with the tasks in a dict beside it, per-event
  work is a few list and dict lookups (benchmarks/scheduler.py).
  """

  def __init__(self, cfg, num_clients: int, concurrency: int,
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

  # The duration draws are unchanged: the compiled engine's own.
  _draw_block = Scheduler._draw_block

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
                 **scheduler_lib.tasks_to_arrays(tasks, "heap_")),
            dict(in_flight=len(tasks), seq=self.seq,
                 picks=self._picks.state_dict(),
                 draws=self._draws.state_dict()))

  def load_state_dict(self, arrays: dict, host: dict):
    self._set_clients(arrays["slowness"], arrays["task_counts"])
    tasks = scheduler_lib.tasks_from_arrays(arrays, host["in_flight"], "heap_")
    self._times, self._at = [], {}
    for task in sorted(tasks):  # equal times: pushed in seq order
      self._push(task)
    self.busy = {t.client_id for t in tasks}
    self.seq = int(host["seq"])
    self._picks.load_state_dict(host["picks"])
    self._draws.load_state_dict(host["draws"])
