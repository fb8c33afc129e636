"""What crosses the network in a run: compression on upload, byte counts.

Each arrival's delta goes through the configured compressor (top-k with
error feedback, optional float16 values) before the server sees it; the
client's residual lives in a `ResidualStore` that only holds clients that
have participated. Compression runs at arrival, in event order: a client
has at most one task in flight, so its residual is always up to date, and
lazy batching stays exact. Every dispatch downloads the dense model.
"""
from __future__ import annotations

import jax
import jax.flatten_util
import numpy as np

from afl import client as client_lib
from afl import compression


class Communication:

  def __init__(self, cfg: compression.CompressionConfig, params):
    self.cfg = cfg
    flat, self._unravel = jax.flatten_util.ravel_pytree(params)
    self.dim = int(flat.size)
    self.active = cfg.kind != "none" or cfg.float16
    self._compress = jax.jit(compression.make_compressor(cfg, params))
    self.feedback = cfg.kind != "none" and cfg.error_feedback
    self.store = compression.ResidualStore()
    self.stats = compression.CommStats()
    self.up_bytes = cfg.update_bytes(
        self.dim, cfg.budget(params) if cfg.kind != "none" else None)
    self.down_bytes = self.dim * 4

  def downloaded(self):
    self.stats.add_down(self.down_bytes)

  def upload(self, client_id: int, delta):
    """Returns what the server receives for `delta` (decompressed)."""
    self.stats.add_up(self.up_bytes)
    if not self.active:
      return delta
    flat = jax.flatten_util.ravel_pytree(client_lib.as_tree(delta))[0]
    residual = self.store.get(client_id, self.dim)
    sent, new_residual = self._compress(flat, residual)
    if self.feedback:
      self.store.set(client_id, np.asarray(new_residual))
    return self._unravel(sent)

  def metrics(self) -> dict:
    s = self.stats.as_dict()
    return dict(bytes_up=s["up_bytes"], bytes_down=s["down_bytes"],
                bytes_total=s["total_bytes"], bytes_per_update=self.up_bytes,
                residual_clients=len(self.store))

  # The checkpoint protocol (afl.state).
  def state_dict(self):
    if not len(self.store):  # orbax refuses zero-size arrays: a marker row
      arrays = dict(ids=np.full((1,), -1, np.int64),
                    residuals=np.zeros((1, 1), np.float32))
    else:
      arrays = self.store.state_dict()
    return arrays, self.stats.state_dict()

  def load_state_dict(self, arrays: dict, host: dict):
    ids = np.asarray(arrays["ids"])
    self.store.load_state_dict(dict(ids=ids[ids >= 0],
                                    residuals=arrays["residuals"][ids >= 0]))
    self.stats.load_state_dict(host)
