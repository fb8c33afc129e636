"""Top-k sparsification with error feedback, and communication accounting.

A client sends only the k largest-magnitude coordinates of its update (plus
their indices); what it did not send is kept in a per-client residual and
added to its next update (error feedback), so no part of the update is lost,
only delayed. Kernels are pure and jittable on flat [D] vectors (vmap them
over a cohort); the residuals live on the host in a `ResidualStore` keyed by
client id, holding only clients that have participated.

Example:

  >>> import jax.numpy as jnp
  >>> sent, res = compress_with_feedback(jnp.array([3., -1., 0.5, -4.]),
  ...                                    jnp.zeros(4), 2)
  >>> sent
  Array([ 3.,  0.,  0., -4.], dtype=float32)
  >>> res
  Array([ 0. , -1. ,  0.5,  0. ], dtype=float32)

References:
  Stich, Cordonnier and Jaggi 2018, "Sparsified SGD with Memory", NeurIPS.
  Karimireddy, Rebjock, Stich and Jaggi 2019, "Error Feedback Fixes SignSGD
  and other Gradient Compression Schemes", ICML.
  Aji and Heafield 2017, "Sparse Communication for Distributed Gradient
  Descent", EMNLP (top-k with a residual, per-tensor selection).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from afl.validate import ConfigError

KINDS = ("none", "topk")

# A top-k budget: an int k over the whole vector, or per-tensor segments
# ((size, k), ...) laid out back to back in ravel_pytree order.
Budget = Union[int, tuple[tuple[int, int], ...]]

_F16_MAX = float(np.finfo(np.float16).max)


def k_for(ratio: float, d: int) -> int:
  """k = max(1, ceil(ratio * d)), capped at d.

  ratio * d is rounded to 9 decimals before the ceiling so that float
  noise (0.07 * 100 = 7.000000000000001) does not add a coordinate.

  >>> k_for(0.01, 1000), k_for(0.07, 100), k_for(1e-9, 10), k_for(1.0, 7)
  (10, 7, 1, 7)
  """
  if d < 1:
    raise ValueError(f"dimension must be >= 1, got {d}")
  return int(min(d, max(1, math.ceil(round(ratio * d, 9)))))


def topk_mask(flat: jax.Array, k: int) -> jax.Array:
  """Bool mask of the k largest-magnitude entries of `flat` [D].

  Ties are broken deterministically, on every backend: among entries of
  equal magnitude the lowest indices are kept. `jax.lax.top_k` documents
  the same rule, but we only take the k-th largest magnitude t from it and
  then keep every |x| > t plus the first (k - #{|x| > t}) entries with
  |x| == t in index order, so the rule does not depend on the backend's
  top_k kernel. NaN counts as larger than any number (it is sent, and the
  server's finiteness check then rejects the update).

  Args:
    flat: [D] vector.
    k: static number of entries, 1 <= k <= D.

  Returns:
    [D] bool with exactly k True entries.

  >>> topk_mask(jnp.array([1., -2., 2., 0.5, -1.]), 3)
  Array([ True,  True,  True, False, False], dtype=bool)
  """
  d = flat.shape[0]
  if not 1 <= k <= d:
    raise ValueError(f"k must be in [1, {d}], got {k}")
  mag = jnp.abs(flat)
  mag = jnp.where(jnp.isnan(mag), jnp.inf, mag)
  kth = jax.lax.top_k(mag, k)[0][k - 1]
  above = mag > kth
  at = mag == kth
  need = k - jnp.sum(above)
  return above | (at & (jnp.cumsum(at) <= need))


def topk_sparsify(flat: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k largest-magnitude entries of `flat` as (values, indices).

  Same selection and tie rule as `topk_mask`; indices come in increasing
  order (the order a receiver scatters them in).

  Args:
    flat: [D] vector.
    k: static number of entries.

  Returns:
    values [k] (dtype of `flat`), indices [k] int32.

  >>> topk_sparsify(jnp.array([1., -2., 2., 0.5, -1.]), 2)
  (Array([-2.,  2.], dtype=float32), Array([1, 2], dtype=int32))
  """
  idx = jnp.nonzero(topk_mask(flat, k), size=k)[0].astype(jnp.int32)
  return flat[idx], idx


def densify(values: jax.Array, indices: jax.Array, d: int) -> jax.Array:
  """Scatters (values, indices) back into a dense [d] vector of zeros."""
  return jnp.zeros((d,), values.dtype).at[indices].set(values)


def _budget_mask(flat: jax.Array, k: Budget) -> jax.Array:
  if isinstance(k, (int, np.integer)):
    return topk_mask(flat, int(k))
  sizes = [s for s, _ in k]
  if sum(sizes) != flat.shape[0]:
    raise ValueError(f"segment sizes sum to {sum(sizes)}, vector has "
                     f"{flat.shape[0]} entries")
  masks, start = [], 0
  for size, kk in k:
    masks.append(topk_mask(flat[start:start + size], kk))
    start += size
  return jnp.concatenate(masks)


def budget_total(k: Budget) -> int:
  """Number of coordinates a budget sends (for bytes accounting)."""
  if isinstance(k, (int, np.integer)):
    return int(k)
  return sum(kk for _, kk in k)


def segments_for(tree: Any, ratio: float) -> tuple[tuple[int, int], ...]:
  """Per-tensor budget ((size, k_for(ratio, size)), ...) in ravel order.

  `jax.flatten_util.ravel_pytree` concatenates the leaves in
  `tree_leaves` order, so these segments line up with a flat update.
  """
  return tuple((int(np.size(leaf)), k_for(ratio, int(np.size(leaf))))
               for leaf in jax.tree_util.tree_leaves(tree))


def topk_per_tensor(tree: Any, ratio: float) -> Any:
  """Applies top-k to each leaf separately, k = k_for(ratio, leaf.size).

  Returns a tree of the same structure with the unselected entries zeroed.
  Per-tensor selection keeps some of every layer, where a global top-k may
  starve layers with small-magnitude updates.

  >>> topk_per_tensor({"a": jnp.array([1., -3.]), "b": jnp.array([[2.]])},
  ...                 0.5)
  {'a': Array([ 0., -3.], dtype=float32), 'b': Array([[2.]], dtype=float32)}
  """
  def one(leaf):
    flat = jnp.ravel(leaf)
    mask = topk_mask(flat, k_for(ratio, flat.shape[0]))
    return jnp.where(mask, flat, 0).reshape(leaf.shape)
  return jax.tree_util.tree_map(one, tree)


def _to_f16_and_back(values: jax.Array) -> jax.Array:
  # Clip into float16's finite range first: overflow to inf would make the
  # whole update non-finite; the clipped-off part stays in the residual.
  clipped = jnp.clip(values, -_F16_MAX, _F16_MAX)
  return clipped.astype(jnp.float16).astype(values.dtype)


def compress_with_feedback(delta_flat: jax.Array, residual_flat: jax.Array,
                           k: Budget, *, float16: bool = False
                           ) -> tuple[jax.Array, jax.Array]:
  """Top-k with error feedback on one client's flat update.

  corrected = delta + residual; sent = top-k(corrected) (values rounded to
  float16 and back when `float16`); new_residual = corrected - sent. So
  sent + new_residual == delta + residual exactly up to float rounding in
  the addition: the sum of everything sent plus the last residual equals
  the sum of all raw deltas. A non-finite entry in the new residual is reset
  to 0, so one bad update cannot poison every later one of that client
  (its update is rejected by the server anyway).

  Args:
    delta_flat: [D] raw update.
    residual_flat: [D] the client's residual (zeros for a new client).
    k: static budget: an int (global top-k) or per-tensor segments from
      `segments_for`.
    float16: send values as float16 (the rounding error is fed back too).

  Returns:
    (sent_dense [D], new_residual [D]), dtype of `delta_flat`.

  References:
    Stich et al. 2018, "Sparsified SGD with Memory"; Karimireddy et al.
    2019, "Error Feedback Fixes SignSGD and other Gradient Compression
    Schemes".
  """
  corrected = delta_flat + residual_flat.astype(delta_flat.dtype)
  mask = _budget_mask(corrected, k)
  values = _to_f16_and_back(corrected) if float16 else corrected
  sent = jnp.where(mask, values, jnp.zeros_like(values))
  new_residual = corrected - sent
  new_residual = jnp.where(jnp.isfinite(new_residual), new_residual, 0)
  return sent, new_residual


def compress(delta_flat: jax.Array, k: Budget, *,
             float16: bool = False) -> jax.Array:
  """Top-k without memory: the dense [D] vector that is sent."""
  sent, _ = compress_with_feedback(delta_flat, jnp.zeros_like(delta_flat), k,
                                   float16=float16)
  return sent


# --------------------------------------------------------------------------
# Host-side residual memory.


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


# --------------------------------------------------------------------------
# Communication accounting.


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


# --------------------------------------------------------------------------
# Config.




@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionConfig:
  """Uplink compression.

  Attributes:
    kind: "none" (dense float32) or "topk".
    ratio: share of coordinates sent, k = k_for(ratio, D) (per tensor when
      `per_tensor`).
    error_feedback: keep and re-add what was not sent (ResidualStore).
    per_tensor: top-k within each parameter tensor instead of globally.
    float16: send values as float16 (2 bytes) instead of float32.
  """
  kind: str = "none"
  ratio: float = 0.01
  error_feedback: bool = True
  per_tensor: bool = False
  float16: bool = False

  def validate(self, prefix: str = "compression"):
    """Raises ValueError("config.<prefix>.<key>: ...") on a bad value."""
    def fail(key, msg):
      raise ConfigError(f"config.{prefix}.{key}: {msg}")
    if self.kind not in KINDS:
      fail("kind", f"must be one of {list(KINDS)}, got {self.kind!r}")
    if (isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float))
        or not 0 < self.ratio <= 1):
      fail("ratio", f"must be in (0, 1], got {self.ratio!r}")
    for key in ("error_feedback", "per_tensor", "float16"):
      if not isinstance(getattr(self, key), bool):
        fail(key, f"expected true/false, got {getattr(self, key)!r}")

  def budget(self, example_tree: Any) -> Budget:
    """The static top-k budget for updates shaped like `example_tree`."""
    if self.per_tensor:
      return segments_for(example_tree, self.ratio)
    d = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(example_tree))
    return k_for(self.ratio, d)

  def update_bytes(self, d: int, k: Budget | None = None) -> int:
    """Uplink bytes of one update of dimension d under this config."""
    value_bytes = 2 if self.float16 else 4
    if self.kind == "none":
      return bytes_per_update(d, d, value_bytes=value_bytes, dense=True)
    total = budget_total(k) if k is not None else k_for(self.ratio, d)
    return bytes_per_update(d, total, value_bytes=value_bytes)


CompressFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def make_compressor(config: CompressionConfig, example_tree: Any
                    ) -> CompressFn:
  """fn(delta_flat [D], residual_flat [D]) -> (sent [D], new_residual [D]).

  Pure and jittable; vmap it over a cohort. kind="none" sends the delta
  unchanged (float16 rounding still applies when asked); without error
  feedback the residual input is ignored and the returned residual is zero
  (nothing needs storing).
  """
  if config.kind == "none":
    def dense(delta, residual):
      sent = _to_f16_and_back(delta) if config.float16 else delta
      return sent, jnp.zeros_like(residual)
    return dense
  k = config.budget(example_tree)

  def topk(delta, residual):
    if not config.error_feedback:
      residual = jnp.zeros_like(delta)
    sent, new_residual = compress_with_feedback(delta, residual, k,
                                                float16=config.float16)
    if not config.error_feedback:
      new_residual = jnp.zeros_like(new_residual)
    return sent, new_residual
  return topk
