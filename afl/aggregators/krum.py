"""Krum and Multi-Krum (Blanchard et al. 2017).

Each participating update i (n of them, see Weights) is scored by the sum of
squared Euclidean distances to its m = n - f - 2 nearest other participating
updates, f = `num_byzantine`, or ceil(byzantine_fraction * n) when
`byzantine_fraction` > 0. Krum returns the update with the lowest score;
Multi-Krum averages the `num_selected` lowest-scoring ones (scores computed
once, as in the paper). n is a traced count, so m is clamped into [1, n - 1]
when the paper's n > 2f + 2 does not hold (a lone row scores 0). Other rows
get score +inf and are never selected; ties go to the lower row index.

Weights. Krum selects rows, so only the support of the weights matters: a
valid row of weight 0 takes no part, exactly as if masked (never selected,
never anyone's neighbour, not counted in n). A positive weight cannot
partly select a row, so it does not change the selection: soft quarantine
(weights scaled down, never to 0) leaves Krum's choice as it is.
Multi-Krum with `weighted` averages the selected rows by weight, so there
it does count.

Numerics. The distances come from one Gram matmul on the rows centred on
their coordinate-wise median (`pairwise_sq_dists`), multiplied by a power of
two s that brings the median row's largest centred entry to about 1, with
centred entries clipped at +-C, C = 2^floor((127 - log2(4 K D)) / 2)
(>= 2^47 up to K D = 2^31; `scaled_sq_dists`). So no distance or score
overflows for rows up to float32 max, the scores are those of the unscaled
rows times s^2 (only their order is used), and the distances among the rows
near the median keep their precision however large the others are: a row
is clipped only when it lies more than C / s (~1e14 typical row sizes) from
the median, and then it still scores as the farthest. Why the median: a few
huge rows drag the mean far from the others, and the |a|^2 + |b|^2 - 2ab
cancellation would then swamp the distances among the rows near each other
(a moderate attacker could hide behind a huge one).
"""
import functools

import jax
import jax.numpy as jnp

from afl.aggregators import _scale, base, params
from afl.aggregators import median as median_lib
from afl.aggregators.mean import weighted_mean_flat


def _gram_sq_dists(x: jax.Array) -> jax.Array:
  """[K, D] rows (centred, squares finite) -> [K, K] squared distances by
  one Gram matmul, exactly symmetric so equal distances tie exactly."""
  gram = jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.diagonal(gram)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  return jnp.minimum(d2, d2.T)


def _centred(flat, valid):
  x = jnp.where(valid[:, None], flat, 0.0).astype(jnp.float32)
  return jnp.where(valid[:, None], x - median_lib.median_flat(x, valid), 0.0)


@jax.jit
def pairwise_sq_dists(flat: jax.Array, valid: jax.Array) -> jax.Array:
  """[K, D] -> [K, K] squared distances between rows (0 rows where invalid).

  Uses the Gram matrix (one matmul) of the rows centred on the coordinate-wise
  median of the valid rows, which leaves distances unchanged but keeps the
  |a|^2 + |b|^2 - 2ab cancellation small in float32. The caller keeps the
  squares finite (|entries| below ~1e19 / sqrt(D)); `scaled_sq_dists` needs
  no such care.
  """
  return _gram_sq_dists(_centred(flat, valid))


def scaled_sq_dists(flat: jax.Array, valid: jax.Array) -> jax.Array:
  """[K, D] -> [K, K] squared distances times s^2, finite for any finite
  rows; centred entries beyond C / s are clipped (module docstring)."""
  k_rows, dim = flat.shape
  x = _centred(flat, valid)  # entries may overflow to +-inf: clipped below
  row_max = _scale.saturate(jnp.max(jnp.abs(x), axis=1))
  typical = median_lib.median_flat(row_max[:, None], valid)[0]
  s = _scale.pow2_scale(
      jnp.where(typical > 0, typical, jnp.max(row_max)), 0)
  # |a - b| <= 2C per entry: a distance <= 4 D C^2, a score <= 4 K D C^2.
  c = 2.0 ** _scale.square_bits(4 * k_rows * dim)
  return _gram_sq_dists(jnp.clip(x * s, -c, c))


def scores_of_sq_dists(d2: jax.Array, valid: jax.Array,
                       f: jax.Array | int) -> jax.Array:
  """[K, K] squared distances -> [K] Krum scores among the `valid` rows.

  Args:
    d2: [K, K] squared distances.
    valid: [K] bool; the rows taking part (n of them).
    f: the assumed number of Byzantine rows (int or traced scalar).

  Returns:
    [K] float32: the sum of each valid row's m = clip(n - f - 2, 1, n - 1)
    smallest distances to other valid rows; +inf for the other rows.
  """
  k_rows = d2.shape[0]
  pair_ok = valid[:, None] & valid[None, :] & ~jnp.eye(k_rows, dtype=bool)
  d2 = jnp.where(pair_ok, d2, jnp.inf)
  n = jnp.sum(valid.astype(jnp.int32))
  m = jnp.clip(n - f - 2, 1, jnp.maximum(n - 1, 0))
  nearest = jnp.sort(d2, axis=1)
  take = jnp.arange(k_rows)[None, :] < m
  scores = jnp.sum(jnp.where(take, nearest, 0.0), axis=1)
  return jnp.where(valid, scores, jnp.inf)


def byzantine_table(num_rows: int, num_byzantine: int,
                    byzantine_fraction: float) -> jax.Array:
  """[K+1] int32: f for n = 0..K valid rows (`params.byzantine_count`)."""
  return base.count_table(num_rows, lambda n: params.byzantine_count(
      n, byzantine_fraction, num_byzantine))


def participants(weights: jax.Array, valid: jax.Array) -> jax.Array:
  """The rows that take part: valid with positive weight."""
  return valid & (weights > 0)


@functools.partial(jax.jit,
                   static_argnames=("num_byzantine", "byzantine_fraction"))
def krum_scores(flat: jax.Array, valid: jax.Array, num_byzantine: int,
                byzantine_fraction: float = 0.0) -> jax.Array:
  """[K, D] -> [K] Krum scores (times a power of two); +inf for invalid rows.

  Args:
    flat: [K, D] updates.
    valid: [K] bool.
    num_byzantine: f, the assumed number of Byzantine rows (static).
    byzantine_fraction: static; > 0 sets f = ceil(byzantine_fraction * n).

  Returns:
    [K] float32 scores times s^2, s the power of two of `scaled_sq_dists`
    (the same for all rows); lower is more central.
  """
  n = jnp.sum(valid.astype(jnp.int32))
  f = byzantine_table(flat.shape[0], num_byzantine, byzantine_fraction)[n]
  return scores_of_sq_dists(scaled_sq_dists(flat, valid), valid, f)


@functools.partial(jax.jit,
                   static_argnames=("num_byzantine", "byzantine_fraction"))
def krum_flat(flat: jax.Array, valid: jax.Array, num_byzantine: int,
              byzantine_fraction: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """[K, D] -> ([D] selected update, scalar index); zeros if no valid row."""
  idx = jnp.argmin(krum_scores(flat, valid, num_byzantine,
                               byzantine_fraction))
  out = jnp.where(jnp.any(valid), flat[idx], 0.0)
  return out.astype(flat.dtype), idx


@functools.partial(
    jax.jit,
    static_argnames=("num_byzantine", "num_selected", "byzantine_fraction"))
def multi_krum_flat(flat: jax.Array, weights: jax.Array, valid: jax.Array,
                    num_byzantine: int, num_selected: int,
                    byzantine_fraction: float = 0.0
                    ) -> tuple[jax.Array, jax.Array]:
  """[K, D] -> ([D] mean of the selected updates, [K] bool selected mask).

  Selects the min(num_selected, n) valid rows with the lowest Krum scores
  (ties to the lower index) and averages them by `weights` (pass ones for
  the paper's uniform average).
  """
  k_rows = flat.shape[0]
  scores = krum_scores(flat, valid, num_byzantine, byzantine_fraction)
  order = jnp.argsort(scores, stable=True)
  rank = jnp.zeros(k_rows, jnp.int32).at[order].set(jnp.arange(k_rows))
  selected = valid & (rank < num_selected)
  out = weighted_mean_flat(flat.astype(jnp.float32), weights, selected)
  return out.astype(flat.dtype), selected


def check_counts(num_byzantine: int, byzantine_fraction: float,
                 num_selected: int = 1) -> None:
  """Raises ValueError naming a bad f, byzantine_fraction or num_selected."""
  if num_byzantine < 0:
    raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine!r}")
  base.check_fraction("byzantine_fraction", byzantine_fraction)
  if num_selected < 1:
    raise ValueError(f"num_selected must be >= 1, got {num_selected!r}")


@base.register("krum", params=params.Krum)
def krum(num_byzantine: int = 1,
         byzantine_fraction: float = 0.0) -> base.Aggregator:
  """Krum: the single valid update closest to its n - f - 2 neighbours.

  Args:
    num_byzantine: f, the assumed number of Byzantine updates (static).
    byzantine_fraction: in [0, 0.5) (static); > 0 sets f to
      ceil(byzantine_fraction * n) in each aggregation instead.

  Returns:
    An `Aggregator`; rows of weight 0 take no part, positive weights do not
    change the selection (module docstring); the state is `()`.

  References:
    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine learning with
    adversaries: Byzantine tolerant gradient descent", NeurIPS 2017.

  >>> import jax.numpy as jnp
  >>> agg = krum(num_byzantine=1)
  >>> ups = {"w": jnp.array([[0.0], [0.1], [0.2], [0.3], [50.0]])}
  >>> out, _ = agg.apply(ups, jnp.ones(5), jnp.ones(5, bool), agg.init(ups))
  >>> round(float(out["w"][0]), 3)
  0.1
  """
  check_counts(num_byzantine, byzantine_fraction)

  return base.from_flat(lambda flat, weights, valid: krum_flat(
      flat, participants(weights, valid), num_byzantine,
      byzantine_fraction)[0])


@base.register("multi_krum", params=params.MultiKrum)
def multi_krum(num_byzantine: int = 1, byzantine_fraction: float = 0.0,
               num_selected: int = 2,
               weighted: bool = False) -> base.Aggregator:
  """Multi-Krum: the mean of the `num_selected` best-scoring valid updates.

  Args:
    num_byzantine: f, the assumed number of Byzantine updates (static).
    byzantine_fraction: in [0, 0.5) (static); > 0 sets f to
      ceil(byzantine_fraction * n) in each aggregation instead.
    num_selected: how many updates to average (static; fewer if fewer are
      valid).
    weighted: average the selected updates by `weights` instead of
      uniformly. Either way rows of weight 0 take no part.

  Returns:
    An `Aggregator`; the state is `()`.

  References:
    Blanchard et al., NeurIPS 2017 (Multi-Krum, Sec. 5).

  >>> import jax.numpy as jnp
  >>> agg = multi_krum(num_byzantine=1, num_selected=2)
  >>> ups = {"w": jnp.array([[0.0], [0.2], [0.1], [0.35], [50.0]])}
  >>> out, _ = agg.apply(ups, jnp.ones(5), jnp.ones(5, bool), agg.init(ups))
  >>> round(float(out["w"][0]), 3)
  0.15
  """
  check_counts(num_byzantine, byzantine_fraction, num_selected)

  def kernel(flat, weights, valid):
    part = participants(weights, valid)
    if not weighted:
      weights = jnp.ones_like(weights)
    return multi_krum_flat(flat, weights, part, num_byzantine, num_selected,
                           byzantine_fraction)[0]

  return base.from_flat(kernel)
