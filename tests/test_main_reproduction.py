"""With `server.merge_client_rows=False` afl reproduces the code before the
server became a chain of stages (commit 9beb1fe) bit for bit.

The fast test runs that commit's source (from git) and today's code side by
side on a tiny FedBuff run with the hybrid pipeline and trust, where clients
land several rows in a buffer. The slow one runs the demo
(`configs/fmnist_hybrid.py`, seed 0) and compares with the metrics and final
parameters that commit produced, stored in tests/data/ (recorded on this
project's 2-core x86-64 CI machine kind; float rounding may differ on
another CPU).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

BASELINE = "9beb1fe"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")

SCRIPT = """
import json, sys, numpy as np, jax
from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny
c = tiny.get_config()
c.aggregator.name = "hybrid"
c.trust.enabled = True
c.num_clients, c.concurrency, c.server.buffer_size = 16, 8, 6
c.stop.max_versions = 20
c.eval.every_versions = 5
c.scheduler.dropout_prob = 0.1
if sys.argv[2] != "baseline":
  c.server.merge_client_rows = sys.argv[2] == "merge"
sim = Simulation(build_config(c), None, log=lambda m: None)
s = sim.run()
leaves = jax.tree_util.tree_leaves(sim.server.params)
np.save(sys.argv[1], np.concatenate([np.ravel(x) for x in leaves]))
# The baseline keeps its records in a list, today's code in History.
records = getattr(sim.history, "records", sim.history)
print(json.dumps([[r["version"], r["test_accuracy"], r["test_loss"]]
                  for r in records]))
"""


def _baseline_tree(tmp_path):
  try:
    archive = subprocess.run(["git", "-C", ROOT, "archive", BASELINE, "afl",
                              "configs"], capture_output=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    pytest.skip(f"commit {BASELINE} is not in this clone's history")
  out = tmp_path / "baseline"
  out.mkdir()
  subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout,
                 check=True)
  return str(out)


def _run(src, tmp_path, variant):
  out = str(tmp_path / f"{variant}.npy")
  env = dict(os.environ, PYTHONPATH=src, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", SCRIPT, out, variant], cwd=src,
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return np.load(out), json.loads(r.stdout.strip().splitlines()[-1])


def test_merge_off_reproduces_baseline_bitwise(tmp_path):
  base_params, base_metrics = _run(_baseline_tree(tmp_path), tmp_path,
                                   "baseline")
  params, metrics = _run(ROOT, tmp_path, "nomerge")
  assert metrics == base_metrics
  np.testing.assert_array_equal(params, base_params)
  merged, _ = _run(ROOT, tmp_path, "merge")
  assert not np.array_equal(merged, base_params)  # duplicates were merged


@pytest.mark.slow
def test_demo_with_merge_off_matches_baseline(tmp_path):
  with open(os.path.join(DATA, "fmnist_hybrid_main_metrics.json")) as f:
    ref = json.load(f)
  assert ref["commit"] == BASELINE
  ref_params = np.load(os.path.join(DATA,
                                    "fmnist_hybrid_main_params.npz"))["flat"]
  wd = str(tmp_path / "demo")
  subprocess.run([sys.executable, "launch.py", "--config",
                  "configs/fmnist_hybrid.py", "--workdir", wd,
                  "--config.logging.progress=False",
                  "--config.server.merge_client_rows=False"], cwd=ROOT,
                 check=True, capture_output=True, timeout=1200)
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  keys = ("version", "test_accuracy", "client_updates", "mean_staleness")
  assert [[r[k] for k in keys] for r in rows] == [
      [r[k] for k in keys] for r in ref["records"]]
  np.testing.assert_allclose([r["test_loss"] for r in rows],
                             [r["test_loss"] for r in ref["records"]],
                             rtol=1e-6)
  from afl import checkpoint  # pylint: disable=g-import-not-at-top
  from afl.config import build_config  # pylint: disable=g-import-not-at-top
  from afl.simulation import Simulation  # pylint: disable=g-import-not-at-top
  from configs import fmnist_hybrid  # pylint: disable=g-import-not-at-top
  c = fmnist_hybrid.get_config()
  c.server.merge_client_rows = False
  sim = Simulation(build_config(c), None, log=lambda m: None)
  checkpoint.restore(checkpoint.manager(wd, 2), sim.components())
  import jax  # pylint: disable=g-import-not-at-top
  flat = np.concatenate([np.ravel(x) for x in
                         jax.tree_util.tree_leaves(sim.server.params)])
  np.testing.assert_allclose(flat, ref_params, rtol=1e-5, atol=1e-6)
