"""Nearest-neighbour mixing (NNM): a pre-aggregation stage.

Each valid row is replaced by the mean of its n - f nearest valid rows in
Euclidean distance, itself included (n valid rows, f = `num_byzantine`),
all computed from the rows as they arrive (every row mixes the original
rows, not rows already mixed). The mean is unweighted, as in the paper;
weights, ids and the other fields stay, and invalid rows are unchanged.
Mixing pulls every honest row towards the honest majority, so robust
aggregators after it (Krum, median, trimmed mean, centered clipping, ...)
reach the optimal error under heterogeneity.

n is a traced count, so the number of neighbours is clamped to
max(n - f, 1) when n <= f (a row then keeps itself). Distances are computed
on the rows divided by their largest absolute entry, which leaves the
neighbours unchanged but keeps squared distances finite for huge rows; ties
go to the lower row index.

References:
  Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
  Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
  AISTATS 2023.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from afl import validate as v
from afl.aggregators import krum
from afl.server import stages


@dataclasses.dataclass(frozen=True, kw_only=True)
class NNMParams:
  num_byzantine: int = 1  # f: each row mixes its n - f nearest rows

  def validate(self, p):
    v.in_range(f"{p}.num_byzantine", self.num_byzantine, 0)


def mix_rows(flat: jax.Array, valid: jax.Array,
             num_byzantine: int) -> jax.Array:
  """[K, D] -> [K, D]: each valid row the mean of its nearest valid rows.

  Args:
    flat: [K, D] rows (finite where valid).
    valid: [K] bool; n = its count, traced (0 allowed).
    num_byzantine: f >= 0 (static); max(n - f, 1) rows are mixed.

  Returns:
    [K, D]: valid rows mixed, invalid rows as given.
  """
  k_rows = flat.shape[0]
  x = jnp.where(valid[:, None], flat, 0.0)
  top = jnp.max(jnp.abs(x))
  d2 = krum.pairwise_sq_dists(x / jnp.where(top > 0, top, 1.0), valid)
  d2 = jnp.where(valid[None, :], d2, jnp.inf)
  d2 = jnp.where(jnp.eye(k_rows, dtype=bool), -1.0, d2)  # itself first
  n = jnp.sum(valid.astype(jnp.int32))
  m = jnp.maximum(n - num_byzantine, 1)
  # A valid row's m <= n nearest are valid (invalid columns are +inf).
  near = jnp.argsort(jnp.argsort(d2, axis=1), axis=1) < m
  mixed = jnp.dot(near.astype(x.dtype) / m.astype(x.dtype), x,
                  precision=jax.lax.Precision.HIGHEST)
  return jnp.where(valid[:, None], mixed, flat)


@stages.register("nnm", params=NNMParams)
def nnm(num_byzantine: int, key: jax.Array) -> stages.Stage:
  """Nearest-neighbour mixing of the valid rows before the aggregator.

  Args:
    num_byzantine: f, the assumed number of Byzantine rows.
    key: unused (the stage is deterministic).

  Returns:
    A stateless `Stage`.

  References:
    Allouah et al., "Fixing by Mixing: A Recipe for Optimal Byzantine ML
    under Heterogeneity", AISTATS 2023, Algorithm 1.
  """
  del key

  def apply(rows, state):
    return rows.replace(flat=mix_rows(rows.flat, rows.mask,
                                      num_byzantine)), state
  return stages.Stage(lambda example_rows: (), apply)
