"""The vmap backend sharded over 4 (forced host) devices equals 1 device."""
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
sim = Simulation(build_config(c), None, log=print)
sim.run()
leaves = jax.tree_util.tree_leaves(sim.server.params)
np.save(sys.argv[1], np.concatenate([np.ravel(x) for x in leaves]))
print("devices", jax.device_count())
"""


def _run(tmp_path, devices, mode):
  out = str(tmp_path / f"params_{devices}_{mode}.npy")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run([sys.executable, "-c", SCRIPT, out, mode], env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"devices {devices}" in r.stdout
  if devices > 1:
    assert f"cohorts sharded over {devices} devices" in r.stdout
  return np.load(out)


def test_one_and_four_devices_agree(tmp_path):
  for mode in ("fedbuff", "sync"):
    np.testing.assert_allclose(_run(tmp_path, 1, mode),
                               _run(tmp_path, 4, mode), rtol=1e-5, atol=1e-6)
