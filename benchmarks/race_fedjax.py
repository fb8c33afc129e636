"""The race's FedJAX row: `fedjax.algorithms.fed_avg` on the race's clients.

  python race_fedjax.py DATA_DIR OUT_JSON   # run by race.py in its own venv

The demo CNN (conv32-pool-conv64-pool-dense, SAME padding, as afl's) in
haiku; the client shards race.py wrote as `InMemoryFederatedData`;
`UniformGetClientSampler` draws `clients_per_round` clients a round;
clients take `local_steps` batches of `batch_size` from FedJAX's own
`ShuffleRepeatBatchHParams` (shuffled, repeated shards) with SGD and
momentum; `federated_averaging` weights the deltas by shard size and
applies them with server SGD. The global model is evaluated on the test
set every `every` rounds, each record taking the seconds since this script
started.
"""
import time

T0 = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import fedjax  # noqa: E402
from fedjax.algorithms import fed_avg  # noqa: E402
import haiku as hk  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

T1 = time.perf_counter()


def _forward(batch):
  x = batch["x"]
  for width in (32, 64):
    x = jax.nn.relu(hk.Conv2D(width, 3, padding="SAME")(x))
    x = hk.max_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return hk.Linear(10)(hk.Flatten()(x))


def main(data_dir, out):
  with open(os.path.join(data_dir, "meta.json")) as f:
    m = json.load(f)
  a = {k: np.load(os.path.join(data_dir, f"{k}.npy"))
       for k in ("train_x", "train_y", "test_x", "test_y", "indices",
                 "offsets")}
  model = fedjax.create_model_from_haiku(
      transformed_forward_pass=hk.transform(_forward),
      sample_batch={"x": a["test_x"][:1], "y": a["test_y"][:1]},
      train_loss=lambda b, p: fedjax.metrics.unreduced_cross_entropy_loss(
          b["y"], p),
      eval_metrics={"accuracy": fedjax.metrics.Accuracy()})
  off = a["offsets"]
  shards = {}
  for c in range(m["num_clients"]):
    ids = a["indices"][off[c]:off[c + 1]]
    shards[str(c).encode()] = {"x": a["train_x"][ids], "y": a["train_y"][ids]}
  fd = fedjax.InMemoryFederatedData(shards)
  algo = fed_avg.federated_averaging(
      fedjax.model_grad(model),
      fedjax.optimizers.sgd(m["lr"], momentum=m["momentum"]),
      fedjax.optimizers.sgd(m["server_lr"]),
      fedjax.ShuffleRepeatBatchHParams(batch_size=m["batch_size"],
                                       num_epochs=None,
                                       num_steps=m["local_steps"]))
  state = algo.init(model.init(jax.random.PRNGKey(m["seed"])))
  sampler = fedjax.client_samplers.UniformGetClientSampler(
      fd, num_clients=m["clients_per_round"], seed=m["seed"])
  test = fedjax.ClientDataset({"x": a["test_x"], "y": a["test_y"]})
  evals = []
  for r in range(1, m["rounds"] + 1):
    state, _ = algo.apply(state, sampler.sample())
    if r % m["every"] == 0 or r == m["rounds"]:
      acc = float(fedjax.evaluate_model(
          model, state.params,
          test.batch(fedjax.BatchHParams(batch_size=m["eval_batch"])))
                  ["accuracy"])
      evals.append([r, time.perf_counter() - T0, acc])
      print(f"fedjax round {r}: accuracy {acc:.4f} ({evals[-1][1]:.1f} s)",
            file=sys.stderr, flush=True)
  with open(out, "w") as f:
    json.dump(dict(evals=evals, import_s=T1 - T0), f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
