"""Who is malicious: a reproducible draw from the run seed (host side)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Mixed into the run seed so the attacker draw never shares a stream with
# the scheduler or partitioner, which are seeded from the same run seed.
_SELECT_TAG = 0xA77AC4


def _round_half_up(x: float) -> int:
  # Python's round() is banker's rounding (round(2.5) == 2); half-up is the
  # rule people expect from "round(fraction * n)".
  return int(math.floor(x + 0.5))


def num_selected(fraction: float, n: int) -> int:
  """round(fraction * n), rounded half up: how many of `n` are chosen.

  >>> num_selected(0.25, 10), num_selected(0.15, 10)
  (3, 2)
  """
  return _round_half_up(fraction * n)


def select_malicious(num_clients: int, fraction: float, seed: int,
                     ids: Sequence[int] | None = None) -> np.ndarray:
  """Chooses the malicious clients, reproducibly from the run seed.

  Args:
    num_clients: total number of clients.
    fraction: share of clients that are malicious; exactly
      `round(fraction * num_clients)` (half up) are drawn without
      replacement, from `np.random.default_rng(SeedSequence([seed, tag]))`
      with a fixed tag private to this function.
    seed: the run seed.
    ids: explicit malicious client ids; when non-empty they are used as is
      and `fraction` must be 0.

  Returns:
    [num_clients] bool numpy array, True for malicious clients.

  Raises:
    ValueError: naming `attack.fraction` or `attack.ids` for bad values.
  """
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  mask = np.zeros(num_clients, bool)
  ids = tuple(ids) if ids is not None else ()
  if ids:
    if fraction:
      raise ValueError("attack.ids: give either attack.ids or attack.fraction,"
                       f" not both (fraction={fraction})")
    for i in ids:
      if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"attack.ids: must be integers, got {i!r}")
      if not 0 <= i < num_clients:
        raise ValueError(f"attack.ids: id {i} out of range "
                         f"[0, {num_clients})")
    if len(set(int(i) for i in ids)) != len(ids):
      raise ValueError(f"attack.ids: duplicate ids in {list(ids)}")
    mask[np.asarray(ids, np.int64)] = True
    return mask
  if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
    raise ValueError(f"attack.fraction: must be in [0, 1], got {fraction!r}")
  m = num_selected(fraction, num_clients)
  rng = np.random.default_rng(np.random.SeedSequence([seed, _SELECT_TAG]))
  mask[rng.choice(num_clients, size=m, replace=False)] = True
  return mask
