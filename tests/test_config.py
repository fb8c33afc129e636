"""Config validation: one clear line naming the key."""
import re
import subprocess
import sys

import pytest

from afl.config import ConfigError, base_config, build_config
from configs import tiny


def _cfg(**overrides):
  c = tiny.get_config()
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    with node.unlocked() if hasattr(node, "unlocked") else _null():
      node[last] = value
  return c


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def test_shipped_configs_validate():
  import importlib
  for name in ("tiny", "fmnist_hybrid", "cifar_hybrid"):
    build_config(importlib.import_module(f"configs.{name}").get_config())


@pytest.mark.parametrize("key,value,needle", [
    ("client.lr", -1.0, "config.client.lr"),
    ("client.local_steps", 0, "config.client.local_steps"),
    ("server.mode", "fedavgx", "config.server.mode"),
    ("client.backend", "gpu", "config.client.backend"),
    ("client.grad_microbatch", 5, "config.client.grad_microbatch"),
    ("client.optimizer", "nosuchopt", "config.client.optimizer"),
    ("data.dirichlet_alpha", 0.0, "config.data.dirichlet_alpha"),
    ("data.partition", "pathological", "config.data.partition"),
    ("scheduler.dropout_prob", 1.0, "config.scheduler.dropout_prob"),
    ("scheduler.duration_dist", "weibull", "config.scheduler.duration_dist"),
    ("server.mixing_alpha", 1.5, "config.server.mixing_alpha"),
    ("concurrency", 100, "config.concurrency"),
    ("model.name", "vgg", "config.model.name"),
    ("aggregator.name", "avg", "config.aggregator.name"),
    ("stop.max_versions", 0, "config.stop.max_versions"),
    ("eval.every_versions", 0, "config.eval.every_versions"),
])
def test_bad_values_name_the_key(key, value, needle):
  with pytest.raises(ConfigError) as e:
    build_config(_cfg(**{key: value}))
  msg = str(e.value)
  assert msg.startswith(needle + ":"), msg
  assert "\n" not in msg


def test_unknown_key():
  c = tiny.get_config()
  c.client.learning_rate = 0.1
  with pytest.raises(ConfigError, match=r"^config\.client\.learning_rate: "
                     "unknown key"):
    build_config(c)


def test_wrong_type():
  c = tiny.get_config().to_dict()
  c["client"]["local_steps"] = "five"
  with pytest.raises(ConfigError, match=r"^config\.client\.local_steps: "
                     "expected an integer"):
    build_config(c)
  c = tiny.get_config().to_dict()
  c["client"]["lr"] = True
  with pytest.raises(ConfigError, match=r"^config\.client\.lr: expected"):
    build_config(c)


def _launch(*args):
  return subprocess.run([sys.executable, "launch.py", *args],
                        capture_output=True, text=True, timeout=120)


def test_launch_reports_one_line_errors(tmp_path):
  r = _launch("--config", "configs/tiny.py", "--config.client.foo=1")
  assert r.returncode == 2
  assert r.stderr.strip() == ("error: config.client.foo: unknown key "
                              "(in override --config.client.foo)")
  r = _launch("--config", "configs/tiny.py", "--config.client.lr=-0.5")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "error: config.client.lr: must be > 0, got -0.5")
  r = _launch("--config", "configs/nope.py")
  assert r.stderr.strip() == "error: --config: no such file configs/nope.py"


def test_workdir_of_another_config_is_refused(tmp_path):
  from afl import cli_errors  # pylint: disable=g-import-not-at-top
  from afl import run as run_lib  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "w")

  def config(versions):
    c = tiny.get_config()
    c.stop.max_versions = versions
    return c

  run_lib.run(config(2), wd)
  with pytest.raises(ConfigError) as e:
    run_lib.run(config(3), wd)
  code, line = cli_errors.expected_failure(e.value)
  assert code == cli_errors.EXIT_CONFIG
  assert "holds a run of a different config" in line
  assert run_lib.run(config(3), wd, overwrite=True)["num_server_versions"] == 3


def test_dataset_too_small_for_clients_is_one_line(tmp_path):
  r = _launch("--config", "configs/tiny.py", "--config.num_clients=200",
              "--config.concurrency=4", "--config.data.min_shard_size=4")
  assert r.returncode == 2
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: config.data.partition: dataset too small "
                         "for num_clients=200"), line


def test_missing_cifar_is_one_line(tmp_path):
  r = _launch("--config", "configs/cifar_hybrid.py",
              f"--config.data.dir={tmp_path}",
              "--config.data.allow_download=False")
  assert r.returncode == 2
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: config.data.dir: no cifar-10-batches-py "
                         "folder") and str(tmp_path) in line, line


def test_missing_hf_checkpoint_is_one_line(tmp_path):
  r = _launch("--config", "configs/cifar_vit_lora.py",
              f"--config.model.checkpoint={tmp_path}/vit",
              "--config.data.name=synthetic",
              "--config.data.synthetic_shape=(8,8,3)",
              "--config.num_clients=10", "--config.concurrency=4")
  assert r.returncode == 2
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: ") and f"{tmp_path}/vit" in line, line


def _float_keys(section, prefix=""):
  for key, value in section.items():
    path = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from _float_keys(value, path + ".")
    elif isinstance(value, float):
      yield path


FLOAT_KEYS = sorted(_float_keys(base_config()))


def _set(c, path, value):
  *parents, last = path.split(".")
  for p in parents:
    c = c[p]
  c[last] = value


def test_every_float_key_is_covered():
  # The walk finds the privacy keys and the registered components' floats.
  for key in ("dp.noise_multiplier", "dp.clip_norm", "dp.delta",
              "dp.target_epsilon", "secagg.scale", "client.lr",
              "stop.max_wall_seconds"):
    assert key in FLOAT_KEYS
  assert len(FLOAT_KEYS) > 30


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_nan_and_inf_are_refused_naming_the_key(key):
  for bad in (float("nan"), float("inf"), float("-inf")):
    c = base_config()
    _set(c, key, bad)
    if bad == float("inf") and key in ("stop.max_virtual_time",
                                       "stop.max_wall_seconds"):
      build_config(c)  # no limit: the default
      continue
    with pytest.raises(ConfigError, match=rf"^config\.{re.escape(key)}: "):
      build_config(c)


def test_non_finite_values_inside_dicts_are_refused():
  c = base_config()
  c.client.optimizer_kwargs = {"momentum": float("nan")}
  with pytest.raises(ConfigError, match=r"^config\.client\.optimizer_kwargs"
                     r"\.momentum: must be a finite number, got nan"):
    build_config(c)
