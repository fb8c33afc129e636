"""Pre-aggregation norm clipping on the flat [K, D] matrix.

Plain functions, meant to run before an aggregation kernel (the hybrid
pipeline uses `clip_relative_to_median_norm`). Rows scaled down keep their
direction. Invalid rows are returned untouched, so `base.valid_rows` still
flags them downstream, and never enter the median norm.
"""
import jax
import jax.numpy as jnp

from afl.aggregators.median import median_flat


def row_norms(flat: jax.Array) -> jax.Array:
  """[K, D] -> [K] Euclidean norms (float32)."""
  return jnp.sqrt(jnp.sum(jnp.square(flat.astype(jnp.float32)), axis=1))


def _scale_rows(flat, valid, norms, max_norm):
  scale = jnp.minimum(1.0, max_norm / jnp.where(norms > 0, norms, 1.0))
  clipped = (flat * scale[:, None].astype(flat.dtype))
  return jnp.where(valid[:, None], clipped, flat)


@jax.jit
def clip_by_norm(flat: jax.Array, valid: jax.Array,
                 max_norm: float | jax.Array) -> jax.Array:
  """Scales each valid row to norm at most `max_norm` (absolute C).

  Args:
    flat: [K, D] updates.
    valid: [K] bool.
    max_norm: C >= 0.

  Returns:
    [K, D]: row_k * min(1, C / |row_k|) for valid rows, others unchanged.

  >>> import jax.numpy as jnp
  >>> out = clip_by_norm(jnp.array([[3.0, 4.0], [0.3, 0.4]]),
  ...                    jnp.array([True, True]), 1.0)
  >>> [[round(float(v), 4) for v in row] for row in out]
  [[0.6, 0.8], [0.3, 0.4]]
  """
  return _scale_rows(flat, valid, row_norms(flat), max_norm)


@jax.jit
def median_norm_clip_scale(flat: jax.Array, valid: jax.Array,
                           multiplier: float) -> tuple[jax.Array, jax.Array]:
  """Per-row factors of `clip_relative_to_median_norm`, without applying them.

  Lets a kernel fold the scaling into its own pass over the data (the hybrid
  pipeline scales inside its sort blocks) instead of writing a clipped copy.

  Returns:
    ([K] factors in (0, 1], 1 for invalid rows; threshold scalar).
  """
  norms = row_norms(jnp.where(valid[:, None], flat, 0.0))
  threshold = multiplier * median_flat(norms[:, None], valid)[0]
  scale = jnp.minimum(1.0, threshold / jnp.where(norms > 0, norms, 1.0))
  return jnp.where(valid, scale, 1.0), threshold


@jax.jit
def clip_relative_to_median_norm(
    flat: jax.Array, valid: jax.Array,
    multiplier: float) -> tuple[jax.Array, jax.Array]:
  """Clips valid rows to `multiplier` times the median norm of valid rows.

  The threshold adapts to the round's update scale, so no absolute C has to
  be tuned, and fewer than half the rows (e.g. attackers) cannot raise it
  beyond the largest honest norm.

  Args:
    flat: [K, D] updates.
    valid: [K] bool.
    multiplier: threshold = multiplier * median(|row_k| : k valid).

  Returns:
    (clipped [K, D], threshold scalar; 0 when no row is valid).

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0], [30.0, 40.0]])
  >>> out, c = clip_relative_to_median_norm(x, jnp.ones(3, bool), 2.0)
  >>> float(c), [round(float(v), 4) for v in out[2]]
  (4.0, [2.4, 3.2])
  """
  scale, threshold = median_norm_clip_scale(flat, valid, multiplier)
  return flat * scale[:, None].astype(flat.dtype), threshold
