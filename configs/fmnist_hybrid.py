"""The offline demo: asynchronous FedBuff on Fashion-MNIST, non-IID clients.

100 clients with Dirichlet(0.5) label skew, 10 training at a time with
heterogeneous speeds; a 50k-parameter CNN; the server buffers 10 arrivals
per version. Reads the IDX files of Debian's `dataset-fashion-mnist` (or
data.dir). Runs in under 3 minutes on 2 CPU cores (README).
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_clients = 100
  c.concurrency = 10
  c.data = dict(name="fashion_mnist", dir="", partition="dirichlet",
                dirichlet_alpha=0.5, min_shard_size=20)
  c.model = dict(name="cnn", width=32)
  c.client = dict(local_steps=5, batch_size=32, lr=0.05, optimizer="sgd",
                  optimizer_kwargs=dict(momentum=0.9), backend="auto")
  c.server = dict(mode="fedbuff", buffer_size=10, optimizer="sgd", lr=1.0,
                  staleness_fn="polynomial", staleness_a=0.5)
  c.scheduler = dict(step_time=1.0, duration_dist="exponential",
                     heterogeneity=0.5, network_delay=1.0, dropout_prob=0.05)
  c.aggregator = dict(name="mean")
  c.stop = dict(max_versions=150)
  c.eval = dict(every_versions=10, batch_size=2000)
  return c
