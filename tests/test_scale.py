"""100,000 clients: start and run with per-client state only for those that
took part (plus O(N) scalars: shard offsets, speeds, task counters)."""
import numpy as np

from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny


def test_hundred_thousand_clients():
  n = 100_000
  c = tiny.get_config()
  c.num_clients = n
  c.concurrency = 16
  c.data.update(synthetic_train=2 * n, synthetic_test=64, min_shard_size=1,
                partition="iid")
  c.server.buffer_size = 8
  c.compression.update(kind="topk", ratio=0.1)
  c.trust.enabled = True
  c.aggregator.name = "median"
  c.stop.max_versions = 4
  c.eval.every_versions = 4
  sim = Simulation(build_config(c), None, log=lambda m: None)
  s = sim.run()
  participated = int(np.sum(sim.scheduler.task_counts > 0))
  assert participated <= c.concurrency + 4 * 8
  # Residuals (D floats each) only for clients whose update arrived.
  assert s["residual_clients"] == s["client_updates"] <= participated
  # Model versions: only those still referenced by in-flight tasks.
  assert len(sim.loop.versions) <= c.concurrency + 1
  # O(N) scalars only: speeds, task counters, shard offsets, trust.
  per_client_bytes = (sim.scheduler.slowness.nbytes
                      + sim.scheduler.task_counts.nbytes
                      + sim.c.partition.offsets.nbytes
                      + np.asarray(sim.server.trust.score).nbytes
                      + np.asarray(sim.server.trust.quarantined).nbytes)
  assert per_client_bytes <= 40 * n
