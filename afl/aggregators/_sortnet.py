"""Column-wise sorting for [K, D] update matrices, built from min/max only.

XLA's generic `sort` on CPU calls a comparator per element pair and is several
times slower than `numpy.median(axis=0)` on a 64 x 1e6 matrix (see
benchmarks/NOTES.md). The coordinate-wise kernels only ever sort along the
short client axis K, so we instead run a bitonic sorting network over K:
every stage is a row gather plus a few elementwise `minimum`/`maximum`/
`where` ops over a whole [K, c] block, which XLA fuses and vectorizes. The
columns are processed in cache-sized blocks inside a `fori_loop` so each
block stays in L2 across the log2(K) (log2(K) + 1) / 2 stages, and each block
is reduced to its per-column statistic before the next is loaded, so no
sorted [K, D] copy is ever materialized.

Keys must be free of NaN (callers replace invalid rows by +inf first). Only
keys are sorted: the weighted kernels find their weight crossings on the
unsorted block (`_mass`), so which of several equal keys lands where never
matters.
"""
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Bytes of one [K, c] key block; ~L2-sized. Measured on the 64 x 1e6 point:
# blocks of 128 KiB - 1 MiB were equally fast, 2 MiB was 1.6x slower.
_BLOCK_BYTES = 256 * 1024


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def _network(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Bitonic network on `size` (a power of two) wires as [S, size] tables.

  Stage s pairs wire i with partner[s, i] and leaves the smaller key on i iff
  take_min[s, i]. The first step of each merge phase compares i with its
  mirror in the block (the "flip" form), so every stage sorts ascending and
  no per-block direction masks are needed.
  """
  wires = np.arange(size)
  partner, take_min = [], []
  k = 2
  while k <= size:
    offset = wires % k
    partner.append(wires - offset + (k - 1 - offset))
    take_min.append(offset < k // 2)
    j = k // 4
    while j >= 1:
      partner.append(wires ^ j)
      take_min.append((wires & j) == 0)
      j //= 2
    k *= 2
  return (np.array(partner, np.int32).reshape(-1, size),
          np.array(take_min, bool).reshape(-1, size))


def bitonic_sort(keys: jax.Array) -> jax.Array:
  """Sorts `keys` ascending along axis 0.

  The log2(K) (log2(K) + 1) / 2 stages run in a `fori_loop` over tables of
  partners: each stage is one row gather plus fused elementwise min/max/
  select over the block. Measured against the fully unrolled network
  (reshape/slice/concat per stage) on 64 x 1e6, this compiles ~10x faster
  and runs as fast.

  Args:
    keys: [K, ...] array without NaN. K need not be a power of two: the block
      is padded with +inf rows, which sort last and are sliced off.

  Returns:
    The sorted keys.

  References:
    Batcher, "Sorting networks and their applications", AFIPS 1968.
  """
  k_rows = keys.shape[0]
  size = _next_pow2(k_rows)
  if size == 1:
    return keys
  if size != k_rows:
    pad = [(0, size - k_rows)] + [(0, 0)] * (keys.ndim - 1)
    keys = jnp.pad(keys, pad, constant_values=jnp.inf)
  partner, take_min = _network(size)
  partner, take_min = jnp.asarray(partner), jnp.asarray(take_min)
  bshape = (size,) + (1,) * (keys.ndim - 1)

  def stage(s, x):
    lower = take_min[s].reshape(bshape)
    y = jnp.take(x, partner[s], axis=0)
    return jnp.where(lower, jnp.minimum(x, y), jnp.maximum(x, y))

  return lax.fori_loop(0, partner.shape[0], stage, keys)[:k_rows]


def block_columns(num_rows: int, num_arrays: int, itemsize: int = 4) -> int:
  """Columns per block so `num_arrays` [num_rows, c] blocks fit ~L2."""
  c = _BLOCK_BYTES // max(1, _next_pow2(num_rows) * itemsize * num_arrays)
  return max(128, 1 << (max(c, 1).bit_length() - 1))


def map_column_blocks(fn: Callable, arrays: Sequence[jax.Array],
                      block: int | None = None):
  """Applies `fn` to column blocks of [K, D] arrays and concatenates outputs.

  `fn` maps a tuple of [K, c] blocks to a pytree of [c] arrays; column blocks
  are independent. Blocks are taken with `dynamic_slice` inside a `fori_loop`
  (one compiled body); the last block is shifted left to end at D, so it
  overlaps its predecessor rather than needing a differently-shaped tail
  (the overlapping columns are recomputed with identical results).

  Args:
    fn: ([K, c] arrays) -> pytree of [c] arrays.
    arrays: [K, D] arrays (same K and D).
    block: columns per block; by default sized from `block_columns`.

  Returns:
    The pytree of [D] arrays.
  """
  arrays = tuple(arrays)
  k_rows, dim = arrays[0].shape
  if block is None:
    block = block_columns(k_rows, len(arrays), arrays[0].dtype.itemsize)
  if dim <= block:
    return fn(arrays)
  num_blocks = -(-dim // block)
  out_struct = jax.eval_shape(
      fn, tuple(jax.ShapeDtypeStruct((k_rows, block), a.dtype) for a in arrays))
  init = jax.tree_util.tree_map(
      lambda s: jnp.zeros((dim,) + s.shape[1:], s.dtype), out_struct)

  def body(i, out):
    start = jnp.minimum(i * block, dim - block)
    blocks = tuple(lax.dynamic_slice_in_dim(a, start, block, axis=1)
                   for a in arrays)
    res = fn(blocks)
    return jax.tree_util.tree_map(
        lambda o, r: lax.dynamic_update_slice_in_dim(o, r, start, axis=0),
        out, res)

  return lax.fori_loop(0, num_blocks, body, init)


def sort_keys(flat: jax.Array, valid: jax.Array) -> jax.Array:
  """Invalid rows -> +inf so they sort last and shapes stay fixed."""
  return jnp.where(valid[:, None], flat, jnp.inf)


def normalize_weights(weights: jax.Array, valid: jax.Array) -> jax.Array:
  """Valid weights divided by the smallest positive valid weight; else 0.

  Dividing by the smallest positive weight makes equal weights exactly 1 and
  integer-ratio weights exact integers, so cumulative weights are exact in
  float32 (up to 2**24) and "crosses one half" ties resolve exactly as with
  counts. Weight ratios, the only thing the weighted statistics depend on,
  are unchanged.
  """
  w = jnp.where(valid, weights.astype(jnp.float32), 0.0)
  w = jnp.where(w > 0, w, 0.0)  # negative weights are treated as zero
  w_min = jnp.min(jnp.where(w > 0, w, jnp.inf))
  return jnp.where(w > 0, w / jnp.where(jnp.isfinite(w_min), w_min, 1.0), 0.0)


def map_sorted_blocks(fn: Callable, flat: jax.Array, valid: jax.Array,
                      weights: jax.Array | None = None,
                      row_scale: jax.Array | None = None):
  """Sorts each column block of `flat` over K and reduces it with `fn`.

  Masking invalid rows to +inf, per-row scaling (e.g. norm clipping, a
  positive factor per row) and the weights all stay inside the block, so no
  [K, D] intermediate is written to memory: the input is read once. Only
  the keys are sorted; weighted statistics read the weights off the
  unsorted block (`_mass`).

  Args:
    fn: unweighted, (sorted [K, c] keys) -> [c] array; weighted,
      (sorted [K, c] keys, unsorted [K, c] keys, [K, 1] weights) -> [c].
    flat: [K, D] matrix.
    valid: [K] bool; invalid rows sort last as +inf (with weight 0 if the
      caller zeroed it).
    weights: optional [K] weights.
    row_scale: optional [K] factors applied to valid rows before sorting.

  Returns:
    [D] result of `fn` over all columns.
  """
  k_rows = flat.shape[0]
  num = 1 if weights is None else 2
  block = block_columns(k_rows, num, max(4, flat.dtype.itemsize))

  def block_fn(arrs):
    x = arrs[0]
    if row_scale is not None:
      x = x * row_scale[:, None].astype(x.dtype)
    keys = jnp.where(valid[:, None], x, jnp.inf)
    if weights is None:
      return fn(bitonic_sort(keys))
    return fn(bitonic_sort(keys), keys, weights[:, None].astype(keys.dtype))

  return map_column_blocks(block_fn, (flat,), block=block)
