"""Coordinate-wise trimmed mean, unweighted and weighted.

Unweighted: with n valid rows, drop the t = floor(beta * n) smallest and t
largest values per coordinate and average the remaining n - 2t; identical to
`scipy.stats.trim_mean(x[valid], beta, axis=0)`. t is read from a table
built in Python at trace time (K is static), so it is exactly scipy's
`int(beta * n)`, never a float32 rounding of it.

Weighted: each sorted value x_(i) owns the weight interval
[C_(i-1), C_i) of the cumulative weight axis [0, W). With n rows of positive
weight and t = floor(beta * n), a mass L = t * W / n is cut from each end,
and the result is the weighted average over [L, W - L), rows straddling a cut
counting with the part of their weight inside it:

  result = sum_i x_(i) * |[C_(i-1), C_i) & [L, W - L)| / (W - 2L)

The trimmed fraction per side is thus t / n <= beta, the fraction scipy trims;
with equal weights (rescaled to exactly 1) every row is kept whole or cut
whole and the result equals the unweighted one.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from afl.aggregators import _sortnet, base, params


def check_beta(beta: float) -> None:
  if not 0.0 <= beta < 0.5:
    raise ValueError(f"beta must be in [0, 0.5), got {beta!r}")


def trim_counts(num_rows: int, beta: float) -> jax.Array:
  """[K+1] int32 table: t[n] = int(beta * n), scipy's per-side trim count."""
  return jnp.asarray(np.array([int(beta * n) for n in range(num_rows + 1)],
                              dtype=np.int32))


def trimmed_mean_of_sorted(s: jax.Array, n: jax.Array,
                           t: jax.Array) -> jax.Array:
  """Sorted [K, c] (n valid rows first), t cut per side -> [c] mean."""
  rank = jnp.arange(s.shape[0])[:, None]
  keep = (rank >= t) & (rank < n - t)
  total = jnp.sum(jnp.where(keep, s, 0.0), axis=0)
  count = jnp.maximum(n - 2 * t, 1).astype(s.dtype)
  return jnp.where(n > 0, total / count, 0.0).astype(s.dtype)


def weighted_trimmed_mean_of_sorted(s: jax.Array, ws: jax.Array,
                                    n_pos: jax.Array,
                                    t: jax.Array) -> jax.Array:
  """Sorted [K, c] values and weights -> [c] weighted trimmed mean."""
  cum = jnp.cumsum(ws, axis=0)
  prev = jnp.concatenate([jnp.zeros_like(cum[:1]), cum[:-1]], axis=0)
  total = cum[-1]
  # t * W / n rather than (t / n) * W: exact for the integer cumulative
  # weights that equal weights normalize to.
  n = jnp.maximum(n_pos, 1).astype(total.dtype)
  cut = t.astype(total.dtype) * total / n
  lo, hi = cut, total - cut
  kept = jnp.clip(jnp.minimum(cum, hi) - jnp.maximum(prev, lo), 0.0, None)
  # inf * 0 would be NaN: rows with no kept mass (incl. the +inf padding)
  # are dropped before multiplying.
  num = jnp.sum(jnp.where(kept > 0, s * kept, 0.0), axis=0)
  den = hi - lo
  return jnp.where(total > 0, num / jnp.where(den > 0, den, 1.0),
                   0.0).astype(s.dtype)


@functools.partial(jax.jit, static_argnames="beta")
def trimmed_mean_flat(flat: jax.Array, valid: jax.Array,
                      beta: float) -> jax.Array:
  """[K, D] -> [D] trimmed mean of the valid rows (0 if none).

  Args:
    flat: [K, D] updates.
    valid: [K] bool; False rows are ignored.
    beta: static fraction in [0, 0.5) trimmed from each side.

  Returns:
    [D], equal to `scipy.stats.trim_mean(flat[valid], beta, axis=0)`.
  """
  check_beta(beta)
  n = jnp.sum(valid.astype(jnp.int32))
  t = trim_counts(flat.shape[0], beta)[n]
  return _sortnet.map_sorted_blocks(
      lambda s, _: trimmed_mean_of_sorted(s, n, t), flat, valid)


@functools.partial(jax.jit, static_argnames="beta")
def weighted_trimmed_mean_flat(flat: jax.Array, weights: jax.Array,
                               valid: jax.Array, beta: float) -> jax.Array:
  """[K, D] -> [D] weighted trimmed mean (definition: module docstring).

  Args:
    flat: [K, D] updates.
    weights: [K] non-negative weights (negative ones count as 0).
    valid: [K] bool; False rows are ignored.
    beta: static fraction in [0, 0.5); t = floor(beta * n) rows' worth of
      mass is cut per side, n the number of valid rows with positive weight.

  Returns:
    [D]; 0 where the valid rows carry no weight.
  """
  check_beta(beta)
  w = _sortnet.normalize_weights(weights, valid)
  n_pos = jnp.sum((w > 0).astype(jnp.int32))
  t = trim_counts(flat.shape[0], beta)[n_pos]
  return _sortnet.map_sorted_blocks(
      lambda s, ws: weighted_trimmed_mean_of_sorted(s, ws, n_pos, t),
      flat, valid, w)


@base.register("trimmed_mean", params=params.TrimmedMean)
def trimmed_mean(beta: float = 0.1, weighted: bool = False) -> base.Aggregator:
  """Coordinate-wise beta-trimmed mean of the valid updates.

  Args:
    beta: fraction in [0, 0.5) trimmed from each side (static).
    weighted: if False, `weights` are ignored (matches scipy's trim_mean);
      if True, trims by cumulative weight (module docstring).

  Returns:
    An `Aggregator`; its state is `()`.

  Raises:
    ValueError: if beta is outside [0, 0.5).

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
  check_beta(beta)

  def kernel(flat, weights, valid):
    if weighted:
      return weighted_trimmed_mean_flat(flat, weights, valid, beta)
    return trimmed_mean_flat(flat, valid, beta)

  return base.from_kernel(kernel)
