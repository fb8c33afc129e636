"""Client momentum: a pre-aggregation stage keeping, per client, the
exponential moving average of its successive updates on the server.

  m_i <- delta_i                          at client i's first arrival
  m_i <- beta m_i + (1 - beta) delta_i    at each later arrival

and the row of client i is replaced by m_i. Worker momentum is what lets
robust aggregators tell an attacker's consistent bias from an honest
client's noise (Karimireddy, He, Jaggi, "Learning from History for
Byzantine Robust Optimization", ICML 2021); here it is computed by the
server over the client's updates in arrival order, which makes it exact
under lazy batching (arrival order does not depend on how tasks were
grouped into cohorts). Starting at the first update, not at zero, leaves a
client's first update unchanged instead of shrunk by 1 - beta.

The state is a [num_clients, D] array with a [num_clients] flag of the
clients that took part (rows of the others are zeros and never read); it
is part of the server state, so checkpoints keep it. A client must be one
row per aggregation (`server.merge_client_rows`), and the stage needs a
buffered mode: a fedasync window re-aggregates each arrival several times.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from afl import validate as v
from afl.server import stages


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientMomentumParams:
  beta: float = 0.9

  def validate(self, p):
    v.in_range(f"{p}.beta", self.beta, 0, 1)
    if self.beta == 1:
      v.fail(f"{p}.beta", "must be < 1 (updates would never enter)")

  def check(self, cfg, p):
    if not cfg.server.merge_client_rows:
      v.fail("server.merge_client_rows", "must be True with stage "
             "client_momentum (one momentum update per client and "
             "aggregation)")
    if cfg.aggregator.stages[0] != "client_momentum":
      v.fail("aggregator.stages", "client_momentum must be the first stage "
             "(later stages such as bucketing mix clients' rows)")
    if not cfg.server.entry.prop("buffered"):
      v.fail("aggregator.stages", "client_momentum needs a buffered "
             f"server.mode, not {cfg.server.mode!r} (a window aggregates "
             "each arrival several times)")


@stages.register("client_momentum", params=ClientMomentumParams,
                 per_client=True)
def client_momentum(*, beta: float, key, num_clients: int) -> stages.Stage:
  """The stage; `num_clients` sizes its state (`key` unused)."""
  del key

  def init(example_rows):
    d = example_rows.flat.shape[1]
    return (jnp.zeros((num_clients, d), example_rows.flat.dtype),
            jnp.zeros((num_clients,), bool))

  def apply(rows, state):
    m, seen = state
    ok = rows.mask & (rows.ids >= 0) & (rows.ids < num_clients)
    at = jnp.where(ok, rows.ids, 0)
    old = m[at]
    new = jnp.where(seen[at][:, None],
                    beta * old + (1 - beta) * rows.flat, rows.flat)
    new = jnp.where(ok[:, None], new, rows.flat)
    put = jnp.where(ok, rows.ids, num_clients)  # out of range: dropped
    m = m.at[put].set(new, mode="drop")
    seen = seen.at[put].set(True, mode="drop")
    return rows.replace(flat=new), (m, seen)
  return stages.Stage(init, apply)
