"""Bad inputs fail safe: one line, a documented exit code, nothing of the
user's touched. Table-driven; each case builds its folder, runs afl the way
launch.py does (`afl.run.run`, errors mapped by `afl.cli_errors`) and checks
the outcome and every file the user had, byte for byte. A few cases run
launch.py itself to check the front door (no traceback, exit code)."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from afl import cli_errors
from afl import divergence
from afl import metrics
from afl import run as run_lib
from afl import workdir as workdir_lib
from afl.config import ConfigError, build_config
from afl.simulation import Simulation
from configs import fmnist_hybrid
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = tiny.get_config()
  c.stop.max_versions = 2
  c.eval.every_versions = 2
  c.checkpoint.every_versions = 1
  return c


def _snapshot(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = fh.read()
  return out


def _user_file(tmp, rel, data=b"my notes\n"):
  p = tmp / rel
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_bytes(data)


def _afl_run(tmp):
  """A complete tiny run in tmp/w (afl's files only)."""
  run_lib.run(_config(), str(tmp / "w"))


def _setup_file(tmp):
  _user_file(tmp, "w")


def _setup_under_file(tmp):
  _user_file(tmp, "f")
  return str(tmp / "f" / "w")


def _setup_user_files(tmp):
  _user_file(tmp, "w/thesis.tex")
  _user_file(tmp, "w/data/raw.csv", b"1,2,3\n")


def _setup_run_and_user_file(tmp):
  _afl_run(tmp)
  _user_file(tmp, "w/notes.txt")


def _setup_checkpoints_is_a_file(tmp):
  _user_file(tmp, "w/checkpoints", b"not a folder\n")


def _setup_bad_config_json(tmp):
  _afl_run(tmp)
  (tmp / "w" / "config.json").write_text("{truncated")


def _front_door(fn):
  """Runs `fn` and maps its failure as launch.py does: (exit code, line).
  Fails the test when the error is not an expected one (a traceback)."""
  with pytest.raises(Exception) as e:
    fn()
  failure = cli_errors.expected_failure(e.value)
  assert failure is not None, f"unexpected {e.value!r}"
  code, line = failure
  assert "\n" not in line and line.startswith("error: "), line
  return code, line


_CODE = {workdir_lib.WorkdirError: cli_errors.EXIT_WORKDIR,
         ConfigError: cli_errors.EXIT_CONFIG}

# (id, setup -> optional workdir, overwrite, resume, error class or None,
#  message regex, the user's files that must survive (relative to tmp))
CASES = [
    ("workdir_is_a_file", _setup_file, False, False, workdir_lib.WorkdirError,
     r"workdir .*w is a file, not a folder", ["w"]),
    ("workdir_is_a_file_overwrite", _setup_file, True, False,
     workdir_lib.WorkdirError, r"is a file, not a folder", ["w"]),
    ("workdir_under_a_file", _setup_under_file, False, False,
     workdir_lib.WorkdirError, r"workdir .*f/w cannot be used: ", ["f"]),
    ("overwrite_user_folder", _setup_user_files, True, False,
     workdir_lib.WorkdirError,
     r"holds .*w/data and 1 more, which afl did not write; --overwrite "
     r"removes only", ["w/thesis.tex", "w/data/raw.csv"]),
    ("overwrite_run_with_user_file", _setup_run_and_user_file, True, False,
     workdir_lib.WorkdirError, r"holds .*w/notes.txt, which afl did not",
     ["w/notes.txt", "w/config.json", "w/metrics.jsonl"]),
    ("overwrite_checkpoints_is_a_file", _setup_checkpoints_is_a_file, True,
     False, workdir_lib.WorkdirError, r"holds .*w/checkpoints, which afl",
     ["w/checkpoints"]),
    ("unreadable_config_json", _setup_bad_config_json, False, True,
     workdir_lib.WorkdirError, r"config.json cannot be read .*--overwrite",
     ["w/config.json"]),
    ("user_files_without_overwrite_kept", _setup_user_files, False, False,
     None, None, ["w/thesis.tex", "w/data/raw.csv"]),
    ("rerun_without_flags", _afl_run, False, False, ConfigError,
     r"already holds this run; pass --resume", ["w/config.json"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_workdir_case(tmp_path, case):
  _, setup, overwrite, resume, error, match, keep = case
  wd = setup(tmp_path) or str(tmp_path / "w")
  before = _snapshot(tmp_path)
  if error is None:
    run_lib.run(_config(), wd, overwrite=overwrite, resume=resume)
  else:
    with pytest.raises(error, match=match):
      run_lib.run(_config(), wd, overwrite=overwrite, resume=resume)
    code, _ = _front_door(
        lambda: run_lib.run(_config(), wd, overwrite=overwrite,
                            resume=resume))
    assert code == _CODE[error]
    assert _snapshot(tmp_path) == before  # refused: nothing changed
  after = _snapshot(tmp_path)
  for rel in keep:
    for name, data in before.items():
      if name == rel or name.startswith(rel + os.sep):
        assert after.get(name) == data, name


def test_overwrite_removes_only_afls_files(tmp_path):
  _afl_run(tmp_path)
  wd = str(tmp_path / "w")
  assert not workdir_lib.foreign_entries(wd)
  run_lib.run(_config(), wd, overwrite=True)
  assert os.path.exists(os.path.join(wd, "summary.json"))


def test_every_file_a_run_writes_is_known(tmp_path):
  """RUN_FILES / RUN_DIRS cover a run with every output on (trust, plots,
  TensorBoard, an attack): otherwise --overwrite would refuse afl's own."""
  c = _config()
  c.trust.enabled = True
  c.attack.update(kind="sign_flip", fraction=0.25)
  c.logging.update(plots=True, tensorboard=True)
  run_lib.run(c, str(tmp_path / "w"))
  assert workdir_lib.foreign_entries(str(tmp_path / "w")) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_workdir(tmp_path):
  wd = tmp_path / "w"
  wd.mkdir()
  wd.chmod(0o555)
  with pytest.raises(workdir_lib.WorkdirError, match="cannot be used"):
    run_lib.run(_config(), str(wd))


def test_full_disk_mid_run_is_one_line_naming_the_checkpoint(tmp_path,
                                                            monkeypatch):
  """A write failing with ENOSPC after a checkpoint: one line with the
  last checkpoint's folder, which is intact and resumes."""
  wd = str(tmp_path / "w")
  calls = []
  real = metrics.MetricsWriter.write

  def write(self, rec):
    calls.append(rec["version"])
    if rec["version"] >= 2:
      raise OSError(errno.ENOSPC, "No space left on device",
                    os.path.join(wd, "metrics.jsonl"))
    return real(self, rec)

  monkeypatch.setattr(metrics.MetricsWriter, "write", write)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"writing into workdir .* failed: No space left "
                     r"on device .*the last checkpoint is .*checkpoints/\d+"):
    run_lib.run(_config(), wd)
  monkeypatch.setattr(metrics.MetricsWriter, "write", real)
  s = run_lib.run(_config(), wd, resume=True)
  assert s["num_server_versions"] == 2


def test_sweep_redoes_a_run_killed_before_config_json(tmp_path):
  from afl import experiments  # pylint: disable=g-import-not-at-top
  wd = tmp_path / "sweep"
  _user_file(tmp_path, "sweep/tiny_fedbuff/log.txt", b"[afl] data: ...\n")
  spec = os.path.join(ROOT, "configs", "experiments.py")
  logs = []
  res = experiments.run_experiments(spec, str(wd), only=["tiny_fedbuff"],
                                    experiment_set="tiny", log=logs.append)
  assert res[0]["status"] == "ran"
  assert any("redoing" in m for m in logs), logs
  # A folder with someone else's file is refused, even with --overwrite.
  _user_file(tmp_path, "sweep/tiny_sync/mine.txt")
  before = _snapshot(tmp_path)
  for overwrite in (False, True):
    with pytest.raises(workdir_lib.WorkdirError, match="mine.txt"):
      experiments.run_experiments(spec, str(wd), only=["tiny_sync"],
                                  experiment_set="tiny", overwrite=overwrite,
                                  log=lambda m: None)
  assert _snapshot(tmp_path) == before


def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"),
                         *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)


def test_front_door_workdir_error(tmp_path):
  """launch.py: exit EXIT_WORKDIR, one line, no traceback, files intact."""
  _user_file(tmp_path, "w/thesis.tex")
  r = _launch("--config", "configs/tiny.py", "--workdir",
              str(tmp_path / "w"), "--overwrite")
  assert r.returncode == cli_errors.EXIT_WORKDIR
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: workdir ")
  assert "Traceback" not in r.stderr
  assert (tmp_path / "w" / "thesis.tex").read_bytes() == b"my notes\n"


def _diverging(lr):
  c = _config()
  c.client.lr = lr
  c.stop.max_versions = 8
  c.eval.every_versions = 1
  return c


def test_divergence_stops_with_exit_code_and_one_line(tmp_path):
  wd = str(tmp_path / "w")
  r = _launch("--config", "configs/tiny.py", "--workdir", wd,
              "--config.client.lr=1e6", "--config.stop.max_versions=8",
              "--config.eval.every_versions=1",
              "--config.checkpoint.every_versions=1")
  assert r.returncode == cli_errors.EXIT_DIVERGED, r.stderr
  line = r.stderr.strip().splitlines()[-1]
  assert line == ("error: the model diverged at version 1: the test loss "
                  "4.62e+34 exceeds stop.max_test_loss=10000; no checkpoint "
                  "was kept (likely causes in the log)"), line
  assert "Traceback" not in r.stderr
  with open(os.path.join(wd, "log.txt")) as f:
    assert "likely causes: the learning rates (client.lr=1e+06" in f.read()
  with open(os.path.join(wd, "summary.json")) as f:
    s = json.load(f)
  assert s["stop_reason"] == "diverged" and s["diverged_at_version"] == 1
  assert s["final_test_accuracy"] is None
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  assert [r.get("diverged", False) for r in recs] == [False, True]


def test_divergence_keeps_the_last_finite_checkpoint_which_resumes(tmp_path):
  """client.lr=3 on tiny diverges at version 4 (loss 1.3e4): checkpoints
  up to 3 are kept, the error names 3, and resuming from it diverges at 4
  again (determinism); every null in metrics.jsonl carries the flag."""
  wd = str(tmp_path / "w")
  with pytest.raises(divergence.Diverged,
                     match=r"diverged at version 4: the test loss 1.33e\+04 "
                     r"exceeds .* the last finite checkpoint is "
                     r".*checkpoints/3 "):
    run_lib.run(_diverging(3.0), wd)
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  for rec in recs:
    assert (rec["test_loss"] is None) <= rec.get("diverged", False), rec
  assert recs[-1]["diverged"] and recs[-1]["version"] == 4
  logs = []
  sim = Simulation(build_config(_diverging(3.0)), wd, log=logs.append)
  s = sim.run(resume=True)
  assert "resumed from checkpoint at version 3" in logs
  assert s["diverged_at_version"] == 4


def test_non_finite_parameters_stop_before_evaluation(tmp_path, monkeypatch):
  """Parameters turned non-finite by an update: no evaluation or
  checkpoint of them; the summary says why."""
  c = _config()
  c.stop.max_versions = 6
  sim = Simulation(build_config(c), str(tmp_path / "w"), log=lambda m: None)
  real = sim.server.aggregate

  def poisoned(*a, **kw):
    real(*a, **kw)
    if sim.loop.version >= 2:  # this call makes version 3
      sim.server.state = sim.server.state.replace(
          params=jax.tree_util.tree_map(lambda x: x * jnp.nan,
                                        sim.server.state.params))

  monkeypatch.setattr(sim.server, "aggregate", poisoned)
  s = sim.run()
  assert s["stop_reason"] == "diverged" and s["diverged_at_version"] == 3
  assert s["divergence"] == "the global parameters are not finite"
  assert all(r["version"] < 3 for r in sim.history.records)
  # Checkpoints every version: the last is the one before the broken model.
  assert workdir_lib.last_checkpoint(str(tmp_path / "w")).endswith(
      os.sep + "2")


def test_test_loss_bound_is_a_divergence():
  c = _config()
  c.stop.max_test_loss = 1e-3  # any real loss exceeds it
  sim = Simulation(build_config(c), None, log=lambda m: None)
  s = sim.run()
  assert s["diverged_at_version"] == 0
  assert "exceeds stop.max_test_loss=0.001" in s["divergence"]


def test_sweep_records_a_diverged_run_and_goes_on(tmp_path):
  from afl import experiments  # pylint: disable=g-import-not-at-top
  spec = tmp_path / "spec.py"
  spec.write_text(
      "from configs import tiny\n\n\n"
      "def get_experiments(arg=None):\n"
      "  short = {'stop': {'max_versions': 3}, 'eval': {'every_versions': 1}}"
      "\n  return [('bad', tiny, {**short, 'client': {'lr': 1e6}}),\n"
      "          ('ok', tiny, short)]\n")
  res = experiments.run_experiments(str(spec), str(tmp_path / "sw"),
                                    log=lambda m: None)
  assert [r["status"] for r in res] == ["diverged", "ran"]


def test_ctrl_c_checkpoints_and_exits_130(tmp_path):
  """SIGINT during the loop: one line, exit 130, no traceback, no summary
  (the run is not complete), and --resume finishes it."""
  wd = str(tmp_path / "w")
  args = [sys.executable, os.path.join(ROOT, "launch.py"), "--config",
          "configs/tiny.py", "--workdir", wd, "--config.stop.max_versions=300",
          "--config.logging.progress=False"]
  p = subprocess.Popen(args + ["--config.checkpoint.every_versions=20"],
                       cwd=ROOT, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while workdir_lib.last_checkpoint(wd) is None:  # the loop is running
    assert time.time() < deadline and p.poll() is None
    time.sleep(0.05)
  p.send_signal(signal.SIGINT)
  err = p.stderr.read()
  assert p.wait(timeout=120) == cli_errors.EXIT_INTERRUPTED, err
  last = err.strip().splitlines()[-1]
  assert re.fullmatch(r"error: interrupted at version \d+; continue with "
                      r"--resume \(checkpoint in .*\)", last), err
  assert "Traceback" not in err
  assert not os.path.exists(os.path.join(wd, "summary.json"))
  v = int(re.search(r"version (\d+)", last).group(1))
  assert workdir_lib.last_checkpoint(wd).endswith(os.sep + str(v))
  r = _launch("--config", "configs/tiny.py", "--workdir", wd,
              "--config.stop.max_versions=300",
              "--config.logging.progress=False",
              "--config.checkpoint.every_versions=20", "--resume")
  assert r.returncode == 0, r.stderr
  assert f"resumed from checkpoint at version {v}" in r.stderr


def _set(c, dotted, value):
  node = c
  *parents, last = dotted.split(".")
  for part in parents:
    node = node[part]
  node[last] = value


# (override key, value, error regex): values the config must refuse.
VALUE_CASES = [
    ("seed", 2**32, r"config.seed: must be <= 4294967295"),
    ("seed", 10**20, r"config.seed: must be <="),
    ("client.optimizer", "clip", r"config.client.optimizer: 'clip' is not "
     r"an optax optimizer taking a learning_rate"),
    ("client.optimizer", "chain", r"'chain' is not an optax optimizer"),
    ("server.optimizer", "scale", r"config.server.optimizer: 'scale' is "
     r"not an optax optimizer"),
    ("server.optimizer", "_private", r"is not an optax optimizer"),
    ("client.optimizer", "GradientTransformation", r"is not an optax"),
    ("client.optimizer_kwargs", {"bogus": 1},
     r"config.client.optimizer_kwargs: optax.sgd takes no argument 'bogus'"),
    ("server.optimizer_kwargs", {"learning_rate": 1.0},
     r"takes no argument 'learning_rate' \(the rate is client.lr"),
    ("client.lr", float("nan"), r"config.client.lr: must be a finite"),
    ("stop.max_test_loss", float("inf"), r"config.stop.max_test_loss"),
    ("stop.max_test_loss", 0.0, r"config.stop.max_test_loss: must be > 0"),
    ("trust.reference", "mean", r"config.trust.reference"),
    ("trust.root_examples", 0, r"config.trust.root_examples: must be >= 1"),
]


@pytest.mark.parametrize("key,value,match", VALUE_CASES,
                         ids=[f"{k}={v}" for k, v, _ in VALUE_CASES])
def test_value_refused(tmp_path, key, value, match):
  c = tiny.get_config()
  _set(c, key, value)
  with pytest.raises(ConfigError, match=match):
    build_config(c)
  _refused_before_any_work(tmp_path, c, key)


def _refused_before_any_work(tmp, c, key):
  """The run is refused with exit 2 and one line naming `key`; the
  folder around the workdir is untouched and no workdir was made."""
  _user_file(tmp, "notes.txt")
  before = _snapshot(tmp)
  code, line = _front_door(lambda: run_lib.run(c, str(tmp / "w")))
  assert code == cli_errors.EXIT_CONFIG
  assert line.startswith(f"error: config.{key}: "), line
  assert _snapshot(tmp) == before and not (tmp / "w").exists()


def _leaves(node, prefix=""):
  for k, v in node.items():
    if hasattr(v, "items"):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


# Every float key of the demo's config (all sections), and every integer.
_DEMO = fmnist_hybrid.get_config()
FLOAT_KEYS = sorted(k for k, v in _leaves(_DEMO) if isinstance(v, float))
INT_KEYS = sorted(k for k, v in _leaves(_DEMO)
                  if isinstance(v, int) and not isinstance(v, bool))


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_must_be_finite(tmp_path, key):
  c = tiny.get_config()
  _set(c, key, float("nan"))
  _refused_before_any_work(tmp_path, c, key)


@pytest.mark.parametrize("key", INT_KEYS)
def test_every_integer_key_has_a_range(tmp_path, key):
  """-2 is below every integer key's range (-1 means "off" for some)."""
  c = tiny.get_config()
  _set(c, key, -2)
  _refused_before_any_work(tmp_path, c, key)


def test_the_key_tables_cover_the_config():
  assert len(FLOAT_KEYS) >= 40 and len(INT_KEYS) >= 30
  assert {"client.lr", "dp.noise_multiplier", "scheduler.dropout_prob",
          "aggregator.beta"} <= set(FLOAT_KEYS)
  assert {"seed", "num_clients", "data.synthetic_train"} <= set(INT_KEYS)


def test_valid_optimizer_kwargs_pass():
  c = tiny.get_config()
  c.client.update(optimizer="adam", optimizer_kwargs={"b1": 0.8})
  assert build_config(c).client.optimizer_kwargs == {"b1": 0.8}


def test_config_path_that_is_a_folder(tmp_path):
  with pytest.raises(cli_errors.FlagError, match=r"--config: .* is a folder"):
    cli_errors.check_config_path(["launch.py", f"--config={tmp_path}"])


@pytest.mark.parametrize("overrides", [[], ["--config.seed=3"]])
def test_get_config_that_raises_is_named_not_unknown_key(tmp_path,
                                                         overrides):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(arg=None):\n  raise KeyError('oops')\n")
  argv = ["launch.py", f"--config={bad}", *overrides]
  msg = cli_errors.explain_flag_error(argv, RuntimeError("whatever"))
  assert msg == f"--config: {bad} failed to load: KeyError: 'oops'"


def test_out_of_memory_is_one_line():
  """An oversized model under a 6 GB address-space limit: exit 6."""
  import resource  # pylint: disable=g-import-not-at-top
  limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30,) * 2)
  r = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), "--config",
       "configs/tiny.py", "--config.model.width=30000000",
       "--config.stop.max_versions=1"], cwd=ROOT, capture_output=True,
      text=True, timeout=300, preexec_fn=limit)
  assert r.returncode == cli_errors.EXIT_OUT_OF_MEMORY, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: out of memory: ") and "Traceback" not in \
      r.stderr


@pytest.mark.parametrize("err,want", [
    (MemoryError(), True),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                  "allocate 1.2GiB"), True),
    (RuntimeError("INVALID_ARGUMENT: shapes"), False)])
def test_out_of_memory_recognised(err, want):
  assert (cli_errors.out_of_memory(err) is not None) == want


@pytest.mark.parametrize("overrides,key", [
    (dict(name="fashion_mnist", dir="/nonexistent/fmnist"), "data.dir"),
    (dict(name="fashion_mnist", dir="notes.txt"), "data.dir"),
    (dict(name="no_such_dataset"), "data.name"),
])
def test_data_source_refused_before_any_work(tmp_path, monkeypatch,
                                             overrides, key):
  monkeypatch.chdir(tmp_path)
  c = tiny.get_config()
  c.data.update(**overrides)
  _user_file(tmp_path, "notes.txt")
  before = _snapshot(tmp_path)
  code, line = _front_door(lambda: run_lib.run(c, str(tmp_path / "w")))
  assert code == cli_errors.EXIT_CONFIG
  assert line.startswith(f"error: config.{key}: "), line
  assert str(c.data[key.split(".")[1]]) in line, line
  assert {k: v for k, v in _snapshot(tmp_path).items()
          if not k.startswith("w" + os.sep)} == before


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path):
  logs = []
  sim = Simulation(build_config(_config()), str(tmp_path / "w"),
                   log=logs.append)
  sim.run(resume=True)
  assert any(m.startswith("resume: no checkpoint in ") and
             m.endswith("starting at version 0") for m in logs), logs


def test_sweep_front_door_missing_spec(tmp_path, capsys):
  from afl import experiments  # pylint: disable=g-import-not-at-top
  code = experiments.main(["--experiments", str(tmp_path / "none.py"),
                           "--workdir", str(tmp_path / "sw")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == cli_errors.EXIT_CONFIG
  assert len(err) == 1 and "none.py" in err[0], err
  assert not (tmp_path / "sw").exists()
