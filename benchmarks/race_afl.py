"""The race's afl rows: the demo config as synchronous FedAvg or FedBuff.

  python race_afl.py DATA_DIR OUT_JSON sync|fedbuff   # run by race.py

`race_config` is the demo (configs/fmnist_hybrid.py: Fashion-MNIST, 100
Dirichlet(0.5) clients, the CNN, SGD with momentum) turned into the race's
plain experiment: the mean of the deltas weighted by shard size (no trust,
no robust rule), no dropouts, `rounds` versions of `clients_per_round`
updates each, evaluation every `every` versions, no checkpoint. `sync` is
FedAvg rounds; `fedbuff` keeps `clients_per_round` clients training and
makes a version of every `clients_per_round` arrivals, with the demo's
heterogeneous speeds and staleness weighting. race.py writes the data and
partition from the same config, so the other frameworks get these clients.
"""
import time

T0 = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from afl import config as config_lib  # noqa: E402
from afl.simulation import Simulation  # noqa: E402

T1 = time.perf_counter()


def race_config(meta: dict, mode: str = "sync"):
  """The demo config as the race's experiment (module docstring)."""
  spec = importlib.util.spec_from_file_location(
      "fmnist_hybrid", os.path.join(ROOT, "configs", "fmnist_hybrid.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  c.seed = meta["seed"]
  c.num_clients = meta["num_clients"]
  c.concurrency = meta["clients_per_round"]
  c.client.update(local_steps=meta["local_steps"],
                  batch_size=meta["batch_size"], lr=meta["lr"],
                  optimizer_kwargs=dict(momentum=meta["momentum"]))
  c.server.update(mode=mode, buffer_size=meta["clients_per_round"],
                  lr=meta["server_lr"], weight_by_examples=True)
  c.aggregator.update(name="mean", stages=())
  c.trust.enabled = False
  c.scheduler.dropout_prob = 0.0
  c.stop.max_versions = meta["rounds"]
  c.eval.update(every_versions=meta["every"], batch_size=meta["eval_batch"])
  c.checkpoint.enabled = False
  c.logging.progress = False
  return c


def main(data_dir, out, mode):
  with open(os.path.join(data_dir, "meta.json")) as f:
    meta = json.load(f)
  cfg = config_lib.build_config(race_config(meta, mode))
  sim = Simulation(cfg, None, log=lambda m: print(m, file=sys.stderr))
  summary = sim.run()
  if summary["stop_reason"] != "max_versions":
    sys.exit(f"afl {mode}: stopped by {summary['stop_reason']}")
  start = sim.t0 - T0  # the records' wall_time counts from sim.t0
  evals = [[r["version"], start + r["wall_time"], r["test_accuracy"],
            r["virtual_time"]]
           for r in sim.history.records if r["version"] > 0]
  with open(out, "w") as f:
    json.dump(dict(evals=evals, import_s=T1 - T0, build_s=start), f)


if __name__ == "__main__":
  main(*sys.argv[1:4])
