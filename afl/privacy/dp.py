"""Server-side (user-level) DP-FedAvg, and the Gaussian noise that client
DP-SGD (`afl.privacy.dp_sgd`) shares with it.

Everything here is a pure function of arrays, so it runs under `jax.jit`.

Following jax_privacy's split of responsibilities, clipping and noise are
separate steps, and noise is calibrated to the sensitivity of a clipped
*sum*. The sum is never rescaled before the noise is added: the Gaussian
mechanism's guarantee is about the sum whose L2 sensitivity is the clip
norm, and any normalization (by the batch size, by the number of updates)
happens afterwards, on the noised value, where it is post-processing.

Server level (user-level DP, DP-FedAvg):

  Delta = (sum_k clip_S(Delta_k) + N(0, (sigma S)^2 I)) / n

References:
  McMahan et al. 2018, "Learning Differentially Private Recurrent Language
    Models", ICLR (DP-FedAvg).
"""
from typing import Any

import jax
import jax.numpy as jnp

from afl.aggregators import clipping

PyTree = Any

# --------------------------------------------------------------------------
# Gaussian noise, shared with DP-SGD.
# --------------------------------------------------------------------------


def add_gaussian_noise(tree: PyTree, key: jax.Array, stddev) -> PyTree:
  """Adds independent N(0, stddev^2) noise to every coordinate of every leaf.

  Each leaf gets its own key from `jax.random.split`, so leaves of equal shape
  receive independent noise. With `stddev == 0` the tree comes back unchanged
  bit for bit (x + 0.0 == x).

  >>> import jax, jax.numpy as jnp
  >>> out = add_gaussian_noise({"a": jnp.zeros(3)}, jax.random.key(0), 0.0)
  >>> out["a"].tolist()
  [0.0, 0.0, 0.0]
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  noised = [
      x + (jnp.asarray(stddev, jnp.float32)
           * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
      for x, k in zip(leaves, keys)
  ]
  return jax.tree_util.tree_unflatten(treedef, noised)


# --------------------------------------------------------------------------
# Server (user-level) DP: DP-FedAvg.
# --------------------------------------------------------------------------


def server_noised_mean(
    flat: jax.Array,
    valid: jax.Array,
    clip_norm,
    noise_multiplier,
    key: jax.Array,
    expected_count=None,
    sum_fn=None,
) -> jax.Array:
  """DP-FedAvg aggregate: (sum of clipped updates + N(0, (sigma S)^2)) / n.

  Each valid update is clipped to S (`clipping.clip_by_norm`; invalid rows
  count as zeros), so adding or removing one client changes
  the sum by at most S in L2; Gaussian noise of stddev sigma * S per
  coordinate is added to the *sum*, and only then is it divided.

  The divisor n is, by default, the number of valid updates. That count is
  data-dependent under add/remove-one neighbouring, but in afl's buffered
  and synchronous modes it is the (public) buffer size or cohort size, fixed
  before any data is seen, so dividing by it is post-processing. When the
  count can vary with participation, pass `expected_count` (e.g. q * N, the
  expected number of participants): McMahan et al.'s fixed-denominator
  estimator, which is unbiased and exactly post-processing.

  Args:
    flat: [K, D] client updates.
    valid: [K] bool; rows with NaN/inf are also treated as invalid.
    clip_norm: User-level clip norm S.
    noise_multiplier: sigma.
    key: PRNG key for the noise.
    expected_count: Optional fixed divisor (Python number or scalar array).
    sum_fn: Optional `(clipped [K, D], valid [K]) -> [D]` computing the sum
      (secure aggregation: `secagg.secure_sum(...)[0]`); default a plain sum.

  Returns:
    [D] noised mean update.

  References:
    McMahan et al. 2018, "Learning Differentially Private Recurrent Language
      Models", ICLR, Alg. 1 (DP-FedAvg).

  >>> import jax, jax.numpy as jnp
  >>> out = server_noised_mean(jnp.array([[3., 4.], [1., 0.]]),
  ...     jnp.array([True, True]), 1.0, 0.0, jax.random.key(0))
  >>> [round(v, 4) for v in out.tolist()]
  [0.8, 0.4]
  """
  ok = jnp.asarray(valid, bool) & jnp.all(jnp.isfinite(flat), axis=1)
  clipped = clipping.clip_by_norm(jnp.where(ok[:, None], flat, 0.0), ok,
                                  clip_norm)
  total = (jnp.sum(clipped, axis=0) if sum_fn is None
           else sum_fn(clipped, ok))
  stddev = (jnp.asarray(noise_multiplier, jnp.float32)
            * jnp.asarray(clip_norm, jnp.float32))
  noised = add_gaussian_noise(total, key, stddev)
  if expected_count is None:
    denom = jnp.maximum(jnp.sum(ok.astype(jnp.int32)), 1)
  else:
    denom = expected_count
  return noised / jnp.asarray(denom, noised.dtype)
