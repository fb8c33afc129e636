"""Pre-aggregation norm clipping on the flat [K, D] matrix.

Plain functions, meant to run before an aggregation kernel (the hybrid
pipeline uses `clip_relative_to_median_norm`). Rows scaled down keep their
direction. Invalid rows are returned untouched, so `base.valid_rows` still
flags them downstream, and never enter the median norm.

Each row's norm is computed on the row times its own power of two
(`_scale.scaled_row_norms`), so rows with entries up to float32 max (whose
norms may exceed it) are clipped as exactly as small ones, and one row's
size never affects another row's clipping (what per-row sensitivity, as in
DP, relies on). Results are bit-identical to the plain formula wherever
that does not overflow.
"""
import jax
import jax.numpy as jnp

from afl.aggregators import _scale
from afl.aggregators.median import median_flat


def _scaled_norms(flat, valid):
  x = jnp.where(valid[:, None], flat, 0.0).astype(jnp.float32)
  norm, s = _scale.scaled_row_norms(x, jnp.max(jnp.abs(x), axis=1))
  return x, norm, s


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
  x, norm, s = _scaled_norms(flat, valid)
  # (x s) * min(1/s, C/|x s|) is x * min(1, C/|x|) in two steps, neither of
  # which can underflow or overflow.
  factor = jnp.minimum(1 / s, max_norm / jnp.where(norm > 0, norm, 1.0))
  clipped = (x * s[:, None]) * factor[:, None]
  return jnp.where(valid[:, None], clipped.astype(flat.dtype), flat)


@jax.jit
def median_norm_clip_scale(flat: jax.Array, valid: jax.Array,
                           multiplier: float) -> tuple[jax.Array, jax.Array]:
  """Per-row factors of `clip_relative_to_median_norm`, without applying them.

  Lets a kernel fold the scaling into its own pass over the data (the hybrid
  pipeline scales inside its sort blocks) instead of writing a clipped copy.

  Returns:
    ([K] factors in [0, 1], 1 for invalid rows; threshold scalar, saturated
    at float32 max). A factor below 2^-126 (a row more than ~1e38 times the
    threshold) is 0: such a row is zeroed rather than scaled onto it.
  """
  _, norm, s = _scaled_norms(flat, valid)
  norms = _scale.saturate(norm * (1 / s))
  threshold = _scale.saturate(
      multiplier * median_flat(norms[:, None], valid)[0])
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
