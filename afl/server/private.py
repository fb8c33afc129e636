"""The privacy wrapper: the mean computed under server DP and/or secure
aggregation, in place of the aggregator (which must be `linear`).

- Server DP (DP-FedAvg, user level): `dp.server_noised_mean`, each valid
  row clipped to S, Gaussian noise of std sigma S on the sum, then divided
  by the count. With per-client merging a client is one row, so adding or
  removing a client changes the sum by at most S.
- Secure aggregation: the sum is `secagg.secure_sum` over the valid rows
  (the server never holds a single update); each participant drops out
  after masking with probability `drop_after_masking`, and the mean is over
  the survivors.

The stage's state is its PRNG key, split once per aggregation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from afl.privacy import dp as dp_lib
from afl.privacy import secagg as secagg_lib
from afl.server.stages import Stage


def private_mean(key, *, dp_clip: float | None = None, dp_noise: float = 0.0,
                 secagg=None) -> Stage:
  """`secagg`: a SecAggConfig that is enabled, or None."""
  def apply(rows, key):
    key, drop_key, mask_key, noise_key = jax.random.split(key, 4)
    valid = rows.mask
    sum_fn = None
    keep = valid
    if secagg is not None:
      keep = valid & (jax.random.uniform(drop_key, valid.shape)
                      >= secagg.drop_after_masking)

      def sum_fn(flat, ok):
        return secagg_lib.secure_sum(flat, rows.ids, mask_key,
                                     participants=ok, survivors=keep,
                                     scale=secagg.scale)
    count = jnp.maximum(jnp.sum(keep), 1)
    if dp_clip is not None:
      agg = dp_lib.server_noised_mean(rows.flat, valid, dp_clip, dp_noise,
                                      noise_key, expected_count=count,
                                      sum_fn=sum_fn)
    else:
      agg = sum_fn(jnp.where(valid[:, None], rows.flat, 0.0),
                   valid) / count.astype(rows.flat.dtype)
    return rows.replace(aggregate=agg), key
  return Stage(lambda example_rows: key, apply)
