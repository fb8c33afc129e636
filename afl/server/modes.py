"""Server modes: how arrivals become versions, one object per mode.

- `fedasync` (Xie et al. 2019): every arrival makes a version,
  x <- (1 - a) x + a x_c with a = mixing_alpha * s(tau) and x_c the
  client's trained model. With a non-linear aggregator, trust, an update
  attack, clipping or pre-aggregation stages, the last `aggregator.window`
  arrivals (each scaled by its own staleness) are aggregated on every
  arrival and x <- x + a * aggregate (the delta form); only the newest row
  updates trust.
- `fedbuff` (Nguyen et al. 2022): K = buffer_size arrivals are aggregated
  and applied as a server optax step on the negated aggregate.
- `sync` (FedAvg, McMahan et al. 2017): rounds of `concurrency` clients
  from the same version; the survivors' deltas (no staleness) are
  aggregated when the round's last client arrives or drops out.

A mode receives arrivals (`on_arrival`, True when a version was made) and
decides what the loop does after each event (`end_event`); registry
properties give the rows per aggregation and the updates per version.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from afl import client as client_lib
from afl import registry as registry_lib
from afl import state as state_lib
from afl import validate as v
from afl.server.rows import Arrival
from afl.server.staleness import staleness_weight

# Factory: cls(**params, server=Server, server_cfg=ServerConfig).
# Properties: `dispatch` (the scheduler's pattern, afl.scheduler:
# "replace" when every event is followed by one dispatch, "rounds" when a
# round of `concurrency` starts once none is in flight), `buffered`
# (several updates per aggregation: secure aggregation and server DP are
# possible), `windowed` (one arrival at a time; robust rules aggregate a
# window of the last ones), `rows(cfg)` (updates per aggregation),
# `per_version(cfg)` (client updates per version).
REGISTRY = registry_lib.Registry("server mode")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAsyncParams:
  mixing_alpha: float = 0.6

  def validate(self, p):
    v.in_range(f"{p}.mixing_alpha", self.mixing_alpha, 0, 1, lo_open=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedBuffParams:
  buffer_size: int = 10  # K arrivals per version

  def validate(self, p):
    v.in_range(f"{p}.buffer_size", self.buffer_size, 1)


class _Buffered:
  """A buffer of arrivals (fedbuff, sync), checkpointed as arrays."""

  def __init__(self, server, server_cfg):
    self.server = server
    self.cfg = server_cfg
    self.buffer: list[Arrival] = []
    self.last_client_ids: list[int] = []  # of the last aggregation

  def flush(self, stalenesses=None) -> bool:
    if not self.buffer:
      return False
    self.server.aggregate(self.buffer, stalenesses)
    self.last_client_ids = [a.client_id for a in self.buffer]
    self.buffer = []
    return True

  def start(self, loop):
    for _ in range(loop.cfg.concurrency):
      loop.dispatch()

  def state_dict(self):
    arrays = state_lib.flatten_rows(client_lib.host_rows(
        [a.delta for a in self.buffer])) if self.buffer else {}
    host = [[int(a.staleness), int(a.client_id), int(a.num_examples),
             bool(a.malicious)] for a in self.buffer]
    return arrays, host

  def load_state_dict(self, arrays, host):
    rows = state_lib.unflatten_rows(self.server.params, arrays, len(host))
    self.buffer = [Arrival(d, *meta) for d, meta in zip(rows, host)]


@REGISTRY.register("fedbuff", params=FedBuffParams, buffered=True,
                   dispatch="replace",
                   rows=lambda cfg: cfg.server.buffer_size,
                   per_version=lambda cfg: cfg.server.buffer_size)
class FedBuff(_Buffered):

  def __init__(self, buffer_size, server, server_cfg):
    super().__init__(server, server_cfg)
    self.buffer_size = buffer_size

  def on_arrival(self, arrival: Arrival, start_params) -> bool:
    del start_params
    self.buffer.append(arrival)
    return len(self.buffer) == self.buffer_size and self.flush()

  def end_event(self, loop, made: bool) -> bool:
    if made:
      loop.new_version()
    loop.dispatch()
    return made


@REGISTRY.register("sync", buffered=True, dispatch="rounds",
                   rows=lambda cfg: cfg.concurrency,
                   per_version=lambda cfg: cfg.concurrency)
class Sync(_Buffered):

  def on_arrival(self, arrival: Arrival, start_params) -> bool:
    del start_params
    self.buffer.append(arrival)
    return False

  def end_event(self, loop, made: bool) -> bool:
    if loop.scheduler.in_flight == 0:  # the round is complete
      made = self.flush(stalenesses=np.zeros(len(self.buffer)))
      if made:
        loop.new_version()
      self.start(loop)
    return made


@REGISTRY.register("fedasync", params=FedAsyncParams, windowed=True,
                   dispatch="replace",
                   rows=lambda cfg: cfg.aggregator.window,
                   per_version=lambda cfg: 1)
class FedAsync:

  def __init__(self, mixing_alpha, server, server_cfg):
    self.alpha = mixing_alpha
    self.server = server
    self.cfg = server_cfg
    self.last_client_ids: list[int] = []  # of the last new version

  def start(self, loop):
    for _ in range(loop.cfg.concurrency):
      loop.dispatch()

  def on_arrival(self, arrival: Arrival, start_params) -> bool:
    a = self.alpha * float(staleness_weight(
        arrival.staleness, self.cfg.staleness_fn, self.cfg.staleness_a,
        self.cfg.staleness_b))
    self.last_client_ids = [arrival.client_id]
    if self.server.spec.window:
      self.server.window_arrival(arrival, a)
    else:
      self.server.mix(start_params, arrival.delta, a)
    return True

  end_event = FedBuff.end_event

  def state_dict(self):
    return {}, None

  def load_state_dict(self, arrays, host):
    del arrays, host
