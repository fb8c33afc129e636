"""Geometric median by the smoothed Weiszfeld algorithm (RFA).

Minimizes g(v) = sum_i a_i |v - x_i| over the valid rows, a_i the normalized
weights, with the iteration of Pillutla et al.:

  b_i = a_i / max(eps, |v - x_i|),    v <- sum_i b_i x_i / sum_i b_i

The floor `eps` keeps the step defined when v lands on a data point (the
plain Weiszfeld step divides by zero there). It stops after `max_iters`
steps or once |g(v_old) - g(v_new)| <= tol * g(v_new).

Start (`robust_start`): the weighted mean of the rows within the weighted
median distance of the coordinate-wise median. Not the mean: a few
huge rows drag it arbitrarily far, and since their distances dominate g,
the relative tolerance then stops the iteration long before it reaches the
other rows (1e30-sized rows left it at ~1e27). Not the coordinate-wise
median itself: it is often a data point (ties, zero rows), where the
smoothed step barely moves and the tolerance stops it at once. For the same
reason, with far rows present the result can be within a few steps of the
start, which lies among the bulk of the rows.

Numerics: distances are computed per row on the row minus v times a power
of two (`_scale.row_dists`), saturating at float32 max; the step divides by
the nearest floored distance first, so b <= a and the new v is a convex
combination of the rows: finite for rows up to float32 max.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from afl.aggregators import _scale, base, params
from afl.aggregators import median as median_lib
from afl.aggregators.mean import weighted_mean_flat


def robust_start(x: jax.Array, a: jax.Array, valid: jax.Array,
                 row_max: jax.Array) -> jax.Array:
  """[K, D] -> [D]: the weighted mean of the rows no farther from the
  coordinate-wise median than the weighted median distance to it (the
  unweighted median: a sort without a weight payload is ~4x faster)."""
  med = median_lib.median_flat(x, valid)
  r = _scale.row_dists(x, med, row_max)
  r_med = median_lib.weighted_median_flat(r[:, None], a, valid)[0]
  return weighted_mean_flat(x, a, valid & (r <= r_med))


@functools.partial(jax.jit, static_argnames="max_iters")
def geomed_flat(flat: jax.Array, weights: jax.Array, valid: jax.Array,
                max_iters: int = 100, tol: float = 1e-6,
                eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """[K, D] -> ([D] weighted geometric median, number of steps taken).

  Args:
    flat: [K, D] updates.
    weights: [K] non-negative weights.
    valid: [K] bool; False rows are ignored.
    max_iters: maximum Weiszfeld steps (static).
    tol: relative objective change at which to stop.
    eps: smoothing floor on distances.

  Returns:
    The approximate minimizer (0 if no valid row has weight) and the step
    count.
  """
  x = jnp.where(valid[:, None], flat, 0.0).astype(jnp.float32)
  a = jnp.where(valid, jnp.maximum(weights.astype(jnp.float32), 0.0), 0.0)
  total = jnp.sum(a)
  a = a / jnp.where(total > 0, total, 1.0)
  row_max = jnp.max(jnp.abs(x), axis=1)
  v0 = robust_start(x, a, valid, row_max)
  d0 = _scale.row_dists(x, v0, row_max)

  def cond(carry):
    i, _, _, _, done = carry
    return (i < max_iters) & ~done

  def body(carry):
    i, v, d, obj, _ = carry
    dd = jnp.maximum(d, eps)
    # a_i / dd_i times min dd: the same step, with b <= a (no overflow).
    b = a * (jnp.min(jnp.where(a > 0, dd, jnp.inf)) / dd)
    b_sum = jnp.sum(b)
    v_new = jnp.where(b_sum > 0, _scale.saturate(
        (b / jnp.where(b_sum > 0, b_sum, 1.0)) @ x), v)
    d_new = _scale.row_dists(x, v_new, row_max)
    obj_new = jnp.sum(a * d_new)
    done = jnp.abs(obj - obj_new) <= tol * obj_new
    return i + 1, v_new, d_new, obj_new, done

  init = (jnp.int32(0), v0, d0, jnp.sum(a * d0), total <= 0)
  steps, v, _, _, _ = lax.while_loop(cond, body, init)
  return v.astype(flat.dtype), steps


@base.register("geomed", params=params.Geomed)
def geomed(max_iters: int = 100, tol: float = 1e-6,
           eps: float = 1e-6) -> base.Aggregator:
  """Weighted geometric median of the valid updates (smoothed Weiszfeld).

  Args:
    max_iters: maximum Weiszfeld steps (static).
    tol: stop when the objective changes by at most tol relative.
    eps: smoothing floor on the distances (nu in the paper).

  Returns:
    An `Aggregator`; the state is `()`.

  Raises:
    ValueError: naming the offending argument.

  References:
    Pillutla, Kakade, Harchaoui, "Robust aggregation for federated learning",
    IEEE Trans. Signal Processing 70, 2022 (Algorithm 2, smoothed Weiszfeld).
    Weiszfeld, "Sur le point pour lequel la somme des distances de n points
    donnés est minimum", Tohoku Math. J. 1937.

  >>> import jax.numpy as jnp
  >>> agg = geomed(max_iters=200, tol=1e-9)
  >>> ups = {"w": jnp.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])}
  >>> out, _ = agg.apply(ups, jnp.ones(3), jnp.ones(3, bool), agg.init(ups))
  >>> [round(float(v), 3) for v in out["w"]]
  [1.0, 0.0]
  """
  if max_iters < 1:
    raise ValueError(f"max_iters must be >= 1, got {max_iters!r}")
  if tol < 0:
    raise ValueError(f"tol must be >= 0, got {tol!r}")
  if eps <= 0:
    raise ValueError(f"eps must be > 0, got {eps!r}")

  return base.from_flat(lambda flat, weights, valid: geomed_flat(
      flat, weights, valid, max_iters, tol, eps)[0])
