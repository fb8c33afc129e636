"""Multi-host runs: the `distributed` config section and its start-up."""
from __future__ import annotations

import dataclasses

from afl.validate import in_range


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
  """Multi-host runs: `jax.distributed.initialize` before anything else.
  Empty address/0 processes let JAX detect them (e.g. on TPU pods, SLURM)."""
  enabled: bool = False
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1

  def validate(self, p):
    in_range(f"{p}.num_processes", self.num_processes, 0)
    in_range(f"{p}.process_id", self.process_id, -1)

  def initialize(self):
    if not self.enabled:
      return
    import jax  # pylint: disable=g-import-not-at-top
    kwargs = {}
    if self.coordinator_address:
      kwargs["coordinator_address"] = self.coordinator_address
    if self.num_processes:
      kwargs["num_processes"] = self.num_processes
    if self.process_id >= 0:
      kwargs["process_id"] = self.process_id
    # CPU devices of several processes talk through gloo (no-op elsewhere).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
