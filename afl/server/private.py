"""The privacy wrapper: the mean computed under server DP and/or secure
aggregation, in place of the aggregator (which must be `linear`).

- Server DP (DP-FedAvg, user level): `dp.server_noised_mean`, each valid
  row clipped to S, Gaussian noise of std sigma S on the sum, then divided
  by the count. With per-client merging a client is one row, so adding or
  removing a client changes the sum by at most S.
- Secure aggregation: the sum is `secagg.secure_sum` over the valid rows
  (the server never holds a single update); each participant drops out
  after masking with probability `drop_after_masking`, and the mean is over
  the survivors. The rows' ids must be distinct among the valid rows, which
  the per-client merge ensures (secure_sum returns NaN otherwise).

The stage's state is (PRNG key, split once per aggregation; int32 number of
coordinates secure aggregation clipped to its fixed-point range so far,
`Server.secagg_clipped`; 0 without secure aggregation).
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
  def apply(rows, state):
    key, clipped = state
    key, drop_key, mask_key, noise_key = jax.random.split(key, 4)
    valid = rows.mask
    sum_fn = None
    keep = valid
    # secure_sum's clip count, handed out of `sum_fn` within this trace.
    clip_counts = []
    if secagg is not None:
      keep = valid & (jax.random.uniform(drop_key, valid.shape)
                      >= secagg.drop_after_masking)

      def sum_fn(flat, ok):
        total, n_clipped = secagg_lib.secure_sum(
            flat, rows.ids, mask_key, participants=ok, survivors=keep,
            scale=secagg.scale)
        clip_counts.append(n_clipped)
        return total
    count = jnp.maximum(jnp.sum(keep), 1)
    if dp_clip is not None:
      agg = dp_lib.server_noised_mean(rows.flat, valid, dp_clip, dp_noise,
                                      noise_key, expected_count=count,
                                      sum_fn=sum_fn)
    else:
      agg = sum_fn(jnp.where(valid[:, None], rows.flat, 0.0),
                   valid) / count.astype(rows.flat.dtype)
    return rows.replace(aggregate=agg), (key, clipped + sum(clip_counts))

  def init(example_rows):  # a copy of the key: the state is donated
    return jnp.array(key), jnp.zeros((), jnp.int32)
  return Stage(init, apply)
