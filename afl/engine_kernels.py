"""The event engine's inner loop, compiled with numba (`afl.scheduler`).

State lives in flat arrays: a binary heap of in-flight tasks keyed by
(arrival time, seq), per-client task counters, a busy mask and mean work,
and the current blocks of pre-drawn idle picks and duration draws. One call
of `advance` runs events in a dispatch pattern and records every pop and
dispatch, so a block of events costs one call from Python:

- `MANUAL`: up to `max_pops` pops and the dispatches set pending by the
  caller (one pop, or one dispatch at `sf[0]`: any order of calls).
- `REPLACE` (fedasync, fedbuff): every pop is followed by one dispatch at
  the popped time.
- `ROUNDS` (sync): when a pop leaves nothing in flight, `round_size`
  dispatches follow at the popped time.

A call returns early when a pick or draw block is used up (`NEED_PICKS`,
`NEED_DRAWS`); Python draws the next block and calls again, and the call
continues where it stopped (the dispatches still owed are in the state).
The draws and the arithmetic are those of the original pure-Python engine,
event for event.
"""
from typing import NamedTuple

import numba
import numpy as np

BLOCK = 4096  # draws per numpy call

# patterns
MANUAL, REPLACE, ROUNDS = 0, 1, 2
# statuses
DONE, NEED_PICKS, NEED_DRAWS, AT_LIMIT, EMPTY = 0, 1, 2, 3, 4
# int64 scalars of the state (`si`)
N_HEAP, SEQ, PICK_CTR, N_BUSY, PENDING, PICK_START, DRAW_START, \
    PICK_BEFORE, LAST_POP = range(9)
NUM_SCALARS = 9
# recorded events: float columns (arrival, dispatch time), int columns
F_ARRIVAL, F_DISPATCH = 0, 1
I_SEQ, I_CID, I_TASK, I_DROP, I_PARENT, I_PICK = range(6)


class State(NamedTuple):
  """The engine's arrays. The heap (`ht` arrival, `hs` seq, `hx` slot, in
  heap order) points at slots holding the rest of a task (`xd` dispatch
  time, `xi` client, task index, dropped); `free[:capacity - n]` are the
  free slots."""
  si: np.ndarray  # [NUM_SCALARS] int64
  sf: np.ndarray  # [1]: the time of the pending dispatches
  ht: np.ndarray
  hs: np.ndarray
  hx: np.ndarray
  xd: np.ndarray
  xi: np.ndarray  # [capacity, 3]
  free: np.ndarray
  counts: np.ndarray  # [num_clients] tasks dispatched to each
  busy: np.ndarray  # [num_clients] bool


def new_state(num_clients: int, capacity: int) -> State:
  si = np.zeros(NUM_SCALARS, np.int64)
  si[PICK_BEFORE] = si[LAST_POP] = -1
  return State(si, np.zeros(1), np.zeros(capacity),
               np.zeros(capacity, np.int64), np.zeros(capacity, np.int64),
               np.zeros(capacity), np.zeros((capacity, 3), np.int64),
               np.arange(capacity, dtype=np.int64),
               np.zeros(num_clients, np.int64),
               np.zeros(num_clients, np.bool_))


def heap_rows(st: State):
  """The in-flight tasks' columns (arrival, seq, client, task index,
  dispatch time, dropped), in heap order."""
  n = int(st.si[N_HEAP])
  slots = st.hx[:n]
  return (st.ht[:n].tolist(), st.hs[:n].tolist(),
          st.xi[slots, 0].tolist(), st.xi[slots, 1].tolist(),
          st.xd[slots].tolist(), (st.xi[slots, 2] != 0).tolist())


def load_heap(st: State, tasks):
  """Puts `tasks` (Task tuples sorted by (arrival, seq): a valid heap) in
  flight in a new state."""
  n = len(tasks)
  st.si[N_HEAP] = st.si[N_BUSY] = n
  if not n:
    return
  cols = list(zip(*tasks))
  st.ht[:n], st.hs[:n], st.hx[:n] = cols[0], cols[1], np.arange(n)
  st.xi[:n, 0], st.xi[:n, 1], st.xi[:n, 2] = cols[2], cols[3], cols[6]
  st.xd[:n] = cols[5]
  st.free[:len(st.free) - n] = np.arange(n, len(st.free))
  st.busy[list(cols[2])] = True


@numba.njit(cache=True)
def _push(ht, hs, hx, t, seq, slot, n):
  """Adds (t, seq, slot) to the heap of n entries (a hole moves up)."""
  i = n
  while i > 0:
    p = (i - 1) // 2
    if t < ht[p] or (t == ht[p] and seq < hs[p]):
      ht[i], hs[i], hx[i] = ht[p], hs[p], hx[p]
      i = p
    else:
      break
  ht[i], hs[i], hx[i] = t, seq, slot


@numba.njit(cache=True)
def _pop(ht, hs, hx, n):
  """Removes the root of the heap of n entries (the last entry sifts down
  from the root)."""
  m = n - 1
  lt, ls, lx = ht[m], hs[m], hx[m]
  i = 0
  while True:
    c = 2 * i + 1
    if c >= m:
      break
    if c + 1 < m and (ht[c + 1] < ht[c]
                      or (ht[c + 1] == ht[c] and hs[c + 1] < hs[c])):
      c += 1
    if ht[c] < lt or (ht[c] == lt and hs[c] < ls):
      ht[i], hs[i], hx[i] = ht[c], hs[c], hx[c]
      i = c
    else:
      break
  ht[i], hs[i], hx[i] = lt, ls, lx


@numba.njit(cache=True)
def _pick(si, busy, picks, num_clients):
  """An idle client, or -1 when the pick block is used up (the picks
  consumed so far stay consumed: the next call goes on drawing)."""
  if si[N_BUSY] * 2 <= num_clients:  # rejection: O(1) while few are busy
    while True:
      pos = si[PICK_CTR] - si[PICK_START]
      if pos == BLOCK:
        return -1
      c = picks[pos]
      si[PICK_CTR] += 1
      if not busy[c]:
        return c
  pos = si[PICK_CTR] - si[PICK_START]
  if pos == BLOCK:
    return -1
  k = picks[pos] % (num_clients - si[N_BUSY])  # the k-th idle client
  si[PICK_CTR] += 1
  for c in range(num_clients):
    if not busy[c]:
      if k == 0:
        return c
      k -= 1
  return -1  # unreachable: fewer idle clients than counted


@numba.njit(cache=True)
def _dispatch(now, si, ht, hs, hx, xd, xi, free, counts, busy, base, picks,
              draws, limit, df, di, nd, parent):
  """One dispatch at `now`, recorded as row `nd` of (df, di)."""
  if si[N_BUSY] >= limit:
    return AT_LIMIT
  if si[SEQ] - si[DRAW_START] == BLOCK:
    return NEED_DRAWS
  if si[PICK_BEFORE] < 0:
    si[PICK_BEFORE] = si[PICK_CTR]
  cid = _pick(si, busy, picks, counts.shape[0])
  if cid < 0:
    return NEED_PICKS
  row = si[SEQ] - si[DRAW_START]
  work, delay, frac = draws[row, 0], draws[row, 1], draws[row, 2]
  duration = base[cid] * work + delay
  dropped = frac >= 0.0
  if dropped:
    duration *= frac
  n = si[N_HEAP]
  slot = free[len(free) - n - 1]
  t, seq = now + duration, si[SEQ]
  xd[slot] = now
  xi[slot, 0], xi[slot, 1], xi[slot, 2] = cid, counts[cid], dropped
  df[nd, F_ARRIVAL], df[nd, F_DISPATCH] = t, now
  di[nd, I_SEQ], di[nd, I_CID], di[nd, I_TASK] = seq, cid, counts[cid]
  di[nd, I_DROP], di[nd, I_PARENT], di[nd, I_PICK] = (
      dropped, parent, si[PICK_BEFORE])
  _push(ht, hs, hx, t, seq, slot, n)
  si[PICK_BEFORE] = -1
  si[SEQ] += 1
  counts[cid] += 1
  busy[cid] = True
  si[N_BUSY] += 1
  si[N_HEAP] = n + 1
  return DONE


@numba.njit(cache=True)
def _advance(pattern, max_pops, round_size, limit, si, sf, ht, hs,
             hx, xd, xi, free, counts, busy, base, picks, draws, pf, pi, df,
             di, out):
  npop, nd = out[0], out[1]
  while True:
    while si[PENDING] > 0:
      st = _dispatch(sf[0], si, ht, hs, hx, xd, xi, free, counts, busy, base,
                     picks, draws, limit, df, di, nd, si[LAST_POP])
      if st != DONE:
        out[0], out[1] = npop, nd
        return st
      nd += 1
      si[PENDING] -= 1
    if npop == max_pops:
      break
    n = si[N_HEAP]
    if n == 0:
      out[0], out[1] = npop, nd
      return EMPTY
    slot = hx[0]
    t = ht[0]
    si[LAST_POP] = hs[0]
    pf[npop, F_ARRIVAL], pf[npop, F_DISPATCH] = t, xd[slot]
    pi[npop, I_SEQ], pi[npop, I_CID] = hs[0], xi[slot, 0]
    pi[npop, I_TASK], pi[npop, I_DROP] = xi[slot, 1], xi[slot, 2]
    busy[xi[slot, 0]] = False
    si[N_BUSY] -= 1
    _pop(ht, hs, hx, n)
    n -= 1
    free[len(free) - n - 1] = slot
    si[N_HEAP] = n
    npop += 1
    if pattern == REPLACE:
      si[PENDING] = 1
      sf[0] = t
    elif pattern == ROUNDS and n == 0:
      si[PENDING] = round_size
      sf[0] = t
  out[0], out[1] = npop, nd
  return DONE


def advance(pattern, max_pops, round_size, limit, st: State, base, picks,
            draws, pf, pi, df, di, out):
  """Runs events in `pattern` until `max_pops` pops and the dispatches they
  owe (and the `si[PENDING]` owed at `sf[0]` before them) are done;
  a dispatch records the seq of the last pop before it (-1 for none).
  Writes pops to (pf, pi), dispatches to (df, di)
  and the counts of both to `out` (a resumed call adds to them); returns a
  status."""
  return _advance(pattern, max_pops, round_size, limit, *st,
                  base, picks, draws, pf, pi, df, di, out)
