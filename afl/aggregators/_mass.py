"""Weighted order statistics without carrying weights through the sort.

The weighted kernels need, per column, the value at which the cumulative
weight of the sorted column crosses a mass m. Carrying each row's weight
through the bitonic network as a payload makes the sort about 3x the
unweighted one (benchmarks/NOTES.md). Instead the keys are sorted alone and
the crossing is found by a binary search over sorted positions: position p
of the sorted block s holds value v = s[p], and the weight at or below v is
read off the unsorted block, mass_le(v) = sum_i w_i [x_i <= v], one
compare-select-sum pass over the K rows. Monotone predicates of mass_le(v)
are monotone in p, so ceil(log2 K) passes find the first position where one
holds.

Working on values rather than sorted positions is exact for ties: rows of
equal value own one contiguous interval [mass_lt(v), mass_le(v)) of the
cumulative weight axis whatever order the sort left them in, and every
statistic here only needs how much of an interval is kept, times v.
"""
import jax
import jax.numpy as jnp


def mass_le(x: jax.Array, w: jax.Array, v: jax.Array) -> jax.Array:
  """[K, c] values, [K, 1] weights, [c] thresholds -> [c] weight of x <= v."""
  return jnp.sum(jnp.where(x <= v, w, 0.0), axis=0)


def mass_gt(x: jax.Array, w: jax.Array, v: jax.Array) -> jax.Array:
  """[c] weight of x > v (exactly 0 above the largest weighted value)."""
  return jnp.sum(jnp.where(x > v, w, 0.0), axis=0)


def mass_ge(x: jax.Array, w: jax.Array, v: jax.Array) -> jax.Array:
  """[c] weight of x >= v."""
  return jnp.sum(jnp.where(x >= v, w, 0.0), axis=0)


def first_value(s: jax.Array, pred) -> jax.Array:
  """Sorted [K, c] columns -> [c] s[p, j] for the first p with pred true.

  Args:
    s: [K, c] columns sorted ascending.
    pred: [c] values -> [c] bool, monotone (false ... true) along each
      sorted column. Where it holds nowhere the last row is returned.

  Returns:
    [c] values.
  """
  k_rows = s.shape[0]
  lo = jnp.zeros(s.shape[1:], jnp.int32)
  hi = jnp.full(s.shape[1:], k_rows - 1, jnp.int32)
  for _ in range(max(k_rows - 1, 0).bit_length()):
    mid = (lo + hi) // 2
    ok = pred(jnp.take_along_axis(s, mid[None], axis=0)[0])
    lo, hi = jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)
  return jnp.take_along_axis(s, lo[None], axis=0)[0]
