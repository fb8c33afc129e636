"""Sharded over 4 (forced host) devices equals 1 device: the vmap backend's
cohort axis, and coordinate-wise aggregation's parameter axis."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

# Each test starts fresh processes with forced host devices (~30 s each).
pytestmark = pytest.mark.slow

SCRIPT = """
import sys, numpy as np, jax
from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny
c = tiny.get_config()
if len(sys.argv) > 4:  # address, process id: one of two processes
  c.distributed.update(enabled=True, coordinator_address=sys.argv[4],
                       num_processes=2, process_id=int(sys.argv[5]))
  build_config(c).distributed.initialize()
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
  for mode, aggregator in (("fedbuff", "mean"), ("sync", "median")):
    np.testing.assert_allclose(_run(tmp_path, 1, mode, aggregator),
                               _run(tmp_path, 4, mode, aggregator),
                               rtol=1e-5, atol=1e-6)


def test_two_processes_match_one_device(tmp_path):
  """Two processes (jax.distributed, gloo) of 2 CPU devices each: a global
  mesh of 4; every process ends with the 1-device parameters."""
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    address = f"localhost:{sock.getsockname()[1]}"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  outs = [str(tmp_path / f"proc{i}.npy") for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "-c", SCRIPT, outs[i], "fedbuff", "median", address,
       str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for p in procs:
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-2000:]
    assert "devices 4" in stdout and "cohorts sharded over 4" in stdout
  one = _run(tmp_path, 1, "fedbuff", "median")
  for out in outs:
    np.testing.assert_allclose(np.load(out), one, rtol=1e-5, atol=1e-6)
