"""afl.report: report.md from a run's files; afl.tensorboard_io: TensorBoard
scalars written with tensorboardX and read back."""
import glob
import importlib.util
import json
import os

import pytest

from afl import config as config_lib
from afl import metrics as metrics_lib
from afl import report
from afl import run as run_lib
from afl import tensorboard_io
from configs import tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("run"))
  c = tiny.get_config()
  c.stop.max_versions = 4
  c.eval.every_versions = 2
  c.logging.plots = True
  summary = run_lib.run(c, wd)
  return wd, summary


def _history(wd):
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_report_of_a_tiny_run(tiny_run):
  wd, summary = tiny_run
  path = report.write_report(wd)
  assert path == os.path.join(wd, "report.md")
  with open(path) as f:
    md = f.read()
  assert f"| final test accuracy | {summary['final_test_accuracy']:.4f} |" in md
  assert f"| best test accuracy | {summary['best_test_accuracy']:.4f} |" in md
  assert "| server versions | 4 |" in md
  assert f"| client updates | {summary['client_updates']:,} |" in md
  assert "| mean staleness |" in md and "| virtual time |" in md
  assert "![accuracy.png](accuracy.png)" in md
  assert "![staleness.png](staleness.png)" in md
  assert "| server mode | fedbuff |" in md
  assert "<details><summary>Full config" in md and '"num_clients": 16' in md
  assert "## Communication" in md and "bytes total" in md
  # Nothing to say about privacy, attacks or trust on this run.
  for absent in ("## Privacy", "## Attack", "## Trust", "Incomplete run"):
    assert absent not in md
  # One evaluation row per metrics line (4 versions, every 2: 0, 2, 4).
  assert [h["version"] for h in _history(wd)] == [0, 2, 4]
  assert "| 4 | " in md.split("## Evaluations")[1]


def _write_fake_run(wd, *, summary=True):
  """A run directory with DP, an attack and trust figures, written by hand
  so that the report's optional sections can be checked without running."""
  c = tiny.get_config()
  c.attack.update(kind="sign_flip", fraction=0.25)
  c.dp.update(mode="client")
  cfg = config_lib.build_config(c)
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write(metrics_lib.dumps(config_lib.to_dict(cfg)))
  records = [dict(version=v, virtual_time=1.5 * v, wall_time=0.1 * v,
                  test_accuracy=0.25 + 0.1 * v, test_loss=1.0 - 0.1 * v,
                  mean_staleness=None if v == 0 else 0.5,
                  epsilon=0.7 * v, bytes_total=1000 * v,
                  num_quarantined=min(v, 2), mean_trust_malicious=None)
             for v in (0, 2, 4)]
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for r in records:
      f.write(metrics_lib.dumps(r) + "\n")
    f.write('{"version": 6, "test_acc')  # torn by a kill
  with open(os.path.join(wd, "malicious.json"), "w") as f:
    json.dump(dict(ids=[1, 3, 5, 7], attack="sign_flip"), f)
  if summary:
    with open(os.path.join(wd, "summary.json"), "w") as f:
      f.write(metrics_lib.dumps(dict(
          final_test_accuracy=0.65, best_test_accuracy=0.65,
          num_server_versions=4, client_updates=12, wall_seconds=0.4,
          virtual_time=6.0, epsilon=2.8125, bytes_total=4000,
          dp_sampling="poisson", dp_sampling_rate=0.25, dp_steps=9,
          dp_noise_multiplier=1.25, num_malicious=4, num_quarantined=2, quarantined_ids=[1, 3, 9],
          mean_trust_malicious=None)) + "\n")
  return records


def test_report_optional_sections(tmp_path):
  wd = str(tmp_path)
  _write_fake_run(wd)
  with open(report.write_report(wd)) as f:
    md = f.read()
  privacy = md.split("## Privacy")[1].split("##")[0]
  assert "| epsilon (final) | 2.812 |" in privacy
  assert "| mode | client |" in privacy
  for row in ("| sampling | poisson |", "| sampling rate (worst client) | "
              "0.2500 |", "| mechanisms (worst client) | 9 |",
              "| noise multiplier | 1.250 |"):
    assert row in privacy, row
  attack = md.split("## Attack")[1].split("##")[0]
  assert "| attack | sign_flip |" in attack
  assert "| malicious clients | 4 |" in attack
  assert "1, 3, 5, 7" in attack
  trust = md.split("## Trust scores")[1].split("## Evaluations")[0]
  assert "| num_quarantined | 2 |" in trust
  assert "3 clients (2 malicious): 1, 3, 9" in trust
  assert "| mean_trust_malicious | – |" in trust
  # Per-evaluation quarantine counts.
  assert "| version | num_quarantined |" in trust and "| 4 | 2 |" in trust
  assert "epsilon" in md.split("## Evaluations")[1].splitlines()[2]
  assert "## Plots" not in md  # no PNG in the directory


def test_report_of_an_incomplete_run(tmp_path):
  wd = str(tmp_path)
  records = _write_fake_run(wd, summary=False)
  with open(report.write_report(wd)) as f:
    md = f.read()
  assert "**Incomplete run**" in md and "version 4" in md
  assert f"| final test accuracy | {records[-1]['test_accuracy']:.4f} |" in md
  assert "| num_quarantined (final / max over evaluations) | 2 / 2 |" in md


def test_report_needs_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no run"):
    report.write_report(str(tmp_path))


# TensorBoard.

needs_tbx = pytest.mark.skipif(
    importlib.util.find_spec("tensorboardX") is None,
    reason="tensorboardX is not installed")


@needs_tbx
def test_tensorboard_writer_scalars(tmp_path):
  logdir = str(tmp_path / "tb")
  w = tensorboard_io.TensorBoardWriter(logdir)
  records = [dict(version=v, test_accuracy=0.5 + 0.125 * v, test_loss=2.0 - v,
                  mean_staleness=None, backend="loop", flag=True,
                  client_updates=3 * v) for v in (0, 2, 4)]
  for r in records:
    w.write(r)
  w.close()
  files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  assert len(files) == 1 and os.path.getsize(files[0]) > 0
  scalars = tensorboard_io.read_tensorboard(logdir)
  # Numeric fields only; None, strings and booleans are not scalars.
  assert sorted(scalars) == ["client_updates", "test_accuracy", "test_loss"]
  assert scalars["test_accuracy"] == [(0, 0.5), (2, 0.75), (4, 1.0)]
  assert scalars["client_updates"] == [(0, 0.0), (2, 6.0), (4, 12.0)]


@needs_tbx
def test_tensorboard_purge_on_resume(tmp_path):
  logdir = str(tmp_path)
  w = tensorboard_io.TensorBoardWriter(logdir, purge_step=0)
  for v in (0, 2, 4):  # 4 was logged after the checkpoint at 2
    w.write(dict(version=v, test_accuracy=v / 8))
  w.close()
  w = tensorboard_io.TensorBoardWriter(logdir, purge_step=3)  # resumed after 2
  for v in (4, 6):
    w.write(dict(version=v, test_accuracy=v / 8 + 0.25))
  w.close()
  assert len(glob.glob(os.path.join(logdir, "*tfevents*"))) == 2
  assert tensorboard_io.read_tensorboard(logdir)["test_accuracy"] == [
      (0, 0.0), (2, 0.25), (4, 0.75), (6, 1.0)]


@needs_tbx
def test_write_tensorboard_from_metrics(tiny_run):
  wd, _ = tiny_run
  logdir = tensorboard_io.write_tensorboard(wd)
  assert logdir == os.path.join(wd, "tensorboard")
  history = _history(wd)
  scalars = tensorboard_io.read_tensorboard(logdir)
  assert [s for s, _ in scalars["test_accuracy"]] == [0, 2, 4]
  for (step, value), h in zip(scalars["test_accuracy"], history):
    assert value == pytest.approx(h["test_accuracy"], rel=1e-6)
  assert {"virtual_time", "bytes_total", "client_updates"} <= set(scalars)
  assert "mean_staleness" in scalars  # null at version 0, numeric later
  assert [s for s, _ in scalars["mean_staleness"]] == [2, 4]


@needs_tbx
def test_read_tensorboard_detects_corruption(tmp_path):
  w = tensorboard_io.TensorBoardWriter(str(tmp_path))
  w.write(dict(version=1, test_accuracy=0.5))
  w.close()
  (path,) = glob.glob(os.path.join(tmp_path, "*tfevents*"))
  data = bytearray(open(path, "rb").read())
  data[-6] ^= 0xFF  # inside the last record's payload
  with open(path, "wb") as f:
    f.write(bytes(data))
  with pytest.raises(ValueError, match="corrupt record"):
    tensorboard_io.read_tensorboard(str(tmp_path))


@needs_tbx
def test_tensorboard_event_accumulator_agrees(tmp_path):
  """TensorBoard's own reader, where installed, sees the same scalars."""
  ea_mod = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  w = tensorboard_io.TensorBoardWriter(str(tmp_path))
  for v in (0, 3):
    w.write(dict(version=v, test_accuracy=0.5 + v / 8))
  w.close()
  acc = ea_mod.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("test_accuracy")] == [
      (0, 0.5), (3, 0.875)]
