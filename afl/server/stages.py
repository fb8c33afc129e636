"""Server stages: pure `(init, apply)` pairs chained over `Rows`.

In the style of optax's `GradientTransformation`, a stage is

  state = stage.init(example_rows)          # a PRNG key inside if needed
  rows, state = stage.apply(rows, state)    # pure, jittable

and `chain(*stages)` composes them, its state the tuple of theirs. The
server's default chain (docs/architecture.md) is built from the factories
below in this order: update attack -> validity -> staleness scaling ->
per-client merge -> norm clipping -> pre-aggregation stages (registered in
`REGISTRY`, named by `aggregator.stages`) -> aggregation (the configured
aggregator, or the privacy wrapper of `afl.server.private`).

Rows never change shape: a stage that removes a row clears its `mask`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp

from afl import registry as registry_lib
from afl.aggregators import base as agg_base
from afl.aggregators import clipping


class Stage(NamedTuple):
  init: Callable[[Any], Any]
  apply: Callable[[Any, Any], tuple[Any, Any]]


# Pre-aggregation stages, by config name. A factory takes its params' fields
# as keyword arguments and `key` (a PRNG key for randomized stages) and
# returns a `Stage`. Properties: `linear` (default False) if the stage is
# linear in the rows, so secure aggregation and server DP may follow it;
# `per_client` if the factory also takes `num_clients` (per-client state).
REGISTRY = registry_lib.Registry("stage")
register = REGISTRY.register


def chain(*stages: Stage) -> Stage:
  """Applies `stages` in order; the state is the tuple of their states."""
  def init(example_rows):
    return tuple(s.init(example_rows) for s in stages)

  def apply(rows, state):
    new = []
    for s, st in zip(stages, state):
      rows, st = s.apply(rows, st)
      new.append(st)
    return rows, tuple(new)
  return Stage(init, apply)


def _stateless(fn) -> Stage:
  return Stage(lambda example_rows: (), lambda rows, state: (fn(rows), state))


def update_attack(attack_fn, key) -> Stage:
  """Malicious rows replaced by `attack_fn(flat, malicious, valid, key)`
  (an `afl.attacks` update attack), a fresh key per aggregation."""
  def apply(rows, key):
    key, sub = jax.random.split(key)
    flat = attack_fn(rows.flat, rows.malicious & rows.mask, rows.mask, sub)
    return rows.replace(flat=flat), key
  # A copy: the server state is donated, and a second init must still work.
  return Stage(lambda example_rows: jnp.array(key), apply)


def validity() -> Stage:
  """Rows holding a NaN or inf leave the mask and are zeroed; the state
  counts them (`non_finite`, over the whole run)."""
  def apply(rows, count):
    finite = jnp.all(jnp.isfinite(rows.flat), axis=1)
    valid = rows.mask & finite
    flat = jnp.where(valid[:, None], rows.flat, 0.0)
    count = count + jnp.sum(rows.mask & ~finite).astype(jnp.int32)
    return rows.replace(flat=flat, mask=valid), count
  return Stage(lambda example_rows: jnp.zeros((), jnp.int32), apply)


def staleness_scaling() -> Stage:
  """Each row times its staleness weight s(tau) (after validity: 0 * inf
  would hide a bad row)."""
  return _stateless(lambda rows: rows.replace(
      flat=rows.flat * rows.scale[:, None]))


def merge_groups(rows, rep: jax.Array, total_weight: bool = True):
  """Rows of each group become one row, at the group's representative.

  `rep[i]` is the representative row of valid row i's group, itself a
  member with `rep[rep[i]] == rep[i]`. The merged row is the weighted mean
  of the group's rows and its staleness weight their weighted mean; its
  weight is the sum of theirs (`total_weight`) or their mean; it is
  malicious if any of them is. The other rows leave the mask and are
  zeroed; a group of one row keeps it bit for bit.
  """
  k = rows.ids.shape[0]
  ok = rows.mask
  rep = jnp.where(ok, rep, jnp.arange(k))
  first = ok & (rep == jnp.arange(k))
  count = jax.ops.segment_sum(ok.astype(jnp.int32), rep, k)
  w = jnp.where(ok, rows.weight, 0.0)
  total_w = jax.ops.segment_sum(w, rep, k)
  safe_w = jnp.where(total_w > 0, total_w, 1.0)
  merged = jax.ops.segment_sum(w[:, None] * rows.flat, rep, k) / (
      safe_w[:, None])
  scale = jax.ops.segment_sum(w * rows.scale, rep, k) / safe_w
  weight = (total_w if total_weight
            else total_w / jnp.maximum(count, 1).astype(total_w.dtype))
  bad = jax.ops.segment_sum((ok & rows.malicious).astype(jnp.int32), rep, k)
  dup = count > 1
  return rows.replace(
      flat=jnp.where(first[:, None],
                     jnp.where(dup[:, None], merged, rows.flat), 0.0),
      weight=jnp.where(dup, weight, rows.weight),
      scale=jnp.where(dup, scale, rows.scale),
      malicious=jnp.where(dup, bad > 0, rows.malicious),
      mask=first)


def merge_client_rows() -> Stage:
  """Rows of the same client become one row, at its first position
  (`merge_groups`, weight the sum of the client's).

  A client's weight-times-row total is thus unchanged (a weighted mean of
  the rows gives the same aggregate), while every robust rule, trust, DP
  clipping and secure aggregation sees each client once. A client with one
  row keeps it bit for bit; merged-away rows are zeroed.
  """
  def apply(rows):
    ok = rows.mask
    same = (rows.ids[:, None] == rows.ids[None, :]) & ok[:, None] & ok[None, :]
    return merge_groups(rows, jnp.argmax(same, axis=1))
  return _stateless(apply)


def norm_clip(max_norm: float) -> Stage:
  """Every valid row clipped to L2 norm `max_norm`."""
  return _stateless(lambda rows: rows.replace(
      flat=clipping.clip_by_norm(rows.flat, rows.mask, max_norm)))


def aggregate(aggregator: agg_base.Aggregator, unravel, mesh=None) -> Stage:
  """Writes `rows.aggregate` with `aggregator` over the valid rows.

  Coordinate-wise rules run their kernel on the flat rows (sharded over
  `mesh`'s "clients" axis along D when given); others see the updates as
  pytrees (`unravel` maps one flat row back).
  """
  kernel = aggregator.coordinatewise

  def init(example_rows):
    return aggregator.init(jax.vmap(unravel)(example_rows.flat))

  def apply(rows, state):
    if kernel is not None and mesh is not None:
      agg = agg_base.reshard_coordinatewise(kernel, rows.flat, rows.weight,
                                            rows.mask, mesh, "clients")
    elif kernel is not None:
      agg = kernel(rows.flat, rows.weight, rows.mask)
    else:
      tree, state = aggregator.apply(jax.vmap(unravel)(rows.flat),
                                     rows.weight, rows.mask, state)
      agg = jax.flatten_util.ravel_pytree(tree)[0]
    return rows.replace(aggregate=agg.astype(rows.flat.dtype)), state
  return Stage(init, apply)
