"""The server: one `ServerState` pytree and jitted module-level steps.

`ServerSpec` is the static part (stages, optimizer, trust config); it is
hashable and passed to the jitted functions as a static argument, so a
server step compiles once per buffer shape. The state is donated, except
the parameters, which the simulation keeps as a version clients download.

An aggregation (`aggregate_step`):

  rows.weight *= trust weights (quarantined clients count less)
  rows = clients chain (attack, validity, staleness, merge, norm clip)
  rows = aggregation chain (pre-aggregation stages, aggregator | privacy)
  trust <- each row of the clients chain scored against the median of
           the others, or against the server's root update
           (afl/aggregators/trust.py, afl/server/root.py)
  params <- optax step on -aggregate (fedbuff, sync), or
            params + a * aggregate (fedasync's window, `window_step`)

Plain FedAsync (`mix_step`) needs none of it: x <- x + a (x_c - x).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from afl.aggregators import trust as trust_lib
from afl.server import stages as stages_lib
from afl.server.rows import PAD_ID, Rows


@flax.struct.dataclass
class ServerState:
  params: Any
  opt_state: Any
  stages: tuple  # (clients chain state, aggregation chain state)
  trust: Any  # trust.TrustState, or () without trust
  window: Any  # fedasync's robust window (Rows), or ()
  step: jax.Array  # int32: aggregations so far


@dataclasses.dataclass(frozen=True, eq=False)
class ServerSpec:
  """Static server configuration (hashed by identity)."""
  clients: stages_lib.Stage
  aggregation: stages_lib.Stage
  optimizer: optax.GradientTransformation
  trust: trust_lib.TrustConfig | None = None
  window: int = 0  # fedasync robust window rows; 0 = none
  non_finite_at: int = 0  # index of the validity stage in `clients`
  private_at: int | None = None  # the privacy stage in `aggregation`, or None
  merged: bool = False  # the clients chain merges a client's rows


def ravel(tree):
  return jax.flatten_util.ravel_pytree(tree)[0]


def init_state(spec: ServerSpec, params, capacity: int,
               num_clients: int) -> ServerState:
  """The initial state; `capacity` fixes the example rows' shape."""
  flat = ravel(params)
  k = spec.window or capacity
  example = empty_rows(k, flat)
  return ServerState(
      params=params, opt_state=spec.optimizer.init(params),
      stages=(spec.clients.init(example), spec.aggregation.init(example)),
      trust=(trust_lib.trust_init(num_clients) if spec.trust is not None
             else ()),
      window=example if spec.window else (),
      step=jnp.zeros((), jnp.int32))


def empty_rows(k: int, flat) -> Rows:
  return Rows(flat=jnp.zeros((k, flat.size), flat.dtype),
              weight=jnp.zeros(k, jnp.float32),
              scale=jnp.zeros(k, jnp.float32), mask=jnp.zeros(k, bool),
              ids=PAD_ID + jnp.arange(k, dtype=jnp.int32),
              malicious=jnp.zeros(k, bool),
              aggregate=jnp.zeros(flat.size, flat.dtype))


def _aggregate(spec: ServerSpec, state: ServerState, rows: Rows,
               trust_rows=None, reference=None):
  """Rows -> (aggregate [D], new stage states, new trust, info);
  `reference`: trust's [D] root update, or None."""
  if spec.trust is not None:
    rows = rows.replace(weight=rows.weight * trust_lib.trust_weights(
        state.trust, rows.ids, spec.trust))
  client_state, agg_state = state.stages
  rows, client_state = spec.clients.apply(rows, client_state)
  scored = rows
  rows, agg_state = spec.aggregation.apply(rows, agg_state)
  info = {}
  trust = state.trust
  if spec.trust is not None:
    # Every valid row is a reference for the others; `trust_rows` (the
    # newest row of a fedasync window) picks whose scores count.
    trust, tinfo = trust_lib.trust_update(trust, scored.ids, scored.flat,
                                          scored.mask, spec.trust,
                                          scored=trust_rows,
                                          reference=reference)
    info = dict(num_quarantined=tinfo.num_quarantined, entered=tinfo.entered,
                exited=tinfo.exited)
  return rows.aggregate, (client_state, agg_state), trust, info


def _unravel(params):
  return jax.flatten_util.ravel_pytree(params)[1]


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2,))
def aggregate_step(spec: ServerSpec, params, rest: ServerState, stacked,
                   rows: Rows, reference=None):
  """A buffer or round: the stages, then an optax step on -aggregate.

  `rest` is the state without params (donated); `stacked` the [K, ...]
  deltas pytree that becomes `rows.flat`; `reference` trust's root update.
  """
  state = rest.replace(params=params)
  rows = rows.replace(flat=jax.vmap(ravel)(stacked))
  agg, stage_states, trust, info = _aggregate(spec, state, rows,
                                              reference=reference)
  grads = jax.tree_util.tree_map(jnp.negative, _unravel(params)(agg))
  updates, opt_state = spec.optimizer.update(grads, state.opt_state, params)
  new = state.replace(params=optax.apply_updates(params, updates),
                      opt_state=opt_state, stages=stage_states, trust=trust,
                      step=state.step + 1)
  return new, info


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2,))
def window_step(spec: ServerSpec, params, rest: ServerState, delta, row: Rows,
                a, reference=None):
  """Robust FedAsync: the arrival (`delta`, metadata `row` with K=1) joins
  the window (oldest row out), the window is aggregated and
  x <- x + a * aggregate. Only the newest row updates trust."""
  state = rest.replace(params=params)
  row = row.replace(flat=ravel(delta)[None, :])
  w = state.window
  push = lambda old, new: jnp.concatenate([old[1:], new])
  win = w.replace(flat=push(w.flat, row.flat), weight=push(w.weight,
                                                          row.weight),
                  scale=push(w.scale, row.scale), mask=push(w.mask, row.mask),
                  ids=push(w.ids, row.ids),
                  malicious=push(w.malicious, row.malicious))
  # Trust scores the newest arrival's row: after a merge, the row of its
  # client (wherever the merge put it); else the last row.
  newest = (win.ids == win.ids[-1] if spec.merged
            else jnp.arange(spec.window) == spec.window - 1)
  agg, stage_states, trust, info = _aggregate(spec, state, win,
                                              trust_rows=newest,
                                              reference=reference)
  new_params = jax.tree_util.tree_map(lambda x, d: x + a * d, params,
                                      _unravel(params)(agg))
  new = state.replace(params=new_params, stages=stage_states, trust=trust,
                      window=win, step=state.step + 1)
  return new, info


@jax.jit
def mix_step(params, start, delta, a):
  """Plain FedAsync: x <- x + a (start + delta - x)."""
  return jax.tree_util.tree_map(
      lambda x, s, d: x + a * (s + d - x), params, start, delta)
