"""Coordinate-wise trimmed mean, unweighted and weighted.

Unweighted: with n valid rows, drop the t smallest and t largest values per
coordinate and average the remaining n - 2t. By default t = floor(beta * n),
identical to `scipy.stats.trim_mean(x[valid], beta, axis=0)`; with
`byzantine_fraction` > 0, t = ceil(byzantine_fraction * n), clamped to
floor((n - 1) / 2) so that at least one value is left (with 0.4 and n = 2
nothing is trimmed). t is read from a table built in Python at trace time
(K is static, `base.count_table`), so it is exactly Python's int(beta * n)
or math.ceil(byzantine_fraction * n), never a float32 rounding of it.

Weighted: each sorted value x_(i) owns the weight interval
[C_(i-1), C_i) of the cumulative weight axis [0, W). With n rows of positive
weight and t as above for that n, a mass L = t * W / n is cut from each end,
and the result is the weighted average over [L, W - L), rows straddling a cut
counting with the part of their weight inside it:

  result = sum_i x_(i) * |[C_(i-1), C_i) & [L, W - L)| / (W - 2L)

The trimmed fraction per side is thus t / n; with equal weights (rescaled to
exactly 1) every row is kept whole or cut whole and the result equals the
unweighted one.

Both stay finite for values up to float32 max: the unweighted sum runs on
values times 2^-ceil(log2 K) (exact), the weighted one multiplies each value
by its kept fraction |...| / (W - 2L) <= 1 (`_scale`).
"""
import functools

import jax
import jax.numpy as jnp

from afl.aggregators import _mass, _scale, _sortnet, base, params


def trim_counts(num_rows: int, beta: float,
                byzantine_fraction: float = 0.0) -> jax.Array:
  """[K+1] int32 table: t[n], the per-side trim count of n rows (module doc)."""
  return base.count_table(num_rows, lambda n: min(
      params.byzantine_count(n, byzantine_fraction, int(beta * n)),
      max((n - 1) // 2, 0)))


def mean_of_sorted_ranks(s: jax.Array, lo: jax.Array,
                         hi: jax.Array) -> jax.Array:
  """Sorted [K, c] -> [c] mean of the rows ranked lo, ..., hi - 1.

  Args:
    s: [K, c] columns sorted ascending.
    lo, hi: int scalars or [c] (one window per column).

  Returns:
    [c]; 0 where the window is empty.
  """
  rank = jnp.arange(s.shape[0])[:, None]
  keep = (rank >= lo) & (rank < hi)
  h = _scale.sum_headroom(s.shape[0])
  total = jnp.sum(jnp.where(keep, s * h, 0.0), axis=0)
  count = jnp.broadcast_to(hi - lo, total.shape)
  mean = total / jnp.maximum(count, 1).astype(s.dtype) * (1 / h)
  return jnp.where(count > 0, _scale.saturate(mean), 0.0).astype(s.dtype)


def weighted_trimmed_mean_of_sorted(s: jax.Array, x: jax.Array,
                                    w: jax.Array, n_pos: jax.Array,
                                    t: jax.Array) -> jax.Array:
  """Sorted [K, c] values, the same unsorted, [K, 1] weights -> [c]
  weighted trimmed mean.

  With L the mass cut per side, a is the value whose run holds the point L
  (first with mass_le > L) and b the one holding W - L (first with
  mass_gt <= L); rows strictly between count whole, a and b with the part
  of their run inside [L, W - L), and a == b is the whole kept mass.
  """
  total = jnp.sum(w)
  # t * W / n rather than (t / n) * W: exact for the integer weights that
  # equal weights normalize to.
  n = jnp.maximum(n_pos, 1).astype(total.dtype)
  cut = t.astype(total.dtype) * total / n
  den = total - 2 * cut
  den = jnp.where(den > 0, den, 1.0)
  a = _mass.first_value(s, lambda v: _mass.mass_le(x, w, v) > cut)
  b = _mass.first_value(s, lambda v: _mass.mass_gt(x, w, v) <= cut)
  keep_a = (_mass.mass_le(x, w, a) - cut) / den
  keep_b = (_mass.mass_ge(x, w, b) - cut) / den
  # Every factor is at most 1, so no term exceeds its value (`_scale`);
  # +inf padding is never strictly below b.
  inner = jnp.sum(jnp.where((x > a) & (x < b), x * (w / den), 0.0), axis=0)
  out = jnp.where(a == b, a, a * keep_a + inner + b * keep_b)
  return jnp.where(total > 0, _scale.saturate(out), 0.0).astype(s.dtype)


@functools.partial(jax.jit, static_argnames=("beta", "byzantine_fraction"))
def trimmed_mean_flat(flat: jax.Array, valid: jax.Array, beta: float,
                      byzantine_fraction: float = 0.0) -> jax.Array:
  """[K, D] -> [D] trimmed mean of the valid rows (0 if none).

  Args:
    flat: [K, D] updates.
    valid: [K] bool; False rows are ignored.
    beta: static fraction in [0, 0.5) trimmed from each side.
    byzantine_fraction: static; > 0 trims ceil(byzantine_fraction * n) per
      side instead (module docstring).

  Returns:
    [D]; with byzantine_fraction = 0 equal to
    `scipy.stats.trim_mean(flat[valid], beta, axis=0)`.
  """
  base.check_fraction("beta", beta)
  base.check_fraction("byzantine_fraction", byzantine_fraction)
  n = jnp.sum(valid.astype(jnp.int32))
  t = trim_counts(flat.shape[0], beta, byzantine_fraction)[n]
  return _sortnet.map_sorted_blocks(
      lambda s: mean_of_sorted_ranks(s, t, n - t), flat, valid)


@functools.partial(jax.jit, static_argnames=("beta", "byzantine_fraction"))
def weighted_trimmed_mean_flat(flat: jax.Array, weights: jax.Array,
                               valid: jax.Array, beta: float,
                               byzantine_fraction: float = 0.0) -> jax.Array:
  """[K, D] -> [D] weighted trimmed mean (definition: module docstring).

  Args:
    flat: [K, D] updates.
    weights: [K] non-negative weights (negative ones count as 0).
    valid: [K] bool; False rows are ignored.
    beta: static fraction in [0, 0.5); t = floor(beta * n) rows' worth of
      mass is cut per side, n the number of valid rows with positive weight.
    byzantine_fraction: static; > 0 cuts t = ceil(byzantine_fraction * n)
      rows' worth instead (clamped as in the module docstring).

  Returns:
    [D]; 0 where the valid rows carry no weight.
  """
  base.check_fraction("beta", beta)
  base.check_fraction("byzantine_fraction", byzantine_fraction)
  w = _sortnet.normalize_weights(weights, valid)
  n_pos = jnp.sum((w > 0).astype(jnp.int32))
  t = trim_counts(flat.shape[0], beta, byzantine_fraction)[n_pos]
  return _sortnet.map_sorted_blocks(
      lambda s, x, ws: weighted_trimmed_mean_of_sorted(s, x, ws, n_pos, t),
      flat, valid, w)


@base.register("trimmed_mean", params=params.TrimmedMean)
def trimmed_mean(beta: float = 0.1, byzantine_fraction: float = 0.0,
                 weighted: bool = False) -> base.Aggregator:
  """Coordinate-wise trimmed mean of the valid updates.

  Args:
    beta: fraction in [0, 0.5) trimmed from each side (static):
      floor(beta * n) rows of n.
    byzantine_fraction: in [0, 0.5) (static); > 0 trims
      ceil(byzantine_fraction * n) rows per side instead of beta's count, so
      that small aggregations trim too (beta = 0.1 trims nothing below 10
      rows); clamped to leave at least one row.
    weighted: if False, `weights` are ignored (matches scipy's trim_mean);
      if True, trims by cumulative weight (module docstring).

  Returns:
    An `Aggregator`; its state is `()`.

  Raises:
    ValueError: if beta or byzantine_fraction is outside [0, 0.5).

  References:
    Yin et al., "Byzantine-robust distributed learning: towards optimal
    statistical rates", ICML 2018.

  >>> import jax.numpy as jnp
  >>> agg = trimmed_mean(beta=0.25)
  >>> ups = {"w": jnp.array([[1.0], [2.0], [3.0], [100.0]])}
  >>> out, _ = agg.apply(ups, jnp.ones(4), jnp.ones(4, bool), agg.init(ups))
  >>> float(out["w"][0])
  2.5
  """
  base.check_fraction("beta", beta)
  base.check_fraction("byzantine_fraction", byzantine_fraction)

  def kernel(flat, weights, valid):
    if weighted:
      return weighted_trimmed_mean_flat(flat, weights, valid, beta,
                                        byzantine_fraction)
    return trimmed_mean_flat(flat, valid, beta, byzantine_fraction)

  return base.from_kernel(kernel)
