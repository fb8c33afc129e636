"""Overflow-safe arithmetic shared by the aggregation kernels.

Finite float32 rows can still overflow inside a kernel: a squared norm
passes float32 max (3.4e38) once entries pass ~1e19, and a plain sum of K
values near max overflows. The kernels therefore

  * form squares (norms, distances, Gram matrices) on values multiplied by
    a power of two s (`pow2_scale`), chosen from a bound on their magnitude
    so that the sums of squares stay below float32 max (`square_bits`): per
    row for norms and distances (`scaled_row_norms`, `row_dists`), so rows
    of very different sizes keep each other's precision, and once per
    aggregation where a matmul needs one scale (Krum). Multiplying by a
    power of two is exact and commutes with rounding, so norms and
    distances (times s), their order and every ratio are bit-identical to
    the unscaled computation whenever that neither overflows nor
    underflows; where it would, they stay finite.
  * average with weights normalized to sum to 1 (every partial sum is then
    at most the largest value) or on values times 2^-ceil(log2 K)
    (`sum_headroom`), and `saturate` the result, which can exceed the
    largest input only by rounding.

XLA flushes subnormal floats to zero, so values below 2^-126 (times the
scale) count as 0 here, as everywhere else in XLA. XLA also rewrites
a * c + b * c as (a + b) * c, so halving before adding is no guard against
overflow.
"""
import math

import jax
import jax.numpy as jnp

FLOAT32_MAX = float(jnp.finfo(jnp.float32).max)


def saturate(x: jax.Array) -> jax.Array:
  """Clips to the finite float32 range (inf becomes float32 max)."""
  return jnp.clip(x, -FLOAT32_MAX, FLOAT32_MAX)


def square_bits(terms: int) -> int:
  """b with terms * (2^b)^2 <= 2^127 < float32 max: `terms` squares of
  values below 2^b sum to a finite float32."""
  return (127 - math.ceil(math.log2(max(terms, 1)))) // 2


def pow2_scale(bound: jax.Array, bits: int) -> jax.Array:
  """2^e with bound * 2^e < 2^bits (elementwise), e in [-126, 126] so that
  the scale and its inverse are normal floats (bound 0: 2^min(bits, 126))."""
  _, e = jnp.frexp(saturate(bound.astype(jnp.float32)))  # bound < 2^e
  return jnp.ldexp(jnp.float32(1.0), jnp.clip(bits - e, -126, 126))


def scaled_row_norms(diff: jax.Array,
                     bound: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[K, D] -> ([K] row norms times s, [K] s): s_i a power of two chosen
  from bound_i >= max_j |diff_ij|, so the squares cannot overflow."""
  s = pow2_scale(bound, square_bits(diff.shape[1]))
  return jnp.sqrt(jnp.sum(jnp.square(diff * s[:, None]), axis=1)), s


def row_dists(x: jax.Array, v: jax.Array, row_max: jax.Array) -> jax.Array:
  """[K] distances |x_i - v|, saturated at float32 max.

  Args:
    x: [K, D] float32 rows.
    v: [D] point.
    row_max: [K] max_j |x_ij| (computed once by the caller).

  Returns:
    [K] float32, each computed on its row scaled by its own power of two
    (`scaled_row_norms`, bound row_max_i + max_j |v_j|).
  """
  # x - v overflows only where the distance exceeds float32 max anyway.
  norm, s = scaled_row_norms(x - v[None, :], row_max + jnp.max(jnp.abs(v)))
  return saturate(norm * (1 / s))


def sum_headroom(num_terms: int) -> float:
  """2^-ceil(log2 num_terms): num_terms values up to float32 max, each
  multiplied by it, sum to at most float32 max (static, exact)."""
  return 2.0 ** -math.ceil(math.log2(max(num_terms, 1)))
