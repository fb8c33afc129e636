"""The benchmark scripts run where the GPU suite runs: a bare JAX image."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# Packages afl uses that a CUDA JAX image (jax, flax, optax, numpy, scipy)
# does not have; benchmarks/gpu_suite.sh may carry nothing else.
_DEV_ONLY = ("ml_collections", "chex", "transformers", "datasets",
             "dp_accounting", "torch", "tqdm", "matplotlib", "numba")


def _run_without_dev_packages(script, argv):
  """Runs benchmarks/`script` with `argv` where importing a dev-only
  package fails, as in a bare CUDA JAX image; returns the process."""
  # Absent as in such an image: importing them fails, and they are not in
  # sys.modules (scipy looks for torch there).
  code = (f"import sys, runpy, importlib.abc\n"
          f"class Absent(importlib.abc.MetaPathFinder):\n"
          f"  def find_spec(self, name, path, target=None):\n"
          f"    if name.split('.')[0] in {_DEV_ONLY!r}:\n"
          f"      raise ModuleNotFoundError(name)\n"
          f"sys.meta_path.insert(0, Absent())\n"
          f"sys.argv = [{script!r}] + {list(argv)!r}\n"
          f"runpy.run_path('benchmarks/{script}', run_name='__main__')\n")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  return res


def test_throughput_runs_without_dev_packages(tmp_path):
  out = tmp_path / "t.json"
  res = _run_without_dev_packages("throughput.py", [
      "--workloads", "mlp", "--backends", "loop:1,vmap:1", "--cohorts", "2",
      "--repeats", "1", "--min-seconds", "0", "--out", str(out)])
  rows = [l for l in res.stdout.splitlines() if l.startswith("| mlp")]
  assert len(rows) == 2 and "| 1.00x |" in rows[0], res.stdout
  assert out.exists()


def test_aggregation_runs_without_dev_packages(tmp_path):
  """Every kernel, the default's duplicate merging included."""
  out = tmp_path / "a.json"
  res = _run_without_dev_packages("aggregation.py", [
      "--points", "8x1000", "--repeats", "1", "--out", str(out)])
  import aggregation  # pylint: disable=g-import-not-at-top
  row = [l for l in res.stdout.splitlines() if l.startswith("| 8 ")]
  assert len(row) == 1, res.stdout
  assert row[0].count("ms (") == 2 + len(aggregation.KERNELS), row[0]
  assert out.exists()


def test_time_interleaved_takes_each_entrys_best_round():
  import throughput  # pylint: disable=g-import-not-at-top
  calls = []

  def entry(seconds):
    def once(t):
      calls.append(t)
      time.sleep(seconds)
    return once

  best = throughput.time_interleaved([entry(0.01), entry(0.03)], repeats=2,
                                     min_seconds=0.05)
  assert best[0] == pytest.approx(0.01, rel=0.5)
  assert best[1] == pytest.approx(0.03, rel=0.5)
  assert len(calls) == len(set(calls))  # every call gets a fresh t


def test_robustness_table_runs_cells_and_reuses_them(tmp_path, capsys):
  import robustness  # pylint: disable=g-import-not-at-top
  args = ["--workdir", str(tmp_path / "runs"), "--set", "tiny",
          "--pipelines", "median", "--attacks", "none", "sign_flip",
          "--fractions", "0.3", "--seeds", "0",
          "--out", str(tmp_path / "table")]
  assert robustness.main(args) == 0
  for ext in (".csv", ".md", ".png"):
    assert (tmp_path / f"table{ext}").exists()
  md = (tmp_path / "table.md").read_text()
  assert "| pipeline | none | sign_flip |" in md
  row = [l for l in md.splitlines() if l.startswith("| median |")][0]
  assert "–" not in row  # both cells ran
  # A second call reuses the complete runs (nothing is rerun).
  assert robustness.main(args + ["--no-run"]) == 0
  assert "2 of 2 cells complete" in capsys.readouterr().out
  # Another machine's CSV fills cells an empty workdir lacks: same table.
  (tmp_path / "table.csv").rename(tmp_path / "other.csv")
  merged = ["--workdir", str(tmp_path / "empty"), "--no-run", "--merge",
            str(tmp_path / "other.csv")] + args[2:]
  assert robustness.main(merged) == 0
  assert "2 of 2 cells complete" in capsys.readouterr().out
  assert (tmp_path / "table.md").read_text() == md
  assert ((tmp_path / "table.csv").read_text()
          == (tmp_path / "other.csv").read_text())


def test_robustness_table_marks_diverged_cells(tmp_path):
  import robustness  # pylint: disable=g-import-not-at-top
  row = lambda attack, f, seed, acc, div: dict(
      pipeline="mean", attack=attack, fraction=f, seed=seed,
      final_test_accuracy=acc, diverged_at_version=div)
  rows = [row("none", 0.0, 0, 0.8, None), row("none", 0.0, 1, 0.7, None),
          row("gaussian", 0.3, 0, None, 12), row("gaussian", 0.3, 1, 0.5,
                                                 None)]
  md = robustness.tables(rows, ["mean"], ["none", "gaussian"], [0.3])
  assert "| mean | 0.750 | div@12 |" in md  # one diverged seed marks it
  robustness.heatmap(str(tmp_path / "h.png"), rows, ["mean"],
                     ["none", "gaussian"], [0.3])
  assert (tmp_path / "h.png").stat().st_size > 0


def test_robustness_trust_table_lists_seeds_in_order():
  import robustness  # pylint: disable=g-import-not-at-top
  row = lambda seed, caught, honest, first: dict(
      pipeline="default", attack="sign_flip", fraction=0.3, seed=seed,
      final_test_accuracy=0.8, num_malicious=30,
      quarantined_malicious=caught, quarantined_honest=honest,
      first_quarantine_version=first)
  rows = [row(1, 29, 1, 20), row(0, 28, 0, None)]  # seed 1 read first
  md = robustness.tables(rows, ["default"], ["none", "sign_flip"], [0.3])
  assert "| default | sign_flip | 0.3 | 28/30 / 29/30 | 0 / 1 | – / 20 |" in md
