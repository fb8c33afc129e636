"""Coordinate-wise median, unweighted and weighted.

Both sort each coordinate over the client axis with the bitonic network in
`_sortnet` (invalid rows become +inf, so they sort last and shapes stay fixed)
and read the statistic off the sorted column block.

Weighted tie rule. With sorted values x_(1) <= ... <= x_(n), positive weights
and cumulative weights C_i = w_(1) + ... + w_(i), W = C_n:

  lower = x_(i) for the smallest i with C_i >= W / 2
  upper = x_(j) for the smallest j with C_j >  W / 2
  weighted median = (lower + upper) / 2

When the half-mass point falls inside an element both pick it; when it falls
exactly on a boundary between two elements the two neighbours are averaged.
For equal weights C_i = i (after `normalize_weights` rescales them to exactly
1), so an odd n picks the middle element and an even n averages the two
middle elements: exactly `np.median`. Zero-weight rows never cross the half
mass first, so they never set the value. A pair is averaged as
(lower + upper) / 2, or, where that sum overflows (both near float32 max,
same sign), as lower + (upper - lower) / 2 (`midpoint`).
"""
import jax
import jax.numpy as jnp
from jax import lax

from afl.aggregators import _mass, _sortnet, base, params


def midpoint(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """(lo + hi) / 2 for lo <= hi, finite for finite inputs."""
  mid = 0.5 * (lo + hi)
  return jnp.where(jnp.isfinite(mid), mid, lo + 0.5 * (hi - lo))


def median_of_sorted(s: jax.Array, n: jax.Array) -> jax.Array:
  """[K, c] columns sorted ascending with n valid rows first -> [c] median."""
  lo = lax.dynamic_index_in_dim(s, jnp.maximum(n - 1, 0) // 2, 0, False)
  hi = lax.dynamic_index_in_dim(s, n // 2, 0, False)
  return jnp.where(n > 0, midpoint(lo, hi), 0.0).astype(s.dtype)


def weighted_median_of_sorted(s: jax.Array, x: jax.Array,
                              w: jax.Array) -> jax.Array:
  """Sorted [K, c] values, the same unsorted, [K, 1] weights -> [c] weighted
  median (tie rule: module doc; the crossings found by `_mass`)."""
  total = jnp.sum(w)
  half = 0.5 * total
  lower = _mass.first_value(s, lambda v: _mass.mass_le(x, w, v) >= half)
  # The first value whose run ends past W / 2: lower itself, or, where
  # lower's run ends exactly on it, the next value carrying weight.
  above = jnp.min(jnp.where((x > lower) & (w > 0), x, jnp.inf), axis=0)
  upper = jnp.where(_mass.mass_le(x, w, lower) > half, lower, above)
  return jnp.where(total > 0, midpoint(lower, upper), 0.0).astype(s.dtype)


@jax.jit
def median_flat(flat: jax.Array, valid: jax.Array) -> jax.Array:
  """[K, D] -> [D] coordinate-wise median of the valid rows (0 if none).

  Args:
    flat: [K, D] updates.
    valid: [K] bool; False rows are ignored.

  Returns:
    [D] median, equal to `np.median(flat[valid], axis=0)`.
  """
  n = jnp.sum(valid.astype(jnp.int32))
  return _sortnet.map_sorted_blocks(lambda s: median_of_sorted(s, n),
                                    flat, valid)


@jax.jit
def weighted_median_flat(flat: jax.Array, weights: jax.Array,
                         valid: jax.Array) -> jax.Array:
  """[K, D] -> [D] coordinate-wise weighted median (tie rule: module doc).

  Args:
    flat: [K, D] updates.
    weights: [K] non-negative weights (negative ones count as 0).
    valid: [K] bool; False rows are ignored.

  Returns:
    [D] weighted median; 0 where the valid rows carry no weight.
  """
  w = _sortnet.normalize_weights(weights, valid)
  return _sortnet.map_sorted_blocks(weighted_median_of_sorted, flat, valid, w)


@base.register("median", params=params.Weighted)
def median(weighted: bool = False) -> base.Aggregator:
  """Coordinate-wise median of the valid updates.

  Args:
    weighted: if False, `weights` are ignored and every valid row counts once
      (matches `np.median`); if True, the weighted median with the tie rule in
      the module docstring.

  Returns:
    An `Aggregator`; its state is `()`.

  References:
    Yin et al., "Byzantine-robust distributed learning: towards optimal
    statistical rates", ICML 2018.

  >>> import jax.numpy as jnp
  >>> agg = median()
  >>> ups = {"w": jnp.array([[1.0], [2.0], [10.0], [4.0]])}
  >>> out, _ = agg.apply(ups, jnp.ones(4), jnp.ones(4, bool), agg.init(ups))
  >>> float(out["w"][0])
  3.0
  """
  def kernel(flat, weights, valid):
    if weighted:
      return weighted_median_flat(flat, weights, valid)
    return median_flat(flat, valid)

  return base.from_kernel(kernel)
