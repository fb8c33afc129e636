"""Bucketing: a pre-aggregation stage averaging random groups of rows.

The n valid rows are put in a random order and split into ceil(n / s)
consecutive buckets of s = `bucket_size` rows (the last one smaller when s
does not divide n); each bucket becomes one row, handed to the aggregator.
Averaging s random rows shrinks the spread between honest rows (their
heterogeneity) by about sqrt(s), while each Byzantine row spoils at most one
bucket, so a robust aggregator after it tolerates heterogeneous clients.

A bucket's row is the weighted mean of its rows (weights `rows.weight`;
with equal weights the plain mean of the paper), its weight the sum of
theirs, so a weighted mean aggregator gives the same result with or without
bucketing. A bucket whose weights are all zero takes the plain mean. The
rows are already staleness-scaled (`stages.staleness_scaling` runs in the
clients chain), so a bucket's `scale` is 1. A bucket is malicious if any of
its rows is. Output row i has id `PAD_ID + K + i`: distinct, never a
client's id nor an input padding row's.

References:
  Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
  Datasets via Bucketing", ICLR 2022.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from afl import validate as v
from afl.server import stages
from afl.server.rows import PAD_ID


@dataclasses.dataclass(frozen=True, kw_only=True)
class BucketingParams:
  bucket_size: int = 2  # s: rows averaged per bucket

  def validate(self, p):
    v.in_range(f"{p}.bucket_size", self.bucket_size, 1)


def bucket_order(key: jax.Array, valid: jax.Array) -> jax.Array:
  """[K] row indices: the valid rows first, in the order of
  `jax.random.permutation(key, K)`, then the invalid ones.

  Args:
    key: PRNG key of this aggregation.
    valid: [K] bool.

  Returns:
    [K] int32; entries p < n (n valid rows) are the valid rows, row
    `order[p]` going to bucket p // s.
  """
  perm = jax.random.permutation(key, valid.shape[0])
  return perm[jnp.argsort(~valid[perm], stable=True)].astype(jnp.int32)


def bucket_rows(rows, key: jax.Array, bucket_size: int):
  """`rows` -> one row per bucket (first, mask True), the rest masked out.

  Args:
    rows: `Rows` with K rows, n of them valid (n traced, 0 allowed).
    key: PRNG key giving the order (`bucket_order`).
    bucket_size: s >= 1 (static).

  Returns:
    `Rows` of the same shape: rows b < ceil(n / s) the buckets, the others
    zero with weight 0 and mask False.
  """
  k = rows.mask.shape[0]
  valid = rows.mask
  order = bucket_order(key, valid)
  rank = jnp.zeros(k, jnp.int32).at[order].set(jnp.arange(k, dtype=jnp.int32))
  bucket = jnp.where(valid, rank // bucket_size, 0)
  n = jnp.sum(valid.astype(jnp.int32))
  is_bucket = jnp.arange(k) < (n + bucket_size - 1) // bucket_size
  w = jnp.where(valid, rows.weight, 0.0)
  totals = jax.ops.segment_sum(w, bucket, k)
  total = totals[bucket]
  count = jax.ops.segment_sum(valid.astype(w.dtype), bucket, k)[bucket]
  # Convex weights within a bucket: the sum of share * row never overflows.
  share = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0),
                    1.0 / jnp.maximum(count, 1.0))
  share = jnp.where(valid, share, 0.0).astype(rows.flat.dtype)
  x = jnp.where(valid[:, None], rows.flat, 0.0)
  flat = jax.ops.segment_sum(share[:, None] * x, bucket, k)
  bad = jax.ops.segment_sum((valid & rows.malicious).astype(jnp.int32),
                            bucket, k)
  return rows.replace(
      flat=flat, weight=totals,
      scale=is_bucket.astype(rows.scale.dtype), mask=is_bucket,
      ids=PAD_ID + k + jnp.arange(k, dtype=rows.ids.dtype),
      malicious=is_bucket & (bad > 0))


@stages.register("bucketing", params=BucketingParams)
def bucketing(bucket_size: int, key: jax.Array) -> stages.Stage:
  """Bucketing of the valid rows before the aggregator.

  Args:
    bucket_size: s, rows per bucket.
    key: PRNG key; the state, split once per aggregation (the subkey gives
      that aggregation's order).

  Returns:
    A `Stage` whose state is the PRNG key (`init` returns a copy of `key`:
    the server state is donated).

  References:
    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022, Algorithm 1.
  """
  def apply(rows, key):
    key, sub = jax.random.split(key)
    return bucket_rows(rows, sub, bucket_size), key
  return stages.Stage(lambda example_rows: jnp.array(key), apply)
