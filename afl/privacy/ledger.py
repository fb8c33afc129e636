"""Privacy bookkeeping of a run: noise calibration, accounting, metrics.

Client mode (DP-SGD, example level). Each client's shard is its own
dataset; a client's epsilon composes the steps that touched its shard, and
the run reports a bound for the worst client: the largest count of any
client with the sampling rate of the smallest shard. Neighbouring shards
differ by one example replaced with a null example that contributes
nothing (zero-out adjacency, dp_accounting's REPLACE_SPECIAL); for
untruncated Poisson sampling this gives the same epsilon as add/remove.
By `client.sampling` (afl.sampling):
  * poisson: one step is a Poisson-subsampled Gaussian, q = B / N (exact:
    truncation to the padded batch only lowers an example's inclusion
    probability, since the null example keeps its slot).
  * shuffle: an example is in one batch per epoch, so a task of L steps
    touches it at most ceil(L / ceil(N / B)) times; each touch is one
    Gaussian mechanism (no amplification by shuffling is claimed).
  * with_replacement: a step repeats an example k ~ Bin(B, 1 / N) times,
    a mixture of Gaussians (PLD only).

Server mode (DP-FedAvg, user level): a client's rows in one aggregation are
merged into one row and clipped to S, so each aggregation is a Gaussian
mechanism of sensitivity S on each client in it. `dp.participation=none`
counts, per client, the aggregations it took part in and reports the worst
client (no amplification); `poisson` treats participation as Poisson
sampling with q = rows per aggregation / num_clients, an assumption that
asynchronous FL does not satisfy, and says so.

`dp.target_epsilon > 0` calibrates the noise multiplier before the run:
server mode for `stop.max_versions` aggregations (with `none` an upper
bound on any client's count, so the target holds); client mode for a
client doing the average number of tasks, ceil(max_versions *
updates_per_version / num_clients); clients that train more exceed the
target, and the reported epsilon shows it.

`metrics()` carries everything needed to recompute epsilon with
dp_accounting alone (README, "Differential privacy").
"""
from __future__ import annotations

import math

import numpy as np

from afl import sampling as sampling_lib
from afl.client import ClientDP
from afl.privacy import accounting


class PrivacyLedger:
  """Turns the dp config into client/server settings and tracks epsilon.

  Args:
    cfg: the ExperimentConfig.
    capacity: rows per aggregation.
    shard_sizes: [num_clients] examples per client.
    sampler: the clients' `afl.sampling.Sampler` (client mode).
    task_steps: [num_clients] local steps of one task of each client.
    log: one-line logger.
  """

  def __init__(self, cfg, capacity: int, shard_sizes: np.ndarray,
               sampler: sampling_lib.Sampler | None = None,
               task_steps: np.ndarray | None = None, log=print):
    self.dp = cfg.dp
    self.mode = cfg.dp.mode
    self.sigma = cfg.dp.noise_multiplier
    if self.mode == "none":
      return
    sizes = np.asarray(shard_sizes, np.int64)
    self.counts = np.zeros(cfg.num_clients, np.int64)
    self.fields = dict(dp_level="example" if self.mode == "client"
                       else "user", dp_accountant=cfg.dp.accountant,
                       dp_delta=cfg.dp.delta)
    if self.mode == "client":
      b = cfg.client.batch_size
      self.sampling = sampler.kind
      self.batch_size, self.min_shard = b, int(sizes.min())
      if self.sampling == "shuffle":
        self.per_task = sampling_lib.epochs_touched(task_steps, sizes, b)
        self.q = 1.0
      else:
        self.per_task = np.asarray(task_steps, np.int64)
        self.q = (b / self.min_shard if self.sampling == "poisson"
                  else 1.0 / self.min_shard)
      self.fields.update(dp_batch_size=b, dp_min_shard_size=self.min_shard)
      if self.sampling == "poisson":
        self.fields.update(
            dp_padded_batch=sampler.padded_size,
            dp_truncation_prob=sampling_lib.truncation_prob(
                sampler.padded_size, sizes, b))
      per_version = cfg.server.entry.prop("per_version")(cfg)
      tasks = math.ceil(cfg.stop.max_versions * per_version /
                        cfg.num_clients)
      calibration_steps = tasks * int(self.per_task.max())
    else:
      self.sampling = cfg.dp.participation
      self.q = (min(1.0, capacity / cfg.num_clients)
                if self.sampling == "poisson" else 1.0)
      calibration_steps = cfg.stop.max_versions
      if self.sampling == "poisson":
        self.fields["dp_assumption"] = (
            "assumption: participation treated as Poisson sampling of users; "
            "asynchronous FL does not satisfy this")
        log("dp: ASSUMPTION: server DP accounting treats participation as "
            f"Poisson sampling with q={self.q:.4g}; asynchronous "
            "participation is not Poisson, so epsilon is not a proven bound")
    if cfg.dp.target_epsilon > 0:
      self.sigma = accounting.calibrate(
          cfg.dp.target_epsilon,
          lambda s: self._event(s, calibration_steps), cfg.dp.delta,
          cfg.dp.accountant, self._discretization(),
          upper=self._rdp_upper(cfg, calibration_steps))
      log(f"dp: calibrated noise_multiplier={self.sigma:.4f} for "
          f"epsilon={cfg.dp.target_epsilon} at delta={cfg.dp.delta} "
          f"({calibration_steps} steps, {self.sampling}, q={self.q:.4g})")
    else:
      log(f"dp: {self.mode} mode, noise_multiplier={self.sigma}, "
          f"clip_norm={cfg.dp.clip_norm}, {self.sampling}, q={self.q:.4g}")
    self._cache = (None, None)

  def _event(self, sigma: float, steps: int):
    if self.sampling == "with_replacement":
      return accounting.repeated_draws_event(sigma, self.batch_size,
                                             self.min_shard, steps)
    return accounting.subsampled_gaussian_event(sigma, self.q, steps)

  def _discretization(self) -> float:
    return (accounting.MIXTURE_PLD_DISCRETIZATION
            if self.sampling == "with_replacement"
            else accounting.DEFAULT_PLD_DISCRETIZATION)

  def _rdp_upper(self, cfg, steps):
    """PLD calibration of a Poisson/Gaussian event: RDP's sigma bounds it."""
    if cfg.dp.accountant != "pld" or self.sampling == "with_replacement":
      return None
    return accounting.calibrate_noise_multiplier(
        cfg.dp.target_epsilon, self.q, steps, cfg.dp.delta, "rdp")

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
      self.counts[client_id] += self.per_task[client_id]

  def server_aggregated(self, client_ids):
    """One aggregation of the rows of `client_ids` (repeats merged)."""
    if self.mode == "server":
      if self.sampling == "poisson":
        self.counts += 1  # every user is a candidate of every aggregation
      else:
        self.counts[np.unique(np.asarray(client_ids, np.int64))] += 1

  def steps(self) -> int:
    """The worst client's count of accounted mechanisms."""
    return int(self.counts.max())

  def epsilon(self) -> float:
    steps = self.steps()
    if self._cache[0] != steps:
      eps = accounting.epsilon(self._event(self.sigma, steps), self.dp.delta,
                               self.dp.accountant, self._discretization())
      self._cache = (steps, eps)
    return self._cache[1]

  def metrics(self) -> dict:
    if self.mode == "none":
      return {}
    return dict(epsilon=self.epsilon(), dp_sampling=self.sampling,
                dp_sampling_rate=self.q, dp_steps=self.steps(),
                dp_noise_multiplier=self.sigma, **self.fields)

  # The checkpoint protocol (afl.state).
  def state_dict(self):
    return (dict(counts=self.counts) if self.mode != "none" else {}), {}

  def load_state_dict(self, arrays: dict, host: dict):
    del host
    if self.mode != "none":
      self.counts = np.asarray(arrays["counts"]).copy()
