"""Centered clipping (Karimireddy, He, Jaggi 2021).

Starting from a center v (the previous aggregate), `iters` times:

  v <- v + sum_i w_i * (x_i - v) * min(1, tau / |x_i - v|) / sum_i w_i

over the valid rows (w_i = `weights`; equal weights give the paper's 1/n).
Each row can move the center by at most tau * w_i / sum w per step, so
arbitrarily large rows have bounded influence.

Each |d_i|, d_i = x_i - v, is formed on d_i times its own power of two
(`_scale.scaled_row_norms`) and the clip factor applied in two steps, so
rows up to float32 max pull the center by exactly tau (an overflowed norm
used to make their pull 0), and small rows keep their precision beside huge
ones.

State: the center, a flat [D] float32 vector holding the previous aggregate
(the paper's momentum center); `init(example_updates)` makes it zero, and
every `apply` returns the new aggregate as the next state. When no valid
row carries weight, the aggregate is the unchanged center.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from afl.aggregators import _scale, base, params


@functools.partial(jax.jit, static_argnames="iters")
def centered_clip_flat(flat: jax.Array, weights: jax.Array, valid: jax.Array,
                       center: jax.Array, tau: float,
                       iters: int) -> jax.Array:
  """[K, D], [D] center -> [D] centered-clipping aggregate.

  Args:
    flat: [K, D] updates.
    weights: [K] non-negative weights.
    valid: [K] bool; False rows are ignored.
    center: [D] starting point (previous aggregate).
    tau: clipping radius around the center.
    iters: number of clipping steps (static).

  Returns:
    [D] aggregate in float32.
  """
  x = jnp.where(valid[:, None], flat, 0.0).astype(jnp.float32)
  center = center.astype(jnp.float32)
  w = jnp.where(valid, jnp.maximum(weights.astype(jnp.float32), 0.0), 0.0)
  total = jnp.sum(w)
  w = w / jnp.where(total > 0, total, 1.0)
  row_max = jnp.max(jnp.abs(x), axis=1)

  def step(_, v):
    # x - v overflows only where |d_i| > float32 max: its length is tau.
    diff = _scale.saturate(x - v[None, :])
    norm, s = _scale.scaled_row_norms(diff, row_max + jnp.max(jnp.abs(v)))
    # (d_i s_i) * w_i min(1/s_i, tau/|d_i s_i|) = w_i d_i min(1, tau/|d_i|),
    # in two steps neither of which can overflow or underflow.
    coef = w * jnp.minimum(1 / s, tau / jnp.where(norm > 0, norm, 1.0))
    return _scale.saturate(v + coef @ (diff * s[:, None]))

  return lax.fori_loop(0, iters, step, center)


@base.register("centered_clip", params=params.CenteredClip)
def centered_clip(tau: float = 1.0, iters: int = 3) -> base.Aggregator:
  """Centered clipping around the previous aggregate.

  Args:
    tau: clipping radius (> 0).
    iters: clipping steps per aggregation (>= 1; the paper uses 1-3).

  Returns:
    An `Aggregator` whose state is the flat [D] center (zeros at first).

  Raises:
    ValueError: naming the offending argument.

  References:
    Karimireddy, He, Jaggi, "Learning from history for Byzantine robust
    optimization", ICML 2021 (Algorithm 1/2).

  >>> import jax.numpy as jnp
  >>> agg = centered_clip(tau=1.0, iters=1)
  >>> ups = {"w": jnp.array([[0.5], [0.5], [100.0]])}
  >>> out, state = agg.apply(ups, jnp.ones(3), jnp.ones(3, bool), agg.init(ups))
  >>> round(float(out["w"][0]), 4)  # (0.5 + 0.5 + 1.0) / 3
  0.6667
  """
  if not tau > 0:
    raise ValueError(f"tau must be > 0, got {tau!r}")
  if iters < 1:
    raise ValueError(f"iters must be >= 1, got {iters!r}")

  def init(example_updates):
    flat, _ = base.flatten_updates(example_updates)
    return jnp.zeros(flat.shape[1], jnp.float32)

  def apply(updates, weights, mask, state):
    flat, unravel = base.flatten_updates(updates)
    valid = base.valid_rows(flat, mask)
    out = centered_clip_flat(flat, weights, valid, state, tau, iters)
    return unravel(out.astype(flat.dtype)), out

  return base.Aggregator(init, apply)
