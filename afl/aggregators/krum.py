"""Krum and Multi-Krum (Blanchard et al. 2017).

Each valid update i is scored by the sum of squared Euclidean distances to
its m = n - f - 2 nearest other valid updates (n valid rows, f =
`num_byzantine`). Krum returns the update with the lowest score; Multi-Krum
averages the `num_selected` lowest-scoring ones (scores computed once, as in
the paper). n is a traced count, so m is clamped into [1, n - 1] when the
paper's n > 2f + 2 does not hold (a lone valid row scores 0). Invalid rows get
score +inf and are never selected; ties go to the lower row index.
"""
import functools

import jax
import jax.numpy as jnp

from afl.aggregators import base, params


@jax.jit
def pairwise_sq_dists(flat: jax.Array, valid: jax.Array) -> jax.Array:
  """[K, D] -> [K, K] squared distances between rows (0 rows where invalid).

  Uses the Gram matrix (one matmul); rows are first centred on the mean of
  the valid rows, which leaves distances unchanged but keeps the
  |a|^2 + |b|^2 - 2ab cancellation small in float32.
  """
  x = jnp.where(valid[:, None], flat, 0.0).astype(jnp.float32)
  n = jnp.maximum(jnp.sum(valid), 1)
  x = jnp.where(valid[:, None], x - jnp.sum(x, axis=0) / n, 0.0)
  gram = jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.diagonal(gram)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)


@functools.partial(jax.jit, static_argnames="num_byzantine")
def krum_scores(flat: jax.Array, valid: jax.Array,
                num_byzantine: int) -> jax.Array:
  """[K, D] -> [K] Krum scores; +inf for invalid rows.

  Args:
    flat: [K, D] updates.
    valid: [K] bool.
    num_byzantine: f, the assumed number of Byzantine rows (static).

  Returns:
    [K] float32 scores, lower is more central.
  """
  k_rows = flat.shape[0]
  d2 = pairwise_sq_dists(flat, valid)
  pair_ok = valid[:, None] & valid[None, :] & ~jnp.eye(k_rows, dtype=bool)
  d2 = jnp.where(pair_ok, d2, jnp.inf)
  n = jnp.sum(valid.astype(jnp.int32))
  m = jnp.clip(n - num_byzantine - 2, 1, jnp.maximum(n - 1, 0))
  nearest = jnp.sort(d2, axis=1)
  take = jnp.arange(k_rows)[None, :] < m
  scores = jnp.sum(jnp.where(take, nearest, 0.0), axis=1)
  return jnp.where(valid, scores, jnp.inf)


@functools.partial(jax.jit, static_argnames="num_byzantine")
def krum_flat(flat: jax.Array, valid: jax.Array,
              num_byzantine: int) -> tuple[jax.Array, jax.Array]:
  """[K, D] -> ([D] selected update, scalar index); zeros if no valid row."""
  scores = krum_scores(flat, valid, num_byzantine)
  idx = jnp.argmin(scores)
  out = jnp.where(jnp.any(valid), flat[idx], 0.0)
  return out.astype(flat.dtype), idx


@functools.partial(jax.jit,
                   static_argnames=("num_byzantine", "num_selected"))
def multi_krum_flat(flat: jax.Array, weights: jax.Array, valid: jax.Array,
                    num_byzantine: int,
                    num_selected: int) -> tuple[jax.Array, jax.Array]:
  """[K, D] -> ([D] mean of the selected updates, [K] bool selected mask).

  Selects the min(num_selected, n) valid rows with the lowest Krum scores
  (ties to the lower index) and averages them by `weights` (pass ones for
  the paper's uniform average).
  """
  k_rows = flat.shape[0]
  scores = krum_scores(flat, valid, num_byzantine)
  order = jnp.argsort(scores, stable=True)
  rank = jnp.zeros(k_rows, jnp.int32).at[order].set(jnp.arange(k_rows))
  selected = valid & (rank < num_selected)
  w = jnp.where(selected, weights.astype(jnp.float32), 0.0)
  safe = jnp.where(selected[:, None], flat, 0.0)
  total = jnp.sum(w)
  out = jnp.where(total > 0, (w @ safe) / jnp.where(total > 0, total, 1.0), 0.0)
  return out.astype(flat.dtype), selected


def _check(num_byzantine: int, num_selected: int = 1) -> None:
  if num_byzantine < 0:
    raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine!r}")
  if num_selected < 1:
    raise ValueError(f"num_selected must be >= 1, got {num_selected!r}")


@base.register("krum", params=params.Krum)
def krum(num_byzantine: int = 1) -> base.Aggregator:
  """Krum: the single valid update closest to its n - f - 2 neighbours.

  Args:
    num_byzantine: f, the assumed number of Byzantine updates (static).

  Returns:
    An `Aggregator`; `weights` are ignored (Krum selects, it does not
    average); the state is `()`.

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
  _check(num_byzantine)

  return base.from_flat(
      lambda flat, weights, valid: krum_flat(flat, valid, num_byzantine)[0])


@base.register("multi_krum", params=params.MultiKrum)
def multi_krum(num_byzantine: int = 1, num_selected: int = 2,
               weighted: bool = False) -> base.Aggregator:
  """Multi-Krum: the mean of the `num_selected` best-scoring valid updates.

  Args:
    num_byzantine: f, the assumed number of Byzantine updates (static).
    num_selected: how many updates to average (static; fewer if fewer are
      valid).
    weighted: average the selected updates by `weights` instead of
      uniformly.

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
  _check(num_byzantine, num_selected)

  def kernel(flat, weights, valid):
    if not weighted:
      weights = jnp.ones_like(weights)
    return multi_krum_flat(flat, weights, valid, num_byzantine,
                           num_selected)[0]

  return base.from_flat(kernel)
