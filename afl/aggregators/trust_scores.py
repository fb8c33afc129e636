"""Per-row trust scores: sign agreement with a leave-one-out median (or a
given reference), a norm term and a duplicate term (formulas in
`afl.aggregators.trust`, which accumulates them per client).

`cfg` is a `trust.TrustConfig`; only its fields are read here.
"""
import jax
import jax.numpy as jnp

from afl.aggregators import _sortnet


def _middle(s: jax.Array, n: jax.Array):
  """Sorted [K, c] (n valid rows first) -> rows n//2 - 1, n//2, n//2 + 1."""
  h = n // 2
  take = lambda i: jax.lax.dynamic_index_in_dim(
      s, jnp.clip(i, 0, s.shape[0] - 1), 0, False)
  return take(h - 1), take(h), take(h + 1)


@jax.jit
def leave_one_out_median(flat: jax.Array, valid: jax.Array,
                         outside: jax.Array | None = None) -> jax.Array:
  """[K, D] -> [K, D]: row k is the coordinate-wise median of the valid rows
  other than k (`np.median(flat[valid & (arange(K) != k)], axis=0)`).

  One sort per column: with n valid values s_0 <= ... <= s_{n-1} and
  h = n // 2, dropping x leaves the median s_h if x <= s_{h-1} and s_{h-1}
  otherwise (n even); (s_h + s_{h+1}) / 2, (s_{h-1} + s_h) / 2 or
  (s_{h-1} + s_{h+1}) / 2 as x is below, above or at s_h (n odd). Ties give
  the same value whichever equal element is dropped. Rows that are not
  valid, and every row when fewer than two are, get 0, except the rows
  `outside` marks (optional [K] bool, rows not valid): they get the median
  of all n valid rows (s_h, or (s_{h-1} + s_h) / 2 for n even; 0 when
  n = 0).
  """
  n = jnp.sum(valid.astype(jnp.int32))
  lo, mid, hi = _sortnet.map_sorted_blocks(lambda s: _middle(s, n), flat,
                                           valid)
  odd = jnp.where(flat < mid, 0.5 * (mid + hi),
                  jnp.where(flat > mid, 0.5 * (lo + mid), 0.5 * (lo + hi)))
  even = jnp.where(flat <= lo, mid, lo)
  loo = jnp.where(valid[:, None] & (n >= 2),
                  jnp.where(n % 2 == 1, odd, even), 0.0)
  if outside is not None:
    whole = jnp.where(n % 2 == 1, mid, 0.5 * (lo + mid))
    loo = jnp.where(outside[:, None] & ~valid[:, None] & (n >= 1),
                    whole[None, :], loo)
  return loo.astype(flat.dtype)


def _norms(x: jax.Array) -> jax.Array:
  # Capped: a finite row whose squares overflow still compares as huge.
  return jnp.minimum(jnp.sqrt(jnp.sum(x * x, axis=-1)),
                     jnp.finfo(jnp.float32).max)


def pairwise_cosines(flat: jax.Array, valid: jax.Array):
  """[K, D], [K] -> (cos [K, K], pair [K, K] bool): cosines between rows,
  and which pairs have one (both rows valid and nonzero, j != k; cos is 0
  elsewhere). Rows are scaled by their largest entry first, so any finite
  input gives finite cosines.

  The Gram matrix does not depend on `valid` (an invalid row, even a
  non-finite one, only touches its own row and column, masked afterwards),
  so where trust and the `dedup` stage both take cosines of the same rows
  in one jitted step, XLA computes the K^2 D products once.
  """
  x = flat.astype(jnp.float32)
  top = jnp.max(jnp.abs(x), axis=1, keepdims=True)
  x = x / jnp.where(top > 0, top, 1.0)
  # Scaled rows have squared norms in [1, D]: the Gram matrix is finite and
  # its diagonal gives the norms (one pass over the rows instead of two).
  gram = jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
  n = jnp.sqrt(jnp.diagonal(gram))
  k = x.shape[0]
  pair = (valid[:, None] & valid[None, :] & ~jnp.eye(k, dtype=bool)
          & (n[:, None] > 0) & (n[None, :] > 0))
  den = jnp.where(pair, n[:, None] * n[None, :], 1.0)
  return jnp.where(pair, jnp.clip(gram / den, -1.0, 1.0), 0.0), pair


def max_cosine_with_others(flat: jax.Array, valid: jax.Array) -> jax.Array:
  """[K, D], [K] -> [K]: max_{j != k, valid j} cos(x_k, x_j) for valid rows
  k (-1 where there is no such j, or either row is 0; `pairwise_cosines`)."""
  gram, pair = pairwise_cosines(flat, valid)
  return jnp.max(jnp.where(pair, gram, -1.0), axis=1)


def row_scores(flat: jax.Array, valid: jax.Array, cfg,
               reference: jax.Array | None = None,
               references: jax.Array | None = None):
  """[K, D], [K] -> (score, agreement, norm ratio, scored), each [K]
  (module doc); `scored` marks the rows that got a score.

  `reference`: None (leave-one-out medians) or a [D] update every row is
  compared with. `references`: the valid rows the medians are taken over
  (default: all valid rows); the others are compared with the median of
  all of them. Rows not valid get 0; so do all rows when there is no
  median of others to compare with (no reference) or the reference is zero
  or not finite.
  """
  x = jnp.where(valid[:, None], flat, 0.0).astype(jnp.float32)
  sx = jnp.sign(x)
  norm = _norms(x)
  if reference is None:
    refs = valid if references is None else references & valid
    out = valid & ~refs
    sr = jnp.sign(leave_one_out_median(x, refs, out))
    typical = leave_one_out_median(norm[:, None], refs, out)[:, 0]
    n = jnp.sum(refs.astype(jnp.int32))
    ok = (refs & (n >= 2)) | (out & (n >= 1))
  else:
    g = reference.astype(jnp.float32)
    usable = jnp.all(jnp.isfinite(g))
    g = jnp.where(usable, g, 0.0)
    sr = jnp.broadcast_to(jnp.sign(g), x.shape)
    typical = jnp.broadcast_to(_norms(g), norm.shape)
    ok = valid & usable & (typical > 0)
  den = jnp.sqrt(jnp.sum(jnp.abs(sx), axis=1) * jnp.sum(jnp.abs(sr), axis=1))
  agree = jnp.where(den > 0, jnp.sum(sx * sr, axis=1)
                    / jnp.where(den > 0, den, 1.0), 0.0)
  rho = jnp.where(typical > 0, norm / jnp.where(typical > 0, typical, 1.0),
                  jnp.where(norm > 0, jnp.inf, 1.0))
  # Without a penalty an infinite ratio must not give 0 * inf.
  penalty = (cfg.norm_penalty * jnp.maximum(
      0.0, jnp.log(rho / cfg.norm_tolerance)) if cfg.norm_penalty else 0.0)
  if cfg.duplicate_penalty:
    # `flat`, not the masked `x`: the same cosines as `dedup`'s (shared).
    copy = jnp.maximum(0.0, max_cosine_with_others(flat, valid)
                       - cfg.duplicate_tolerance)
    penalty = penalty + (cfg.duplicate_penalty * copy
                         / (1.0 - cfg.duplicate_tolerance))
  score = jnp.clip(agree - penalty, -1.0, 1.0)
  return (jnp.where(ok, score, 0.0), jnp.where(ok, agree, 0.0),
          jnp.where(ok, rho, 0.0), ok)
