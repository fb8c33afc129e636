"""A tiny config for tests and smoke runs: synthetic 8x8 images, an MLP."""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_clients = 16
  c.concurrency = 4
  c.data = dict(name="synthetic", synthetic_train=512, synthetic_test=128,
                partition="dirichlet", dirichlet_alpha=1.0, min_shard_size=4)
  c.model = dict(name="mlp", width=16)
  c.client = dict(local_steps=3, batch_size=8, lr=0.1, optimizer="sgd",
                  backend="loop")
  c.server = dict(mode="fedbuff", buffer_size=3, optimizer="sgd", lr=1.0)
  c.scheduler = dict(heterogeneity=0.5, network_delay=0.2)
  c.aggregator = dict(name="mean")
  c.stop = dict(max_versions=12)
  c.eval = dict(every_versions=4, batch_size=64)
  c.logging = dict(progress=False, plots=False)
  return c
