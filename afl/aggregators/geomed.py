"""Geometric median by the smoothed Weiszfeld algorithm (RFA).

Minimizes g(v) = sum_i a_i |v - x_i| over the valid rows, a_i the normalized
weights, with the iteration of Pillutla et al.:

  b_i = a_i / max(eps, |v - x_i|),    v <- sum_i b_i x_i / sum_i b_i

started at the weighted mean. The floor `eps` keeps the step defined when v
lands on a data point (the plain Weiszfeld step divides by zero there). It
stops after `max_iters` steps or once |g(v_old) - g(v_new)| <= tol * g(v_new).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from afl.aggregators import base, params
from afl.aggregators.mean import weighted_mean_flat


def _dists(x, v):
  return jnp.sqrt(jnp.sum(jnp.square(x - v[None, :]), axis=1))


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
  v0 = weighted_mean_flat(x, a, valid)
  d0 = _dists(x, v0)

  def cond(carry):
    i, _, _, _, done = carry
    return (i < max_iters) & ~done

  def body(carry):
    i, v, d, obj, _ = carry
    b = a / jnp.maximum(d, eps)
    b_sum = jnp.sum(b)
    v_new = jnp.where(b_sum > 0, (b @ x) / jnp.where(b_sum > 0, b_sum, 1.0), v)
    d_new = _dists(x, v_new)
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
