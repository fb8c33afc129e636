"""Checkpoint/resume: a SIGKILLed run resumed ends bitwise equal."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from afl import checkpoint
from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny

ARGS = ["--config", "configs/tiny.py", "--config.checkpoint.every_versions=2",
        "--config.stop.max_versions=60", "--config.eval.every_versions=5",
        "--config.scheduler.dropout_prob=0.1"]


def _final_arrays(workdir):
  c = tiny.get_config()
  c.checkpoint.every_versions = 2
  c.stop.max_versions = 60
  c.eval.every_versions = 5
  c.scheduler.dropout_prob = 0.1
  sim = Simulation(build_config(c), None, log=lambda m: None)
  mngr = checkpoint.manager(workdir, 2)
  checkpoint.restore(mngr, sim.components())
  assert sim.loop.version == 60
  return sim


def _metrics(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  for r in rows:
    r.pop("wall_time")
  return rows


# fedasync and every stateful component are covered in process below.
@pytest.mark.parametrize("mode", ["fedbuff"])
def test_sigkill_and_resume_is_bitwise_equal(tmp_path, mode):
  rng = np.random.default_rng()
  kill_after = int(rng.integers(3, 25)) * 2  # a random checkpointed version
  ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
  mode_arg = [f"--config.server.mode={mode}"]
  subprocess.run([sys.executable, "launch.py", *ARGS, *mode_arg,
                  "--workdir", ref_dir], check=True, capture_output=True,
                 timeout=300)
  proc = subprocess.Popen([sys.executable, "launch.py", *ARGS, *mode_arg,
                           "--workdir", run_dir], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpts = os.path.join(run_dir, "checkpoints")
  deadline = time.time() + 240
  killed_at = None
  while time.time() < deadline and proc.poll() is None:
    steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if (
        os.path.isdir(ckpts)) else []
    if steps and max(steps) >= kill_after:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      killed_at = max(steps)
      break
    time.sleep(0.005)
  assert killed_at is not None and killed_at < 60, "run ended before the kill"
  r = subprocess.run([sys.executable, "launch.py", *ARGS, *mode_arg,
                      "--workdir", run_dir, "--resume"], capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "resumed from checkpoint at version" in r.stderr
  a, b = _final_arrays(ref_dir), _final_arrays(run_dir)
  for x, y in zip(jax.tree_util.tree_leaves(a.server.state),
                  jax.tree_util.tree_leaves(b.server.state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert _metrics(ref_dir) == _metrics(run_dir)
  sa = json.load(open(os.path.join(ref_dir, "summary.json")))
  sb = json.load(open(os.path.join(run_dir, "summary.json")))
  for key in ("final_test_accuracy", "client_updates", "dropouts",
              "virtual_time", "mean_staleness"):
    assert sa[key] == sb[key], key


def test_resume_refuses_other_config(tmp_path):
  from afl import cli_errors  # pylint: disable=g-import-not-at-top
  from afl import run as run_lib  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "w")
  run_lib.run(tiny.get_config(), wd)
  c = tiny.get_config()
  c.client.lr = 0.2
  with pytest.raises(Exception) as e:
    run_lib.run(c, wd, resume=True)
  code, line = cli_errors.expected_failure(e.value)
  assert code == cli_errors.EXIT_CONFIG
  assert "holds a run of a different config" in line


def _rich_config(max_versions):
  """Every stateful component on: trust, fedasync window, residuals, DP."""
  c = tiny.get_config()
  c.num_clients, c.concurrency = 20, 6
  c.server.mode = "fedasync"
  c.aggregator.update(name="hybrid", window=5)
  c.trust.enabled = True
  c.attack.update(kind="sign_flip", fraction=0.25)
  c.compression.update(kind="topk", ratio=0.2)
  c.dp.update(mode="client", noise_multiplier=0.5, clip_norm=5.0)
  c.stop.max_versions = max_versions
  c.eval.every_versions = 5
  return build_config(c)


def _staged_config(max_versions):
  """FedBuff with per-client server state: client momentum, trust against
  the root update."""
  c = tiny.get_config()
  c.num_clients, c.concurrency = 20, 6
  c.aggregator.update(name="centered_clip", stages=("client_momentum",))
  c.trust.update(enabled=True, reference="root", root_examples=32)
  c.attack.update(kind="sign_flip", fraction=0.25)
  c.stop.max_versions = max_versions
  c.eval.every_versions = 5
  return build_config(c)


@pytest.mark.parametrize("make", [_rich_config, _staged_config])
def test_resume_in_process_with_all_state(tmp_path, make):
  straight = Simulation(make(20), str(tmp_path / "a"), log=lambda m: None)
  s_straight = straight.run()
  first = Simulation(make(10), str(tmp_path / "b"), log=lambda m: None)
  first.run()
  resumed = Simulation(make(20), str(tmp_path / "b"), log=lambda m: None)
  s_resumed = resumed.run(resume=True)
  for x, y in zip(jax.tree_util.tree_leaves(straight.server.state),
                  jax.tree_util.tree_leaves(resumed.server.state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(straight.server.trust.score),
                                np.asarray(resumed.server.trust.score))
  for key in ("final_test_accuracy", "epsilon", "bytes_total",
              "residual_clients", "num_quarantined", "client_updates"):
    assert s_straight.get(key) == s_resumed.get(key), key
