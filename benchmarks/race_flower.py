"""The race's Flower row: synchronous FedAvg in Flower's simulation engine.

  python race_flower.py DATA_DIR OUT_JSON   # run by race.py in its own venv

Torch clients (the CNN of benchmarks/torch_baseline.py, the same layers as
afl's demo CNN) train on the shards race.py wrote, with the experiment's
hyperparameters from DATA_DIR/meta.json: every step draws `batch` examples
of the shard uniformly with replacement (afl's default sampling), SGD with
momentum from a fresh optimizer per round. `FedAvg` samples
`clients_per_round` of the clients each round and weights their models by
shard size; the server evaluates the global model on the test set every
`every` rounds (Flower's `evaluate_fn`), each record taking the seconds
since this script started. Ray runs the clients, one CPU each.
"""
import time

T0 = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.common import Context, ndarrays_to_parameters  # noqa: E402
from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # noqa
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

import torch_baseline  # noqa: E402  (on PYTHONPATH: race.py sets it)

T1 = time.perf_counter()


def _arrays(data_dir):
  """The race's arrays, memory-mapped (every Ray worker opens them)."""
  return {k: np.load(os.path.join(data_dir, f"{k}.npy"), mmap_mode="r")
          for k in ("train_x", "train_y", "test_x", "test_y", "indices",
                    "offsets")}


def _model(meta):
  cnn, _ = torch_baseline._models(torch)  # pylint: disable=protected-access
  h, _, c = meta["shape"]
  return cnn(c, h)


def _set(model, weights):
  model.load_state_dict({k: torch.from_numpy(np.asarray(w)) for k, w in
                         zip(model.state_dict().keys(), weights)})


def _get(model):
  return [v.detach().numpy().copy() for v in model.state_dict().values()]


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


class _Client(NumPyClient):

  def __init__(self, cid, data_dir, meta):
    self.cid, self.data_dir, self.meta = cid, data_dir, meta

  def fit(self, parameters, config):
    torch.set_num_threads(1)
    m, a = self.meta, _arrays(self.data_dir)
    shard = np.asarray(a["indices"][a["offsets"][self.cid]:
                                    a["offsets"][self.cid + 1]])
    model = _model(m)
    _set(model, parameters)
    opt = torch.optim.SGD(model.parameters(), lr=m["lr"],
                          momentum=m["momentum"])
    rng = np.random.default_rng(
        [m["seed"], int(config["round"]), self.cid])
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(m["local_steps"]):
      idx = np.sort(shard[rng.integers(0, len(shard), m["batch_size"])])
      opt.zero_grad()
      loss_fn(model(_nchw(a["train_x"][idx])),
              torch.from_numpy(np.asarray(a["train_y"][idx], np.int64))
              ).backward()
      opt.step()
    return _get(model), len(shard), {}


def main(data_dir, out):
  with open(os.path.join(data_dir, "meta.json")) as f:
    meta = json.load(f)
  torch.manual_seed(meta["seed"])
  torch.set_num_threads(1)
  evals = []

  def evaluate(server_round, weights, config):
    del config
    last = server_round == meta["rounds"]
    if server_round == 0 or (server_round % meta["every"] and not last):
      return None
    a = _arrays(data_dir)
    model = _model(meta)
    _set(model, weights)
    correct, loss, n = 0, 0.0, len(a["test_y"])
    with torch.no_grad():
      for lo in range(0, n, meta["eval_batch"]):
        logits = model(_nchw(a["test_x"][lo:lo + meta["eval_batch"]]))
        y = torch.from_numpy(np.asarray(a["test_y"][lo:lo + len(logits)],
                                        np.int64))
        loss += float(torch.nn.functional.cross_entropy(
            logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    evals.append([server_round, time.perf_counter() - T0, correct / n])
    print(f"flower round {server_round}: accuracy {correct / n:.4f} "
          f"({evals[-1][1]:.1f} s)", file=sys.stderr, flush=True)
    return loss / n, {"accuracy": correct / n}

  def server_fn(context: Context):
    del context
    strategy = FedAvg(
        fraction_fit=meta["clients_per_round"] / meta["num_clients"],
        min_fit_clients=meta["clients_per_round"], fraction_evaluate=0.0,
        min_evaluate_clients=0, min_available_clients=meta["num_clients"],
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda r: {"round": r},
        initial_parameters=ndarrays_to_parameters(_get(_model(meta))))
    return ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=meta["rounds"]))

  def client_fn(context: Context):
    cid = int(context.node_config["partition-id"])
    return _Client(cid, data_dir, meta).to_client()

  run_simulation(
      server_app=ServerApp(server_fn=server_fn),
      client_app=ClientApp(client_fn=client_fn),
      num_supernodes=meta["num_clients"],
      backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
  if not evals or evals[-1][0] != meta["rounds"]:
    sys.exit(f"flower: the simulation stopped before round {meta['rounds']}")
  with open(out, "w") as f:
    json.dump(dict(evals=evals, import_s=T1 - T0), f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
