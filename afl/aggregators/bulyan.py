"""Bulyan (El Mhamdi, Guerraoui, Rouault 2018): repeated Krum, then a
coordinate-wise trimmed mean around the median.

With n participating rows (valid with positive weight, as in `krum`) and f
assumed Byzantine:

  1. Selection: theta = n - 2f rows by repeated Krum. Each round scores the
     rows not selected yet by Krum among themselves (n_r of them, each
     summing its clip(n_r - f - 2, 1, n_r - 1) nearest squared distances)
     and moves the lowest-scoring one (ties to the lower index) to the
     selection.
  2. Per coordinate: the mean of the beta = theta - 2f selected values
     closest to the median of the theta selected values.

f is `num_byzantine`, or ceil(byzantine_fraction * n) when
`byzantine_fraction` > 0. The rule needs n >= 4f + 3 (then beta >= 3);
`params.Bulyan.check` refuses a setup whose full aggregation is smaller, and
since n is traced (padding, invalid rows), f is clamped to
max(floor((n - 3) / 4), 0) in every aggregation: with fewer than 7 rows,
f = 0 and the result is the coordinate-wise mean. In the last rounds of
step 1 (n_r <= 2f + 2 rows left) Krum's m is clamped to 1, so up to f
colluding, nearly identical rows can be selected there; step 2 trims them.

Closest values: in a sorted column s the beta values closest to the median
are a window s_L..s_(L+beta-1); L counts the windows that improve by
sliding right, i.e. the L' < theta - beta with
s_(L'+beta) - median < median - s_L' (the value entering strictly closer
than the one leaving; s_L' + s_(L'+beta) grows with L', so these L' come
first). On equal distances the smaller value stays: the result is the mean
of the first beta values of a stable sort of the sorted column by
|s - median|. At most one of the two differences can overflow, and then it
compares as +inf correctly.

Weights count only through their support, as in `krum`; the coordinate-wise
mean is unweighted, as in the paper. The distances of step 1 are Krum's
(`krum.scaled_sq_dists`, finite for rows up to float32 max), and step 2 is
read off one sort per column block (`_sortnet`), its mean overflow-safe
(`trimmed_mean.mean_of_sorted_ranks`).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from afl.aggregators import _sortnet, base, krum, params
from afl.aggregators import median as median_lib
from afl.aggregators import trimmed_mean as trimmed_mean_lib


def byzantine_table(num_rows: int, num_byzantine: int,
                    byzantine_fraction: float) -> jax.Array:
  """[K+1] int32: f for n = 0..K rows, clamped to max((n - 3) // 4, 0)."""
  return base.count_table(num_rows, lambda n: min(
      params.byzantine_count(n, byzantine_fraction, num_byzantine),
      max((n - 3) // 4, 0)))


def select_rows(d2: jax.Array, valid: jax.Array, f: jax.Array,
                theta: jax.Array) -> jax.Array:
  """[K, K] squared distances -> [K] bool: theta rows by repeated Krum."""
  def one_round(_, selected):
    idx = jnp.argmin(krum.scores_of_sq_dists(d2, valid & ~selected, f))
    return selected.at[idx].set(True)

  return lax.fori_loop(0, theta, one_round, jnp.zeros(d2.shape[0], bool))


def closest_mean_of_sorted(s: jax.Array, theta: jax.Array,
                           beta: jax.Array) -> jax.Array:
  """Sorted [K, c] (theta values first) -> [c] mean of the beta values
  closest to their median (window rule: module docstring)."""
  k_rows = s.shape[0]
  med = median_lib.median_of_sorted(s, theta)
  ahead = jnp.take(s, jnp.minimum(jnp.arange(k_rows) + beta, k_rows - 1),
                   axis=0)
  rank = jnp.arange(k_rows)[:, None]
  slide = (rank < theta - beta) & (ahead - med < med - s)
  start = jnp.sum(slide.astype(jnp.int32), axis=0)
  return trimmed_mean_lib.mean_of_sorted_ranks(s, start, start + beta)


@functools.partial(jax.jit,
                   static_argnames=("num_byzantine", "byzantine_fraction"))
def bulyan_flat(flat: jax.Array, valid: jax.Array, num_byzantine: int,
                byzantine_fraction: float = 0.0
                ) -> tuple[jax.Array, jax.Array]:
  """[K, D] -> ([D] Bulyan aggregate, [K] bool rows selected in step 1).

  Args:
    flat: [K, D] updates.
    valid: [K] bool; the rows taking part (0 if none).
    num_byzantine: f (static), clamped per aggregation (module docstring).
    byzantine_fraction: static; > 0 sets f = ceil(byzantine_fraction * n).

  Returns:
    The aggregate and the selection.
  """
  n = jnp.sum(valid.astype(jnp.int32))
  f = byzantine_table(flat.shape[0], num_byzantine, byzantine_fraction)[n]
  theta = n - 2 * f
  selected = select_rows(krum.scaled_sq_dists(flat, valid), valid, f, theta)
  out = _sortnet.map_sorted_blocks(
      lambda s: closest_mean_of_sorted(s, theta, theta - 2 * f), flat,
      selected)
  return out, selected


@base.register("bulyan", params=params.Bulyan)
def bulyan(num_byzantine: int = 1,
           byzantine_fraction: float = 0.0) -> base.Aggregator:
  """Bulyan: repeated-Krum selection, then a trimmed mean around the median.

  Args:
    num_byzantine: f, the assumed number of Byzantine updates (static); a
      full aggregation needs 4f + 3 rows.
    byzantine_fraction: in [0, 0.5) (static); > 0 sets f to
      ceil(byzantine_fraction * n) in each aggregation instead.

  Returns:
    An `Aggregator`; rows of weight 0 take no part, positive weights are
    not used (module docstring); the state is `()`.

  Raises:
    ValueError: naming the offending argument.

  References:
    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018 (Bulyan, Sec. 4).

  >>> import jax.numpy as jnp
  >>> agg = bulyan(num_byzantine=1)
  >>> ups = {"w": jnp.array([[0.0], [0.1], [0.2], [0.3], [0.4], [0.5],
  ...                        [50.0]])}
  >>> out, _ = agg.apply(ups, jnp.ones(7), jnp.ones(7, bool), agg.init(ups))
  >>> round(float(out["w"][0]), 3)  # theta = 5 rows selected, beta = 3 kept
  0.2
  """
  krum.check_counts(num_byzantine, byzantine_fraction)

  return base.from_flat(lambda flat, weights, valid: bulyan_flat(
      flat, krum.participants(weights, valid), num_byzantine,
      byzantine_fraction)[0])
