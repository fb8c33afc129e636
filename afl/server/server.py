"""`Server`: holds the `ServerState` and feeds arrivals to the jitted steps.

The loop's server modes (`afl.server.modes`) call `aggregate` with a buffer
or round, `window_arrival` or `mix` with one fedasync arrival. The state
goes to checkpoints through `state()`/`load_state()`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from afl import client as client_lib
from afl import state as state_lib
from afl.server import rows as rows_lib
from afl.server import step as step_lib


class Server:

  def __init__(self, spec: step_lib.ServerSpec, cfg, params, capacity: int,
               num_clients: int, reference=None):
    """`cfg`: the ServerConfig (staleness function, example weighting);
    `capacity`: rows per buffer/round; `reference`: trust's root update,
    (params, aggregation index) -> [D] (`afl.server.root`), or None."""
    self.spec = spec
    self.reference = reference
    self.cfg = cfg
    self.capacity = capacity
    self.state = step_lib.init_state(spec, params, capacity, num_clients)
    self.last_info = None

  @property
  def params(self):
    return self.state.params

  @property
  def trust(self):
    """The `TrustState`, or None without trust."""
    return self.state.trust if self.spec.trust is not None else None

  def non_finite(self) -> int:
    """Rows dropped as non-finite so far."""
    return int(self.state.stages[0][self.spec.non_finite_at])

  def secagg_clipped(self) -> int:
    """Coordinates secure aggregation clipped to its fixed-point range so
    far (0 without the privacy stage)."""
    if self.spec.private_at is None:
      return 0
    return int(self.state.stages[1][self.spec.private_at][1])

  def _run(self, fn, *args):
    params = self.state.params
    # The root update from the model the aggregation is applied to.
    ref = (self.reference(params, int(self.state.step))
           if self.reference is not None else None)
    self.state, self.last_info = fn(self.spec, params,
                                    self.state.replace(params=()), *args,
                                    reference=ref)

  def aggregate(self, arrivals: list, stalenesses=None):
    """One buffer/round of `rows.Arrival`s: the stages and an optax step."""
    self._run(step_lib.aggregate_step,
              rows_lib.stack_deltas(arrivals, self.capacity),
              rows_lib.host_rows(arrivals, self.capacity, self.cfg,
                                 stalenesses))

  def window_arrival(self, arrival, a: float):
    """Robust FedAsync: `arrival` joins the window, x += a * aggregate."""
    self._run(step_lib.window_step, client_lib.as_tree(arrival.delta),
              rows_lib.host_rows([arrival], 1, self.cfg), np.float32(a))

  def mix(self, start_params, delta, a: float):
    """Plain FedAsync: x <- x + a (start + delta - x)."""
    self.state = self.state.replace(params=step_lib.mix_step(
        self.state.params, start_params, client_lib.as_tree(delta),
        np.float32(a)))

  # The checkpoint protocol.
  def state_dict(self):
    return state_lib.flatten(self.state), {}

  def load_state_dict(self, arrays: dict, host: dict):
    del host
    self.state = jax.tree_util.tree_map(
        jnp.asarray, state_lib.unflatten(self.state, arrays))
