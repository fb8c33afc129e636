"""Weighted mean over valid rows (FedAvg's aggregate)."""
import jax.numpy as jnp

from afl.aggregators import _scale, base


def weighted_mean_flat(flat, weights, valid):
  """[K, D] -> [D]: sum_k w_k x_k / sum_k w_k over valid rows (0 if none).

  The weights are normalized before the product, so no partial sum exceeds
  the largest |entry| (`_scale`): rows up to float32 max give a finite mean.
  """
  w = jnp.where(valid, weights, 0.0).astype(flat.dtype)
  safe = jnp.where(valid[:, None], flat, 0.0)
  total = jnp.sum(w)
  w = w / jnp.where(total > 0, total, 1.0)
  return jnp.where(total > 0, _scale.saturate(w @ safe), 0.0)


@base.register("mean", linear=True)
def mean() -> base.Aggregator:
  """Weighted mean of the valid updates.

  >>> import jax.numpy as jnp
  >>> agg = mean()
  >>> ups = {"w": jnp.array([[1.0], [3.0]])}
  >>> out, _ = agg.apply(ups, jnp.ones(2), jnp.array([True, True]),
  ...                    agg.init(ups))
  >>> float(out["w"][0])
  2.0
  """
  return base.from_kernel(weighted_mean_flat)
