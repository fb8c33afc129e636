"""A tiny config for tests and smoke runs: synthetic 8x8 images, an MLP."""
from afl import config as afl_config


def get_config(arg=None):
  del arg
  c = afl_config.base_config()
  c.seed = 0
  c.num_clients = 16
  c.concurrency = 4
  c.data.update(name="synthetic", synthetic_train=512, synthetic_test=128,
                partition="dirichlet", dirichlet_alpha=1.0, min_shard_size=4)
  c.model.update(name="mlp", width=16)
  c.client.update(local_steps=3, batch_size=8, lr=0.1, optimizer="sgd",
                  backend="loop")
  c.server.update(mode="fedbuff", buffer_size=3, optimizer="sgd", lr=1.0)
  c.scheduler.update(heterogeneity=0.5, network_delay=0.2)
  c.aggregator.update(name="mean")
  c.stop.update(max_versions=12)
  c.eval.update(every_versions=4, batch_size=64)
  c.logging.update(progress=False, plots=False)
  return c
