"""benchmarks/race.py: the same clients for every framework, the table."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import race  # noqa: E402  pylint: disable=g-import-not-at-top
import race_afl  # noqa: E402  pylint: disable=g-import-not-at-top

_FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(_FMNIST),
                                  reason="Fashion-MNIST not installed")


@needs_fmnist
def test_export_writes_the_data_and_partition_afl_trains_on(tmp_path):
  from afl import build  # pylint: disable=g-import-not-at-top
  from afl import config as config_lib  # pylint: disable=g-import-not-at-top
  meta = dict(race.META, rounds=2, every=1)
  race.export(meta, str(tmp_path))
  comp = build.build(config_lib.build_config(race_afl.race_config(meta)),
                     log=lambda m: None)
  load = lambda k: np.load(tmp_path / f"{k}.npy")
  np.testing.assert_array_equal(load("indices"), comp.partition.indices)
  np.testing.assert_array_equal(load("offsets"), comp.partition.offsets)
  np.testing.assert_array_equal(load("train_x"), comp.dataset.train_x)
  np.testing.assert_array_equal(load("test_y"), comp.dataset.test_y)
  assert len(load("offsets")) == meta["num_clients"] + 1
  saved = json.loads((tmp_path / "meta.json").read_text())
  assert saved["shape"] == [28, 28, 1] and saved["rounds"] == 2


def test_race_config_is_plain_fedavg_of_the_demo():
  from afl import config as config_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.build_config(
      race_afl.race_config(dict(race.META, rounds=7, every=7)))
  assert (cfg.server.mode, cfg.aggregator.name, cfg.trust.enabled) == (
      "sync", "mean", False)
  assert (cfg.num_clients, cfg.concurrency, cfg.client.local_steps,
          cfg.client.batch_size, cfg.client.lr) == (100, 10, 5, 32, 0.1)
  assert cfg.client.optimizer_kwargs["momentum"] == 0.5
  assert (cfg.data.partition, cfg.data.dirichlet_alpha) == ("dirichlet", 0.5)
  assert cfg.scheduler.dropout_prob == 0.0 and cfg.stop.max_versions == 7
  fedbuff = config_lib.build_config(race_afl.race_config(
      dict(race.META, rounds=7, every=7), "fedbuff"))
  assert (fedbuff.server.mode, fedbuff.server.buffer_size) == ("fedbuff", 10)


def test_torch_cnn_has_afl_cnn_parameters():
  torch = pytest.importorskip("torch")
  import jax  # pylint: disable=g-import-not-at-top
  import torch_baseline  # pylint: disable=g-import-not-at-top
  from afl import config_tree  # pylint: disable=g-import-not-at-top
  from afl import models  # pylint: disable=g-import-not-at-top
  from afl.config import ModelConfig  # pylint: disable=g-import-not-at-top
  cnn, _ = torch_baseline._models(torch)  # pylint: disable=protected-access
  shapes = sorted(tuple(p.shape) for p in cnn(1, 28).parameters())
  _, params, _ = models.build_model(
      config_tree.component_section(ModelConfig)(name="cnn", width=32), 10,
      (28, 28, 1), jax.random.PRNGKey(0), log=lambda m: None)
  sizes = sorted(x.size for x in jax.tree_util.tree_leaves(params))
  assert sorted(int(np.prod(s)) for s in shapes) == sizes  # 50,186 in all


def test_table_takes_the_first_evaluation_at_the_target():
  evals = [[5, 10.0, 0.7, 50.0], [10, 19.0, 0.81, 99.0], [15, 30.0, 0.79,
                                                            150.0]]
  assert race.reached(evals, 0.8) == evals[1]
  assert race.reached(evals, 0.9) is None
  out = race.table([
      dict(row="afl_fedbuff", wall_s=31.0, evals=evals),
      dict(row="fedjax", wall_s=40.0, evals=[[5, 12.0, 0.5]]),
      dict(row="flower", skipped="no venv at X (run with --setup)")], 0.8)
  rows = out.splitlines()[2:]
  assert rows[0] == ("| afl (async FedBuff) | 31.0 | 19.0 | 10 | 0.7900 | "
                     "99.0 / 150.0 |")
  assert rows[1] == ("| FedJAX (fed_avg) | 40.0 | not reached | - | 0.5000 | "
                     "- |")
  assert "skipped: no venv at X" in rows[2]


def test_unusable_venvs_are_reported_not_run(tmp_path, monkeypatch):
  why, info = race._check(str(tmp_path), "flower")  # pylint: disable=protected-access
  assert "no venv at" in why and "--setup" in why and info is None
  os.makedirs(tmp_path / "flower" / "bin")
  os.symlink(sys.executable, tmp_path / "flower" / "bin" / "python")
  monkeypatch.setitem(race.VENVS, "flower",
                      ([], "import no_such_module_for_the_race"))
  why, _ = race._check(str(tmp_path), "flower")  # pylint: disable=protected-access
  assert "cannot import it" in why and "no_such_module_for_the_race" in why
  monkeypatch.setitem(race.VENVS, "flower", ([], "print('v 1')"))
  assert race._check(str(tmp_path), "flower") == (None, "v 1")  # pylint: disable=protected-access


@needs_fmnist
def test_afl_row_reports_every_evaluation_from_process_start(tmp_path):
  meta = dict(race.META, rounds=2, every=1)
  race.export(meta, str(tmp_path))
  res = race.run_row("afl", str(tmp_path), str(tmp_path), timeout=600)
  assert "skipped" not in res, res
  versions = [e[0] for e in res["evals"]]
  times = [e[1] for e in res["evals"]]
  assert versions == [1, 2]
  assert res["build_s"] < times[0] < times[1] < res["wall_s"]
  assert all(0.0 < e[2] <= 1.0 for e in res["evals"])
