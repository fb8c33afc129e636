"""`Rows`: the fixed-shape batch of updates that flows through the stages.

An aggregation sees K rows (the buffer, round or fedasync window) padded to
a fixed capacity so the jitted server step compiles once per shape. Each
row carries its flat update and what the stages need to know about it.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import numpy as np

from afl import client as client_lib
from afl.server.staleness import staleness_weight

# Padding rows get distinct ids from here on, never a real client's.
PAD_ID = 1 << 30


@flax.struct.dataclass
class Rows:
  flat: jax.Array  # float32[K, D] updates
  weight: jax.Array  # float32[K] aggregation weight (data x trust)
  scale: jax.Array  # float32[K] staleness weight s(tau)
  mask: jax.Array  # bool[K] real rows; stages narrow it to the valid ones
  ids: jax.Array  # int32[K] client ids (padding: PAD_ID + i)
  malicious: jax.Array  # bool[K] rows of malicious clients
  aggregate: jax.Array  # float32[D], written by the aggregation stage


class Arrival(NamedTuple):
  """One client update as the server receives it."""
  delta: object  # pytree, or a client.Row of a cohort's output
  staleness: int
  client_id: int
  num_examples: int
  malicious: bool


def staleness_scales(stalenesses, cfg) -> np.ndarray:
  return staleness_weight(stalenesses, cfg.staleness_fn, cfg.staleness_a,
                          cfg.staleness_b).astype(np.float32)


def stack_deltas(arrivals: list[Arrival], capacity: int):
  """The arrivals' deltas as one [capacity, ...] pytree (padding rows copy
  the first delta; their mask is False)."""
  deltas = [a.delta for a in arrivals]
  return client_lib.stack_rows(deltas + [deltas[0]] * (capacity - len(deltas)))


def host_rows(arrivals: list[Arrival], capacity: int, cfg,
              stalenesses=None) -> Rows:
  """`arrivals` padded to `capacity` rows, as `Rows` without `flat` and
  `aggregate` (filled in on device).

  Data weights (example counts when `cfg.weight_by_examples`, else 1) are
  divided by their mean, so thresholds on weights mean the same always.
  `stalenesses` overrides the arrivals' own (a sync round has none).
  """
  n = len(arrivals)
  pad = capacity - n
  stale = [a.staleness for a in arrivals] if stalenesses is None else (
      stalenesses)
  w = (np.asarray([a.num_examples for a in arrivals], np.float64)
       if cfg.weight_by_examples else np.ones(n))
  w = w / w.mean()

  def rows(x, dtype):
    return np.concatenate([np.asarray(x, dtype), np.zeros(pad, dtype)])

  ids = np.zeros(capacity, np.int32)
  ids[:n] = [a.client_id for a in arrivals]
  ids[n:] = PAD_ID + np.arange(pad)
  return Rows(flat=None, weight=rows(w, np.float32),
              scale=rows(staleness_scales(stale, cfg), np.float32),
              mask=rows(np.ones(n), bool), ids=ids,
              malicious=rows([a.malicious for a in arrivals], bool),
              aggregate=None)
