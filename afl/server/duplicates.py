"""Duplicate merging: a pre-aggregation stage counting near-copies once.

Valid rows whose directions agree to cosine > `tolerance` (and rows that
are exactly zero, with each other) are near-copies; the groups they form
(connected components of that relation) each become one row
(`stages.merge_groups`): the weighted mean of the group's rows, with the
mean of their weights. A group thus weighs what one of its rows would.

Honest clients training on different data do not send the same direction
(on the demo the largest cosine between two honest updates of a buffer was
0.79 with Dirichlet clients and 0.92 with IID ones, in the first version,
when all start from the same model; honest near-copies would be merged
too), while colluding attackers that share one crafted update
do: ALIE, IPM, min-max and min-sum send one vector from every attacker of
a buffer, and mimic sends copies of one honest row (FoolsGold's
observation, Fung et al. 2020, that Sybils look alike). Merging makes k
such attackers count as one row (and a mimicked client with its copies as
one), for any aggregator after it, Krum included. An attacker that adds
noise beyond the tolerance to each copy is not merged; trust's duplicate
term (`afl.aggregators.trust`) uses the same cosine.

The merged row keeps the id of the group's first row and is malicious if
any of its rows is. Not linear, so secure aggregation cannot follow it.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from afl import validate as v
from afl.aggregators import trust_scores
from afl.server import stages


@dataclasses.dataclass(frozen=True, kw_only=True)
class DedupParams:
  tolerance: float = 0.99  # cosine above which two rows are near-copies

  def validate(self, p):
    v.in_range(f"{p}.tolerance", self.tolerance, -1, 1)


def copy_groups(flat: jax.Array, valid: jax.Array,
                tolerance: float) -> jax.Array:
  """[K, D], [K] -> [K] int32: each valid row's group representative, the
  lowest index of its connected component under "cosine > tolerance, or
  both rows zero"; invalid rows map to themselves.

  Labels start at the row index and take their neighbours' minimum until
  nothing changes (at most K - 1 rounds: a component's diameter).
  """
  k = flat.shape[0]
  cos, pair = trust_scores.pairwise_cosines(flat, valid)
  zero = valid & jnp.all(flat == 0, axis=1)
  near = (pair & (cos > tolerance)) | (zero[:, None] & zero[None, :])
  near = near | jnp.eye(k, dtype=bool)
  near = near & valid[:, None] & valid[None, :]
  start = jnp.arange(k, dtype=jnp.int32)

  def spread(carry):
    label, _ = carry
    new = jnp.min(jnp.where(near, label[None, :], k), axis=1)
    new = jnp.where(valid, new, start).astype(jnp.int32)
    return new, jnp.any(new != label)

  label, _ = jax.lax.while_loop(lambda c: c[1], spread, (start, True))
  return label


@stages.register("dedup", params=DedupParams)
def dedup(tolerance: float, key: jax.Array) -> stages.Stage:
  """Merges each group of near-copies into one row of one row's weight.

  Args:
    tolerance: cosine above which two rows are near-copies.
    key: unused (the stage is deterministic).

  Returns:
    A stateless `Stage`.

  References:
    Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in
    Sybil Settings", RAID 2020 (FoolsGold).
  """
  del key

  def apply(rows, state):
    rep = copy_groups(rows.flat, rows.mask, tolerance)
    return stages.merge_groups(rows, rep, total_weight=False), state
  return stages.Stage(lambda example_rows: (), apply)
