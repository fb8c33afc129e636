"""afl.experiments, afl.experiment_spec, afl.comparison: overrides,
selection, reuse of complete runs, refusal of another config's run,
comparison files and the command line."""
import csv
import os
import shutil

import pytest

from afl import config as config_lib
from afl import comparison
from afl import experiment_spec
from afl import experiments
from configs import experiments as spec
from configs import tiny

SPEC = "configs/experiments.py"
TWO = ["tiny_fedbuff", "tiny_sync"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """Two tiny experiments run once for the whole module."""
  wd = str(tmp_path_factory.mktemp("exp"))
  logs = []
  results = experiments.run_experiments(SPEC, wd, only=TWO, log=logs.append,
                                        experiment_set="tiny")
  return wd, results, logs


def _csv(wd):
  with open(os.path.join(wd, "comparison.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_apply_overrides_sections_leaves_and_dotted_keys():
  base = tiny.get_config()
  out = experiment_spec.apply_overrides(base, {
      "server": {"mode": "sync"}, "aggregator.name": "median",
      "client": {"optimizer_kwargs": {"momentum": 0.5}}})
  assert out.server.mode == "sync" and out.aggregator.name == "median"
  assert out.client.optimizer_kwargs.to_dict() == {"momentum": 0.5}
  assert out.server.buffer_size == base.server.buffer_size
  assert base.server.mode == "fedbuff"  # the base is not modified
  config_lib.build_config(out)


@pytest.mark.parametrize("overrides,match", [
    ({"server": {"nope": 1}}, r"experiment x: config\.server\.nope: unknown"),
    ({"nope": {"a": 1}}, r"config\.nope: unknown"),
    ({"server": "sync"}, r"config\.server: is a section"),
    ({"stop": {"max_versions": "many"}}, r"config\.stop\.max_versions: "
     r"cannot set"),
])
def test_apply_overrides_errors(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    experiment_spec.apply_overrides(tiny.get_config(), overrides, "x")


def test_default_set_names_and_configs():
  exps = experiment_spec.load_experiments(SPEC)
  names = [e.name for e in exps]
  assert len(names) == len(set(names))
  for want in ("sync_fedavg", "fedasync", "fedbuff", "dp_client", "dp_server",
               "topk_0.01", "topk_0.01_noef", "async_hybrid_trust_dp"):
    assert want in names
  for kind in spec.ATTACKS:
    for agg in spec.AGGREGATORS:
      assert f"attack_{kind}__{agg}" in names
  by_name = {e.name: e for e in exps}

  def cfg(name):
    return config_lib.build_config(by_name[name].make_config())

  assert cfg("sync_fedavg").server.mode == "sync"
  a = cfg("attack_alie__trimmed_mean")
  assert (a.attack.kind, a.attack.fraction, a.aggregator.name) == (
      "alie", 0.3, "trimmed_mean")
  d = cfg("dp_server")
  assert (d.dp.mode, d.aggregator.name, d.server.weight_by_examples) == (
      "server", "mean", False)
  t = cfg("topk_0.01_noef")
  assert (t.compression.kind, t.compression.ratio,
          t.compression.error_feedback) == ("topk", 0.01, False)
  h = cfg("async_hybrid_trust_dp")
  assert (h.server.mode, h.aggregator.name, h.trust.enabled, h.dp.mode) == (
      "fedbuff", "hybrid", True, "client")


def test_runs_and_compares(swept):
  wd, results, logs = swept
  assert [r["name"] for r in results] == TWO
  assert all(r["status"] == "ran" for r in results)
  # Only the selected experiments ran.
  assert sorted(d for d in os.listdir(wd)
                if os.path.isdir(os.path.join(wd, d))) == sorted(TWO)
  rows = _csv(wd)
  assert list(rows[0]) == list(comparison.COLUMNS)
  assert [r["name"] for r in rows] == TWO
  assert [r["server_mode"] for r in rows] == ["fedbuff", "sync"]
  for row, res in zip(rows, results):
    assert row["aggregator"] == "mean"
    # Not applicable: empty.
    for col in ("attack", "attack_fraction", "dp_mode", "compression",
                "epsilon", "attack_success_rate"):
      assert row[col] == ""
    assert float(row["final_test_accuracy"]) == res["final_test_accuracy"]
    assert int(row["num_server_versions"]) == 6
    assert int(row["bytes_total"]) > 0
  with open(os.path.join(wd, "comparison.md")) as f:
    md = f.read()
  header = "| " + " | ".join(comparison.COLUMNS) + " |"
  assert header in md
  assert "[tiny_sync](tiny_sync/report.md)" in md
  assert "accuracy_vs_virtual_time.png" in md
  assert os.path.getsize(os.path.join(wd, "accuracy_vs_virtual_time.png")) > 0
  assert os.path.exists(os.path.join(wd, "tiny_sync", "report.md"))
  assert any("tiny_sync: running" in m for m in logs)


def test_rerun_skips_complete_runs(swept):
  wd, first, _ = swept
  mtimes = {n: os.path.getmtime(os.path.join(wd, n, "summary.json"))
            for n in TWO}
  logs = []
  again = experiments.run_experiments(SPEC, wd, only=TWO, log=logs.append,
                                      experiment_set="tiny")
  assert [r["status"] for r in again] == ["skipped", "skipped"]
  assert sum("skipped" in m for m in logs) == 2
  assert not any("running" in m for m in logs)
  for n in TWO:
    assert os.path.getmtime(os.path.join(wd, n, "summary.json")) == mtimes[n]
  for a, b in zip(first, again):
    assert a["final_test_accuracy"] == b["final_test_accuracy"]


def test_cli_only_keeps_other_complete_runs_in_comparison(swept, capsys):
  wd, _, _ = swept
  rc = experiments.main(["--experiments", SPEC, "--set", "tiny", "--only",
                         "tiny_sync", "--workdir", wd])
  assert rc == 0
  out = capsys.readouterr().out
  assert "[1/1] tiny_sync: skipped" in out
  assert "tiny_fedbuff" not in out  # not selected, so not even looked at
  # ... but its complete run is still compared.
  assert [r["name"] for r in _csv(wd)] == TWO


def test_cli_unknown_name_lists_known(tmp_path, capsys):
  rc = experiments.main(["--experiments", SPEC, "--set", "tiny", "--only",
                         "nope", "--workdir", str(tmp_path)])
  assert rc == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert err.startswith("error: unknown experiment(s) nope; known: ")
  assert "tiny_fedbuff" in err and "tiny_sync" in err
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("argv,match", [
    (["--experiments", SPEC, "--bogus"], "unrecognized arguments"),
    (["--workdir", "x"], "--experiments"),
    (["--experiments", "no/such.py", "--workdir", "x"], "no such file"),
    (["--experiments", SPEC, "--set", "huge", "--workdir", "x"],
     "unknown experiment set 'huge'"),
])
def test_cli_bad_input_one_line(argv, match, capsys):
  assert experiments.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: ")
  assert match in err


def test_cli_list(capsys):
  assert experiments.main(["--experiments", SPEC, "--set", "tiny",
                           "--list"]) == 0
  assert capsys.readouterr().out.split()[:2] == ["tiny_fedbuff", "tiny_sync"]


def test_refuses_other_config_unless_overwrite(swept, tmp_path):
  src, _, _ = swept
  wd = str(tmp_path / "wd")
  shutil.copytree(os.path.join(src, "tiny_fedbuff"),
                  os.path.join(wd, "tiny_fedbuff"))
  spec_file = tmp_path / "other.py"
  spec_file.write_text(
      "from configs import tiny\n\n\n"
      "def get_experiments(arg=None):\n"
      "  return [('tiny_fedbuff', tiny, {'seed': 1, 'stop': {\n"
      "      'max_versions': 2}, 'eval': {'every_versions': 2}})]\n")
  with pytest.raises(config_lib.ConfigError, match=r"holds a run of a "
                     r"different config than experiment tiny_fedbuff; pass "
                     r"--overwrite"):
    experiments.run_experiments(str(spec_file), wd, log=lambda m: None)
  logs = []
  res = experiments.run_experiments(str(spec_file), wd, overwrite=True,
                                    log=logs.append)
  assert res[0]["status"] == "ran" and res[0]["num_server_versions"] == 2
  with open(os.path.join(wd, "tiny_fedbuff", "config.json")) as f:
    assert '"seed": 1' in f.read()


def test_bad_experiment_config_fails_before_any_run(tmp_path):
  spec_file = tmp_path / "bad.py"
  spec_file.write_text(
      "from configs import tiny\n\n\n"
      "def get_experiments(arg=None):\n"
      "  return [('ok', tiny, {}), ('bad', tiny, {'client': {'lr': -1.0}})]\n")
  with pytest.raises(config_lib.ConfigError,
                     match=r"experiment bad: config\.client\.lr: must be > 0"):
    experiments.run_experiments(str(spec_file), str(tmp_path / "wd"),
                                log=lambda m: None)
  assert not os.path.exists(tmp_path / "wd" / "ok")
