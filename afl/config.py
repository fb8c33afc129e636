"""ConfigDict -> frozen dataclasses, with one-line errors naming the key.

Only builders read a ConfigDict. `build_config(cfg)` walks the dataclass
tree below, rejects unknown keys, checks each value's type and range, and
returns an `ExperimentConfig` that jitted code may close over.

Sections that pick a registered component (`aggregator.name`,
`server.mode`, ...) are assembled from the registry (`component_section`):
their keys are the section's own fields plus every registered component's
parameters, each component validating its own. `stage.<name>.*` holds the
parameters of each registered pre-aggregation stage.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from afl import aggregators
from afl.aggregators import trust as trust_lib
from afl import attacks
from afl import compression
from afl import config_checks
from afl import config_tree
from afl.distributed import DistributedConfig
from afl import models
from afl import optim
from afl import sampling
from afl.data import partition as partition_lib
from afl.server import modes
from afl.server import stages
from afl.validate import ConfigError  # noqa: F401  (raised by build_config)
from afl.validate import choice as _choice
from afl.validate import fail as _fail
from afl.validate import in_range as _range

AttackConfig = attacks.AttackConfig
CompressionConfig = compression.CompressionConfig


_kw = dict(frozen=True, kw_only=True)


@dataclasses.dataclass(**_kw)
class DataConfig(config_tree.Component):
  """`partition` picks an `afl.data.partition` partitioner; its parameters
  (dirichlet_alpha, quantity_sigma) are keys of this section too."""
  REGISTRY = partition_lib.REGISTRY
  SELECTOR = "partition"
  name: str = "fashion_mnist"
  dir: str = ""
  partition: str = "dirichlet"  # a partition_lib.REGISTRY name
  min_shard_size: int = 10
  train_limit: int = 0  # 0 = all
  test_limit: int = 0
  hf_image_key: str = "image"
  hf_label_key: str = "label"
  text_key: str = "text"  # a local HF folder's text column (afl.data.hf_local)
  test_split: str = "test"  # its test split (one split: a seeded 10%)
  allow_download: bool = True
  # Text corpora (afl.data.text.CORPORA): tokens per example, tokenizer
  # folder ("" = the model checkpoint's, else the packaged MiniLM's).
  max_length: int = 64
  tokenizer: str = ""
  # name="synthetic": learnable random images (tests, smoke runs).
  synthetic_train: int = 1024
  synthetic_test: int = 256
  synthetic_shape: tuple = (8, 8, 1)
  synthetic_classes: int = 4

  def validate(self, p):
    _range(f"{p}.min_shard_size", self.min_shard_size, 1)
    _range(f"{p}.train_limit", self.train_limit, 0)
    _range(f"{p}.test_limit", self.test_limit, 0)
    _range(f"{p}.max_length", self.max_length, 2)
    _range(f"{p}.synthetic_train", self.synthetic_train, 1)
    _range(f"{p}.synthetic_test", self.synthetic_test, 1)
    _range(f"{p}.synthetic_classes", self.synthetic_classes, 2)


@dataclasses.dataclass(**_kw)
class ModelConfig(config_tree.Component):
  """`name` picks an `afl.models` entry; its parameters (width of afl's
  nets; checkpoint, lora_rank, lora_alpha, lora_targets, pooling of the HF
  families) are keys of this section too."""
  REGISTRY = models.REGISTRY
  name: str = "cnn"
  dtype: str = "float32"

  def validate(self, p):
    _choice(f"{p}.dtype", self.dtype, ("float32", "bfloat16"))


@dataclasses.dataclass(**_kw)
class ClientConfig:
  local_steps: int = 5
  local_epochs: int = 0  # > 0: FedAvg's E over the shard (shuffle), not steps
  batch_size: int = 32  # the expected batch size under poisson sampling
  # auto (poisson with client DP, shuffle with local_epochs, else
  # with_replacement) | poisson | shuffle | with_replacement (afl.sampling)
  sampling: str = "auto"
  lr: float = 0.05
  optimizer: str = "sgd"  # any optax alias taking learning_rate
  optimizer_kwargs: dict = dataclasses.field(default_factory=dict)
  backend: str = "auto"  # auto | vmap | loop | debug
  # Host threads training slices of a cohort side by side; 0 = auto (the
  # CPU cores on CPU, 1 on accelerators). Results do not depend on it.
  workers: int = 0
  # vmap on one device: clients per lax.map step; 0 = auto (8 on CPU, the
  # whole cohort on accelerators).
  vmap_chunk: int = 0
  # Non-DP steps: the batch gradient as the mean over micro-batches of this
  # many examples (must divide batch_size; >= batch_size: whole batch);
  # 0 = auto (16 for afl's conv nets on CPU, else the whole batch). The
  # same gradient up to float rounding.
  grad_microbatch: int = 0
  # True: train every dispatched-but-untrained task in one cohort when a
  # result is first needed; False: one task at a time (the reference).
  lazy_batching: bool = True

  def validate(self, p):
    _range(f"{p}.local_steps", self.local_steps, 1)
    _range(f"{p}.local_epochs", self.local_epochs, 0)
    _range(f"{p}.batch_size", self.batch_size, 1)
    _choice(f"{p}.sampling", self.sampling, ("auto",) + sampling.SCHEMES)
    if self.local_epochs and self.sampling not in ("auto", "shuffle"):
      _fail(f"{p}.local_epochs", f"epochs need {p}.sampling=shuffle, got "
            f"{p}.sampling={self.sampling}")
    _range(f"{p}.lr", self.lr, 0, lo_open=True)
    optim.check_optimizer(p, self.optimizer, self.optimizer_kwargs)
    _choice(f"{p}.backend", self.backend, ("auto", "vmap", "loop", "debug"))
    _range(f"{p}.workers", self.workers, 0)
    _range(f"{p}.vmap_chunk", self.vmap_chunk, 0)
    _range(f"{p}.grad_microbatch", self.grad_microbatch, 0)
    if 0 < self.grad_microbatch < self.batch_size and (
        self.batch_size % self.grad_microbatch):
      _fail(f"{p}.grad_microbatch", f"{self.grad_microbatch} must divide "
            f"{p}.batch_size={self.batch_size}")


@dataclasses.dataclass(**_kw)
class ServerConfig(config_tree.Component):
  """`mode` picks an `afl.server.modes` entry; its parameters (buffer_size,
  mixing_alpha) are keys of this section too."""
  REGISTRY = modes.REGISTRY
  SELECTOR = "mode"
  mode: str = "fedbuff"  # fedasync | fedbuff | sync
  optimizer: str = "sgd"
  optimizer_kwargs: dict = dataclasses.field(default_factory=dict)
  lr: float = 1.0
  staleness_fn: str = "polynomial"  # constant | polynomial | hinge
  staleness_a: float = 0.5
  staleness_b: float = 4.0  # hinge threshold
  max_staleness: int = -1  # -1: no cut-off
  weight_by_examples: bool = True
  # Rows of one client in one aggregation become one row (their weighted
  # mean): every client counts once in robust rules, trust, DP, secagg.
  merge_client_rows: bool = True

  def validate(self, p):
    optim.check_optimizer(p, self.optimizer, self.optimizer_kwargs)
    _range(f"{p}.lr", self.lr, 0, lo_open=True)
    _choice(f"{p}.staleness_fn", self.staleness_fn,
            ("constant", "polynomial", "hinge"))
    _range(f"{p}.staleness_a", self.staleness_a, 0)
    _range(f"{p}.staleness_b", self.staleness_b, 0)
    _range(f"{p}.max_staleness", self.max_staleness, -1)


@dataclasses.dataclass(**_kw)
class SchedulerConfig:
  """Virtual-time model: duration = local_steps*step_time*speed + delay."""
  step_time: float = 1.0  # mean virtual seconds per local step at speed 1
  duration_dist: str = "exponential"  # exponential | lognormal | constant
  duration_sigma: float = 0.5  # lognormal shape
  heterogeneity: float = 0.5  # client speed ~ LogNormal(0, heterogeneity)
  network_delay: float = 0.5  # mean of an exponential delay; 0 = none
  dropout_prob: float = 0.0

  def validate(self, p):
    _range(f"{p}.step_time", self.step_time, 0, lo_open=True)
    _choice(f"{p}.duration_dist", self.duration_dist,
            ("exponential", "lognormal", "constant"))
    _range(f"{p}.duration_sigma", self.duration_sigma, 0)
    _range(f"{p}.heterogeneity", self.heterogeneity, 0)
    _range(f"{p}.network_delay", self.network_delay, 0)
    _range(f"{p}.dropout_prob", self.dropout_prob, 0, 1)
    if self.dropout_prob == 1:
      _fail(f"{p}.dropout_prob", "must be < 1 (no client would ever arrive)")


@dataclasses.dataclass(**_kw)
class AggregatorConfig(config_tree.Component):
  """`name` picks the aggregator; its parameters (`afl.aggregators.params`)
  are keys of this section too."""
  REGISTRY = aggregators.REGISTRY
  name: str = "mean"
  norm_clip: float = 0.0  # > 0: clip every update to this L2 norm first
  window: int = 8  # fedasync: robust rule over the last `window` arrivals
  stages: tuple = ()  # pre-aggregation stages, in order (section `stage`)

  def validate(self, p):
    _range(f"{p}.norm_clip", self.norm_clip, 0)
    _range(f"{p}.window", self.window, 1)
    for name in self.stages:
      _choice(f"{p}.stages", name, stages.REGISTRY.names())


@dataclasses.dataclass(**_kw)
class StageSection(config_tree.PerComponent):
  """`stage.<name>.<key>`: each pre-aggregation stage's parameters."""
  REGISTRY = stages.REGISTRY


@dataclasses.dataclass(**_kw)
class TrustSection(trust_lib.TrustConfig):
  """Trust scores with soft quarantine: `enabled` and the keys of
  `afl.aggregators.trust.TrustConfig`, which documents and validates them;
  `reference` is what each update is scored against: "median" (of the other
  updates, leave-one-out) or "root" (FLTrust: the server's own update on
  `root_examples` held-out training examples, `afl.server.root`)."""
  enabled: bool = False
  reference: str = "median"
  root_examples: int = 100

  def validate(self, p: str = "trust"):
    super().validate(p)
    _choice(f"{p}.reference", self.reference, ("median", "root"))
    _range(f"{p}.root_examples", self.root_examples, 1)

  def trust_config(self) -> trust_lib.TrustConfig:
    return trust_lib.TrustConfig(**{
        f.name: getattr(self, f.name)
        for f in dataclasses.fields(trust_lib.TrustConfig)})


@dataclasses.dataclass(**_kw)
class DPConfig:
  """Differential privacy; see afl/privacy and the README's DP section."""
  mode: str = "none"  # none | client (DP-SGD) | server (DP-FedAvg)
  clip_norm: float = 1.0
  noise_multiplier: float = 1.0
  target_epsilon: float = 0.0  # > 0: calibrate noise_multiplier to it
  delta: float = 1e-5
  accountant: str = "rdp"  # rdp | pld
  microbatch_size: int = 0  # client mode: per-example grads in chunks
  # Server mode accounting: none (each client's aggregations composed, no
  # amplification) | poisson (q = rows / num_clients: a labelled assumption)
  participation: str = "none"

  def validate(self, p):
    _choice(f"{p}.mode", self.mode, ("none", "client", "server"))
    _range(f"{p}.clip_norm", self.clip_norm, 0, lo_open=True)
    _range(f"{p}.noise_multiplier", self.noise_multiplier, 0)
    _range(f"{p}.target_epsilon", self.target_epsilon, 0)
    _range(f"{p}.delta", self.delta, 0, 1, lo_open=True)
    _choice(f"{p}.accountant", self.accountant, ("rdp", "pld"))
    _range(f"{p}.microbatch_size", self.microbatch_size, 0)
    _choice(f"{p}.participation", self.participation, ("none", "poisson"))


@dataclasses.dataclass(**_kw)
class SecAggConfig:
  """Simulated secure aggregation (pairwise masks, Bonawitz et al. 2017)."""
  enabled: bool = False
  scale: float = 65536.0  # fixed-point scale of the 2^32 ring
  drop_after_masking: float = 0.0  # chance a client drops after masking

  def validate(self, p):
    _range(f"{p}.scale", self.scale, 1)
    _range(f"{p}.drop_after_masking", self.drop_after_masking, 0, 1)
    if self.drop_after_masking == 1:
      _fail(f"{p}.drop_after_masking", "must be < 1")


@dataclasses.dataclass(**_kw)
class StopConfig:
  UNBOUNDED: ClassVar[tuple] = ("max_virtual_time", "max_wall_seconds")
  max_versions: int = 100
  max_virtual_time: float = math.inf
  max_wall_seconds: float = math.inf
  # The divergence guard (afl/divergence.py): a test loss above this stops
  # the run as diverged, as do non-finite parameters.
  max_test_loss: float = 1e4

  def validate(self, p):
    _range(f"{p}.max_test_loss", self.max_test_loss, 0, lo_open=True)
    _range(f"{p}.max_versions", self.max_versions, 1)
    _range(f"{p}.max_virtual_time", self.max_virtual_time, 0, lo_open=True)
    _range(f"{p}.max_wall_seconds", self.max_wall_seconds, 0, lo_open=True)


@dataclasses.dataclass(**_kw)
class EvalConfig:
  every_versions: int = 10
  batch_size: int = 1000

  def validate(self, p):
    _range(f"{p}.every_versions", self.every_versions, 1)
    _range(f"{p}.batch_size", self.batch_size, 1)


@dataclasses.dataclass(**_kw)
class CheckpointConfig:
  every_versions: int = 0  # 0: only at the end of the run
  max_to_keep: int = 2
  enabled: bool = True  # needs --workdir

  def validate(self, p):
    _range(f"{p}.every_versions", self.every_versions, 0)
    _range(f"{p}.max_to_keep", self.max_to_keep, 1)


@dataclasses.dataclass(**_kw)
class LoggingConfig:
  progress: bool = True
  plots: bool = True
  tensorboard: bool = False  # event files in workdir/tensorboard (tensorboardX)

  def validate(self, p):
    del p


@dataclasses.dataclass(**_kw)
class ExperimentConfig:
  seed: int = 0
  num_clients: int = 100
  concurrency: int = 10
  data: DataConfig = config_tree.default(DataConfig)
  model: ModelConfig = config_tree.default(ModelConfig)
  client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
  server: ServerConfig = config_tree.default(ServerConfig)
  scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
  aggregator: AggregatorConfig = config_tree.default(AggregatorConfig)
  stage: StageSection = config_tree.default(StageSection)
  trust: TrustSection = dataclasses.field(default_factory=TrustSection)
  stop: StopConfig = dataclasses.field(default_factory=StopConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
  checkpoint: CheckpointConfig = dataclasses.field(
      default_factory=CheckpointConfig)
  distributed: DistributedConfig = dataclasses.field(
      default_factory=DistributedConfig)
  dp: DPConfig = dataclasses.field(default_factory=DPConfig)
  secagg: SecAggConfig = dataclasses.field(default_factory=SecAggConfig)
  attack: AttackConfig = config_tree.default(AttackConfig)
  compression: CompressionConfig = dataclasses.field(
      default_factory=CompressionConfig)

  def validate(self, p):
    # PRNGKey keeps 32 bits: larger seeds would alias smaller ones.
    _range("seed", self.seed, 0, 2**32 - 1)
    _range("num_clients", self.num_clients, 1)
    _range("concurrency", self.concurrency, 1)
    if self.concurrency > self.num_clients:
      _fail("concurrency", f"must be <= num_clients={self.num_clients}, "
            f"got {self.concurrency}")
    config_checks.check_combinations(self)
    del p

  def sampling(self) -> str:
    """`client.sampling` with `auto` resolved."""
    c = self.client
    if c.sampling != "auto":
      return c.sampling
    if c.local_epochs:
      return "shuffle"
    return "poisson" if self.dp.mode == "client" else "with_replacement"

  def rows_per_aggregation(self) -> int:
    """Updates per aggregation of the configured server mode."""
    return self.server.entry.prop("rows")(self)


def build_config(cfg) -> ExperimentConfig:
  """Validates a ConfigDict into an `ExperimentConfig` (raises ConfigError)."""
  return config_tree.build(ExperimentConfig, cfg, "")


def base_config():
  """A ConfigDict holding every key with its default; config files start
  from it so that any key can be overridden with --config.a.b=value."""
  if config_tree.ml_collections is None:
    raise ImportError("afl.config.base_config needs ml-collections: "
                      "pip install ml-collections")
  return config_tree.ml_collections.ConfigDict(
      dataclasses.asdict(ExperimentConfig()))


def to_dict(cfg: ExperimentConfig) -> dict:
  """A JSON-serializable dict of the validated config (inf as a string)."""
  def fix(x):
    if isinstance(x, float) and math.isinf(x):
      return "inf"
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [fix(v) for v in x]
    return x
  return fix(dataclasses.asdict(cfg))
