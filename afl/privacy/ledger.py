"""Privacy bookkeeping of a run: noise calibration, accounting, metrics.

Client mode (DP-SGD): every local step of a client is a subsampled Gaussian
mechanism on that client's data, with q = batch_size / shard size (batches
are drawn with replacement, treated as Poisson sampling — the usual
approximation). A client's epsilon grows with its own number of steps; the
run reports the worst client: q of the smallest shard and the largest step
count of any client, an upper bound on every client's epsilon.

Server mode (DP-FedAvg, user level): each aggregation is a Gaussian
mechanism with sensitivity clip_norm on the clipped updates; the
participation process is approximated as Poisson sampling with
q = (updates per aggregation) / num_clients. A client's rows in one buffer
are merged into one row before clipping (server.merge_client_rows, required
with server DP), so its sensitivity is clip_norm. Asynchronous participation
is not Poisson: fast clients appear more often than slow ones. The bound is the one a synchronous
DP-FedAvg run with that q would have.

`dp.target_epsilon > 0` calibrates the noise multiplier before the run:
server mode for `stop.max_versions` aggregations (exact for that count);
client mode for a client doing the average number of tasks,
ceil(max_versions * updates_per_version / num_clients) * local_steps
steps. Clients that train more than average exceed the target, and the
reported epsilon shows it.
"""
from __future__ import annotations

import math

import numpy as np

from afl.client import ClientDP
from afl.privacy import accounting


class PrivacyLedger:
  """Turns the dp config into client/server settings and tracks epsilon."""

  def __init__(self, cfg, capacity: int, shard_sizes: np.ndarray, log=print):
    self.dp = cfg.dp
    self.mode = cfg.dp.mode
    self.local_steps = cfg.client.local_steps
    self.sigma = cfg.dp.noise_multiplier
    if self.mode == "none":
      return
    if self.mode == "client":
      self.q = min(1.0, cfg.client.batch_size / int(np.min(shard_sizes)))
      per_version = cfg.server.entry.prop("per_version")(cfg)
      steps = math.ceil(cfg.stop.max_versions * per_version /
                        cfg.num_clients) * self.local_steps
      self.client_steps = np.zeros(cfg.num_clients, np.int64)
    else:
      self.q = min(1.0, capacity / cfg.num_clients)
      steps = cfg.stop.max_versions
      self.accountant = accounting.Accountant(
          max(self.sigma, 1e-6), self.q, cfg.dp.accountant)
    if cfg.dp.target_epsilon > 0:
      self.sigma = accounting.calibrate_noise_multiplier(
          cfg.dp.target_epsilon, self.q, steps, cfg.dp.delta,
          cfg.dp.accountant)
      if self.mode == "server":
        self.accountant = accounting.Accountant(self.sigma, self.q,
                                                cfg.dp.accountant)
      log(f"dp: calibrated noise_multiplier={self.sigma:.4f} for "
          f"epsilon={cfg.dp.target_epsilon} at delta={cfg.dp.delta} "
          f"({steps} steps, q={self.q:.4g})")
    else:
      log(f"dp: {self.mode} mode, noise_multiplier={self.sigma}, "
          f"clip_norm={cfg.dp.clip_norm}, q={self.q:.4g}")
    self._cache = (None, None)

  def client_dp(self) -> ClientDP | None:
    if self.mode != "client":
      return None
    return ClientDP(self.dp.clip_norm, self.sigma,
                    self.dp.microbatch_size or None)

  def server_kwargs(self) -> dict:
    """Server DP's settings for `afl.server.build.build_spec`."""
    if self.mode != "server":
      return {}
    return dict(dp_clip=self.dp.clip_norm, dp_noise=self.sigma)

  def client_released(self, client_id: int):
    """A client's update left the client: its local steps are spent."""
    if self.mode == "client":
      self.client_steps[client_id] += self.local_steps

  def server_aggregated(self):
    if self.mode == "server":
      self.accountant.step()

  def epsilon(self) -> float:
    if self.mode == "server":
      return self.accountant.epsilon(self.dp.delta)
    steps = int(self.client_steps.max())
    if self._cache[0] != steps:
      eps = (0.0 if steps == 0 else accounting.client_dpsgd_epsilon(
          self.sigma, self.q, steps, self.dp.delta, self.dp.accountant))
      self._cache = (steps, eps)
    return self._cache[1]

  def metrics(self) -> dict:
    if self.mode == "none":
      return {}
    return dict(epsilon=self.epsilon(), dp_delta=self.dp.delta,
                noise_multiplier=self.sigma)

  # The checkpoint protocol (afl.state).
  def state_dict(self):
    arrays = (dict(client_steps=self.client_steps) if self.mode == "client"
              else {})
    host = (dict(accountant=self.accountant.state_dict())
            if self.mode == "server" else {})
    return arrays, host

  def load_state_dict(self, arrays: dict, host: dict):
    if self.mode == "client":
      self.client_steps = np.asarray(arrays["client_steps"]).copy()
    elif self.mode == "server":
      self.accountant = accounting.Accountant.from_state_dict(
          host["accountant"])
