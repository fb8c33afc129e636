"""Host side of compression: residual memory and communication accounting."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


class ResidualStore:
  """Error-feedback residuals per client id, for participants only.

  A dict {client_id: [D] numpy array}; memory is O(participants * D), not
  O(num_clients * D). `get` of an unseen client returns zeros without
  storing them; `get` of a stored client returns the stored array itself
  (no copy; replace it with `set` rather than writing into it).
  """

  def __init__(self, dtype=np.float32):
    self.dtype = np.dtype(dtype)
    self._res: dict[int, np.ndarray] = {}

  def get(self, cid: int, d: int) -> np.ndarray:
    r = self._res.get(int(cid))
    if r is None:
      return np.zeros((d,), self.dtype)
    if r.shape != (d,):
      raise ValueError(f"client {cid}: stored residual has shape {r.shape}, "
                       f"asked for ({d},)")
    return r

  def set(self, cid: int, residual) -> None:
    r = np.array(residual, self.dtype)  # a copy: callers may reuse buffers
    if r.ndim != 1:
      raise ValueError(f"residual must be 1-D, got shape {r.shape}")
    self._res[int(cid)] = r

  def get_many(self, cids: Sequence[int], d: int) -> np.ndarray:
    """[K, d] residuals of a cohort (zeros for new clients)."""
    out = np.zeros((len(cids), d), self.dtype)
    for i, cid in enumerate(cids):
      r = self._res.get(int(cid))
      if r is not None:
        out[i] = r
    return out

  def set_many(self, cids: Sequence[int], residuals,
               mask: Sequence[bool] | None = None) -> None:
    """Stores rows of [K, D] `residuals` (rows with mask False skipped)."""
    residuals = np.asarray(residuals)
    for i, cid in enumerate(cids):
      if mask is None or mask[i]:
        self.set(cid, residuals[i])

  def __len__(self) -> int:
    return len(self._res)

  def __contains__(self, cid) -> bool:
    return int(cid) in self._res

  def nbytes(self) -> int:
    return sum(r.nbytes for r in self._res.values())

  def state_dict(self) -> dict:
    ids = np.array(sorted(self._res), np.int64)
    d = next(iter(self._res.values())).shape[0] if self._res else 0
    res = (np.stack([self._res[i] for i in ids.tolist()]) if len(ids)
           else np.zeros((0, d), self.dtype))
    return dict(ids=ids, residuals=res)

  def load_state_dict(self, state: dict) -> None:
    ids = np.asarray(state["ids"]).tolist()
    res = np.asarray(state["residuals"])
    if len(ids) != len(res):
      raise ValueError(f"{len(ids)} ids but {len(res)} residual rows")
    self._res = {int(i): np.array(r, self.dtype) for i, r in zip(ids, res)}


def bytes_per_update(d: int, k: int, *, value_bytes: int = 4,
                     index_bytes: int = 4, dense: bool = False) -> int:
  """Bytes on the wire for one update of dimension d.

  Dense: d * value_bytes. Sparse (top-k): k * (value_bytes + index_bytes),
  one value and one index per sent coordinate (index_bytes=4 is an int32
  index, enough for d < 2^31). No header, and no automatic fallback to
  dense when k * (value_bytes + index_bytes) > d * value_bytes.

  >>> bytes_per_update(1000, 10), bytes_per_update(1000, 10, value_bytes=2)
  (80, 60)
  >>> bytes_per_update(1000, 10, dense=True)
  4000
  """
  if dense:
    return int(d) * int(value_bytes)
  return int(k) * (int(value_bytes) + int(index_bytes))


@dataclasses.dataclass
class CommStats:
  """Running totals of bytes sent up (clients -> server) and down."""
  up_bytes: int = 0
  down_bytes: int = 0
  uploads: int = 0
  downloads: int = 0

  def add_up(self, nbytes: int, count: int = 1) -> None:
    self.up_bytes += int(nbytes) * int(count)
    self.uploads += int(count)

  def add_down(self, nbytes: int, count: int = 1) -> None:
    self.down_bytes += int(nbytes) * int(count)
    self.downloads += int(count)

  def as_dict(self) -> dict:
    return dict(up_bytes=self.up_bytes, down_bytes=self.down_bytes,
                uploads=self.uploads, downloads=self.downloads,
                total_bytes=self.up_bytes + self.down_bytes)

  def state_dict(self) -> dict:
    return dataclasses.asdict(self)

  def load_state_dict(self, state: dict) -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, int(state[f.name]))
