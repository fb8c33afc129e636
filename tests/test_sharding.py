"""Sharded over 4 (forced host) devices equals 1 device: the vmap backend's
cohort axis, and coordinate-wise aggregation's parameter axis."""
import os
import subprocess
import sys

import numpy as np

SCRIPT = """
import sys, numpy as np, jax
from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny
c = tiny.get_config()
c.client.backend = "vmap"
c.server.mode = sys.argv[2]
c.aggregator.name = sys.argv[3]
sim = Simulation(build_config(c), None, log=print)
sim.run()
leaves = jax.tree_util.tree_leaves(sim.server.params)
np.save(sys.argv[1], np.concatenate([np.ravel(x) for x in leaves]))
print("devices", jax.device_count())
"""


def _run(tmp_path, devices, mode, aggregator="mean"):
  out = str(tmp_path / f"params_{devices}_{mode}_{aggregator}.npy")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run([sys.executable, "-c", SCRIPT, out, mode, aggregator],
                     env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"devices {devices}" in r.stdout
  if devices > 1:
    assert f"cohorts sharded over {devices} devices" in r.stdout
    assert ((f"aggregation sharded over {devices} devices" in r.stdout)
            == (aggregator in ("mean", "median", "trimmed_mean")))
  return np.load(out)


def test_one_and_four_devices_agree(tmp_path):
  for mode, aggregator in (("fedbuff", "mean"), ("sync", "mean"),
                           ("fedbuff", "median")):
    np.testing.assert_allclose(_run(tmp_path, 1, mode, aggregator),
                               _run(tmp_path, 4, mode, aggregator),
                               rtol=1e-5, atol=1e-6)
