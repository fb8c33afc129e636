"""Top-k sparsification with error feedback: pure, jittable kernels.

Kernels work on flat [D] vectors (vmap them over a cohort). A budget is an
int k over the whole vector or per-tensor segments (`segments_for`).
"""
from __future__ import annotations

import math
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

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


def float16_round_trip(values: jax.Array) -> jax.Array:
  """`values` rounded to float16 and back, clipped to its finite range
  first: overflow to inf would make the whole update non-finite; the
  clipped-off part stays in the residual."""
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
  values = float16_round_trip(corrected) if float16 else corrected
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
