"""Discrete-event scheduler: who trains when, in virtual time (host).

Each client has a slowness factor drawn once, `LogNormal(0, heterogeneity)`
(heterogeneity 0 makes every client equally fast). A task's duration is

  local_steps * step_time * slowness * X + network delay,

(`local_steps` an int, or per client: local epochs over unequal shards).

X ~ exponential(1), lognormal with mean 1, or 1 (constant), and the delay
~ exponential(network_delay). With probability `dropout_prob` a task drops
out at a uniform point of that duration and never arrives.

Events are ordered by (time, seq); `seq` is the dispatch counter, so ties are
broken the same way every run. Memory is O(num_clients) scalars (slowness,
task counters, busy flags) plus O(in-flight) tasks, so 1M-client runs are
cheap. The heap, idle picks and durations run in afl.engine_kernels
(numba), on random numbers drawn in numpy blocks.
"""
from __future__ import annotations

from operator import length_hint
from typing import NamedTuple

import numpy as np

from afl import engine_kernels as kernels
from afl.config import SchedulerConfig

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


class _Blocks:
  """Blocks of `engine_kernels.BLOCK` draws of one numpy generator, each
  numbered by the count of draws before it, with the generator state
  before each block kept while a checkpoint may need it: the state to save
  is that state and the position in the block, and reloading redraws the
  block and continues bit-identically."""

  def __init__(self, rng: np.random.Generator, draw):
    self.rng = rng
    self.draw = draw  # (rng, n) -> array of n draws
    self.states: dict[int, dict] = {}

  def block(self, start: int) -> np.ndarray:
    """Draws the block whose first draw is number `start`."""
    self.states[start] = self.rng.bit_generator.state
    return self.draw(self.rng, kernels.BLOCK)

  def cursor(self, count: int) -> dict:
    """Checkpoint entry for the point where `count` draws are used."""
    start = max(s for s in self.states if s <= count)
    return dict(state=self.states[start], pos=count - start)

  def prune(self, count: int):
    """Forgets the states no point at or after `count` draws needs."""
    keep = max(s for s in self.states if s <= count)
    self.states = {s: v for s, v in self.states.items() if s >= keep}

  def load(self, d: dict, count: int) -> np.ndarray:
    self.states = {}
    self.rng.bit_generator.state = d["state"]
    return self.block(count - int(d["pos"]))


_PATTERNS = {"manual": kernels.MANUAL, "replace": kernels.REPLACE,
             "rounds": kernels.ROUNDS}
_WINDOW = 1024  # pops computed per call in the replace and rounds patterns


class Scheduler:
  """Dispatches tasks to idle clients and pops them in event order.

  `pattern` says how the caller dispatches: "replace" (one dispatch at the
  popped time after every pop: fedasync, fedbuff), "rounds" (`concurrency`
  dispatches at the popped time when a pop leaves nothing in flight: sync)
  or "manual" (any order). In the first two the compiled engine
  (afl.engine_kernels) runs a window of events ahead in one call and
  `pop` / `dispatch` hand them out, checking that the caller follows the
  pattern; a task's start version is the one its `dispatch` call gives.
  Everything the caller can see (`in_flight`, `tasks()`, `task_counts`,
  `seq`, checkpoints) is the state after the calls made so far, not the
  window's. In "manual" every call runs one event.
  """

  def __init__(self, cfg: SchedulerConfig, num_clients: int, concurrency: int,
               local_steps, rng: np.random.Generator, pattern: str = "manual"):
    self.cfg = cfg
    self.num_clients = num_clients
    self.concurrency = concurrency
    self.local_steps = local_steps
    self._limit = min(concurrency, num_clients)
    self._pattern = _PATTERNS[pattern]
    self.pattern = pattern
    self._st = kernels.new_state(num_clients, self._limit)
    if cfg.heterogeneity > 0:
      slowness = rng.lognormal(0.0, cfg.heterogeneity, num_clients)
    else:
      slowness = np.ones(num_clients)
    self._set_clients(slowness, np.zeros(num_clients, np.int64))
    picks_rng, draws_rng = rng.spawn(2)
    self._picks = _Blocks(picks_rng, lambda g, n: g.integers(num_clients,
                                                             size=n))
    self._draws = _Blocks(draws_rng, self._draw_block)
    self._pick_arr = self._picks.block(0)
    self._draw_arr = self._draws.block(0)
    window = 1 if self._pattern == kernels.MANUAL else _WINDOW
    cap = window + 3 * self._limit
    self._buf = (np.zeros((window, 2)), np.zeros((window, 4), np.int64),
                 np.zeros((cap, 2)), np.zeros((cap, 6), np.int64))
    self._reset_window({})

  def _reset_window(self, versions: dict):
    self._set_window([], [])
    self._last = -1  # seq of the last task popped (dispatches follow it)
    self._version = versions  # seq -> start version of dispatched tasks

  def _set_window(self, pops: list, disp: list):
    self._pops = pops  # (arrival, seq, cid, task, dispatch, dropped)
    self._disp = disp  # the same fields, then parent seq, picks used
    self._pop_it, self._disp_it = iter(pops), iter(disp)

  def _ahead(self) -> tuple[list, list]:
    """The window's pops and dispatches not handed out yet."""
    return (self._pops[len(self._pops) - length_hint(self._pop_it):],
            self._disp[len(self._disp) - length_hint(self._disp_it):])

  def _set_clients(self, slowness: np.ndarray, task_counts: np.ndarray):
    self.slowness = slowness
    self._st.counts[:] = task_counts

  @property
  def slowness(self) -> np.ndarray:
    """[num_clients] each client's slowness factor."""
    return self._slowness

  @slowness.setter
  def slowness(self, value):
    self._slowness = np.asarray(value)
    # Per-client mean work, float64 as the engine reads it.
    self._base = np.ascontiguousarray(
        self.local_steps * self.cfg.step_time * self._slowness, np.float64)

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

  def _run(self, pattern: int, max_pops: int, now: float = 0.0,
           pending: int = 0):
    """Runs the engine; returns the window of its pops and dispatches."""
    si = self._st.si
    pf, pi, df, di = self._buf
    si[kernels.PENDING] = pending
    self._st.sf[0] = now
    out = np.zeros(2, np.int64)
    while True:
      status = kernels.advance(pattern, max_pops, self._limit, self._limit,
                               self._st, self._base, self._pick_arr,
                               self._draw_arr, pf, pi, df, di, out)
      if status == kernels.NEED_PICKS:
        si[kernels.PICK_START] = si[kernels.PICK_CTR]
        self._pick_arr = self._picks.block(int(si[kernels.PICK_CTR]))
      elif status == kernels.NEED_DRAWS:
        si[kernels.DRAW_START] = si[kernels.SEQ]
        self._draw_arr = self._draws.block(int(si[kernels.SEQ]))
      elif status == kernels.AT_LIMIT:
        si[kernels.PENDING] = 0
        raise RuntimeError("concurrency limit reached; pop an event first")
      else:
        break
    npop, nd = int(out[0]), int(out[1])
    if status == kernels.EMPTY and npop == 0:
      raise IndexError("pop from a scheduler with nothing in flight")
    self._set_window(
        list(zip(pf[:npop, 0].tolist(), *pi[:npop, :3].T.tolist(),
                 pf[:npop, 1].tolist(), (pi[:npop, 3] != 0).tolist())),
        list(zip(df[:nd, 0].tolist(), *di[:nd, :3].T.tolist(),
                 df[:nd, 1].tolist(), (di[:nd, 3] != 0).tolist(),
                 *di[:nd, 4:].T.tolist())))

  def _next_window(self):
    """Runs the pattern's next window once all of this one is out."""
    if length_hint(self._disp_it):
      raise RuntimeError(f"pop() where the {self.pattern} pattern "
                         "dispatches first")
    si = self._st.si
    self._picks.prune(int(si[kernels.PICK_CTR]))
    self._draws.prune(int(si[kernels.SEQ]))
    fresh = int(si[kernels.SEQ]) == 0 and not si[kernels.N_HEAP]
    self._run(self._pattern, _WINDOW, pending=self._limit if fresh else 0)

  @property
  def in_flight(self) -> int:
    return (int(self._st.si[kernels.N_HEAP]) + length_hint(self._pop_it)
            - length_hint(self._disp_it))

  def pop(self) -> Task:
    """Removes and returns the earliest event; its client becomes idle."""
    rec = next(self._pop_it, None)
    if rec is None:
      if self._pattern == kernels.MANUAL:
        self._run(kernels.MANUAL, 1)
      elif not self.in_flight:
        raise IndexError("pop from a scheduler with nothing in flight")
      else:
        self._next_window()
      rec = next(self._pop_it)
    seq = self._last = rec[1]
    return _new_task(Task, (rec[0], seq, rec[2], rec[3],
                            self._version.pop(seq), rec[4], rec[5]))

  def dispatch(self, now: float, version: int) -> Task:
    """Starts a task on an idle client, at virtual time `now`."""
    rec = next(self._disp_it, None)
    if rec is None:
      if self._pattern == kernels.MANUAL:
        self._run(kernels.MANUAL, 0, now, pending=1)
      elif int(self._st.si[kernels.SEQ]) == 0:
        self._next_window()  # the first dispatches: `concurrency` at 0
      else:
        raise RuntimeError(f"dispatch() where the {self.pattern} pattern "
                           "pops first")
      rec = next(self._disp_it)
    if rec[6] != self._last or rec[4] != now:
      raise RuntimeError(f"dispatch at {now} does not follow the "
                         f"{self.pattern} pattern")
    self._version[rec[1]] = version
    return _new_task(Task, (rec[0], rec[1], rec[2], rec[3], version, now,
                            rec[5]))

  def _owed(self) -> bool:
    """True between a pop and the dispatches the pattern owes for it."""
    disp = self._ahead()[1]  # (none in "manual")
    return bool(disp) and disp[0][6] == self._last

  def peek_time(self) -> float:
    if not self.in_flight:
      return np.inf
    if not length_hint(self._pop_it):
      if self._pattern == kernels.MANUAL:
        return float(self._st.ht[0])  # the heap's root
      self._next_window()
    elif self._owed():
      raise RuntimeError("peek_time() before the dispatches the "
                         f"{self.pattern} pattern owes")
    return self._pops[len(self._pops) - length_hint(self._pop_it)][0]

  def tasks(self) -> list[Task]:
    """The tasks in flight after the calls so far, in event order."""
    pops, disp = self._ahead()
    ahead = {r[1] for r in disp}
    rows = list(zip(*kernels.heap_rows(self._st))) + pops
    return sorted(Task(t, s, c, k, self._version[s], dt, bool(d))
                  for t, s, c, k, dt, d in rows if s not in ahead)

  @property
  def busy(self) -> set[int]:
    """The clients with a task in flight."""
    return {t.client_id for t in self.tasks()}

  @property
  def seq(self) -> int:
    """Tasks dispatched so far."""
    return int(self._st.si[kernels.SEQ]) - length_hint(self._disp_it)

  @property
  def task_counts(self) -> np.ndarray:
    """[num_clients] int64: tasks dispatched to each client so far."""
    counts = self._st.counts.copy()
    np.subtract.at(counts, [r[2] for r in self._ahead()[1]], 1)
    return counts

  # The checkpoint protocol (afl.state): per-client arrays, JSON-able rest.
  def state_dict(self):
    if self._owed():
      raise RuntimeError("state_dict() between a pop and its dispatches")
    tasks = self.tasks()
    ahead = self._ahead()[1]
    picks = ahead[0][7] if ahead else int(self._st.si[kernels.PICK_CTR])
    return (dict(slowness=self.slowness, task_counts=self.task_counts,
                 **tasks_to_arrays(tasks, "heap_")),
            dict(in_flight=len(tasks), seq=self.seq,
                 picks=self._picks.cursor(picks),
                 draws=self._draws.cursor(self.seq)))

  def load_state_dict(self, arrays: dict, host: dict):
    tasks = sorted(tasks_from_arrays(arrays, host["in_flight"], "heap_"))
    self._st = kernels.new_state(self.num_clients, self._limit)
    self._set_clients(arrays["slowness"], arrays["task_counts"])
    kernels.load_heap(self._st, tasks)
    n, si = len(tasks), self._st.si
    si[kernels.SEQ] = int(host["seq"])
    si[kernels.PICK_CTR] = int(host["picks"]["pos"])
    si[kernels.DRAW_START] = si[kernels.SEQ] - int(host["draws"]["pos"])
    self._pick_arr = self._picks.load(host["picks"], int(si[kernels.PICK_CTR]))
    self._draw_arr = self._draws.load(host["draws"], int(si[kernels.SEQ]))
    self._reset_window({t.seq: t.start_version for t in tasks})
