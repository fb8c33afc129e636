"""ConfigDict -> frozen dataclasses, with one-line errors naming the key.

Only builders read a ConfigDict (STYLE.md #3). `build_config(cfg)` walks the
dataclass tree below, rejects unknown keys, checks each value's type and
range, and returns an `ExperimentConfig` that jitted code may close over.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

try:
  import ml_collections
except ImportError:  # bare JAX images (benchmarks/gpu_suite.sh) use only the
  ml_collections = None  # dataclasses; ConfigDicts cannot exist there


class ConfigError(ValueError):
  """A bad config value; the message is one line naming the key."""


def _fail(path: str, msg: str):
  raise ConfigError(f"config.{path}: {msg}")


def _choice(path, value, options):
  if value not in options:
    _fail(path, f"must be one of {list(options)}, got {value!r}")


def _range(path, value, lo=None, hi=None, lo_open=False):
  if lo is not None and (value < lo or (lo_open and value == lo)):
    _fail(path, f"must be {'>' if lo_open else '>='} {lo}, got {value!r}")
  if hi is not None and value > hi:
    _fail(path, f"must be <= {hi}, got {value!r}")


_kw = dict(frozen=True, kw_only=True)


@dataclasses.dataclass(**_kw)
class DataConfig:
  name: str = "fashion_mnist"
  dir: str = ""
  partition: str = "dirichlet"  # iid | dirichlet | quantity_skew
  dirichlet_alpha: float = 0.5
  quantity_sigma: float = 1.0
  min_shard_size: int = 10
  train_limit: int = 0  # 0 = all
  test_limit: int = 0
  hf_image_key: str = "image"
  hf_label_key: str = "label"
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
    _choice(f"{p}.partition", self.partition, ("iid", "dirichlet", "quantity_skew"))
    _range(f"{p}.dirichlet_alpha", self.dirichlet_alpha, 0, lo_open=True)
    _range(f"{p}.quantity_sigma", self.quantity_sigma, 0)
    _range(f"{p}.min_shard_size", self.min_shard_size, 1)
    _range(f"{p}.train_limit", self.train_limit, 0)
    _range(f"{p}.test_limit", self.test_limit, 0)
    _range(f"{p}.max_length", self.max_length, 2)


@dataclasses.dataclass(**_kw)
class ModelConfig:
  name: str = "cnn"  # see afl.models.MODELS
  width: int = 0  # base channels / hidden width; 0 = the model default
  dtype: str = "float32"
  # HF families (bert, vit): checkpoint folder / cached hub id / "minilm".
  checkpoint: str = ""
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple = ("query", "value")
  pooling: str = "cls"  # cls | mean (| pooler for bert)

  def validate(self, p):
    from afl import models  # pylint: disable=g-import-not-at-top
    _choice(f"{p}.name", self.name, sorted(set(models.MODELS) | models.HF_MODELS))
    _range(f"{p}.width", self.width, 0)
    _choice(f"{p}.dtype", self.dtype, ("float32", "bfloat16"))
    _range(f"{p}.lora_rank", self.lora_rank, 0)
    _range(f"{p}.lora_alpha", self.lora_alpha, 0, lo_open=True)
    allowed = ("query", "key", "value", "attn_out", "mlp_in", "mlp_out")
    for t in self.lora_targets:
      _choice(f"{p}.lora_targets", t, allowed)
    _choice(f"{p}.pooling", self.pooling, ("cls", "mean", "pooler"))


def _check_optax(path: str, name: str):
  import optax  # pylint: disable=g-import-not-at-top
  fn = getattr(optax, name, None)
  if not callable(fn) or name.startswith("_"):
    _fail(path, f"{name!r} is not an optax optimizer (e.g. sgd, adam, adamw)")


@dataclasses.dataclass(**_kw)
class ClientConfig:
  local_steps: int = 5
  batch_size: int = 32
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
    _range(f"{p}.batch_size", self.batch_size, 1)
    _range(f"{p}.lr", self.lr, 0, lo_open=True)
    _check_optax(f"{p}.optimizer", self.optimizer)
    _choice(f"{p}.backend", self.backend, ("auto", "vmap", "loop", "debug"))
    _range(f"{p}.workers", self.workers, 0)
    _range(f"{p}.vmap_chunk", self.vmap_chunk, 0)
    _range(f"{p}.grad_microbatch", self.grad_microbatch, 0)
    if 0 < self.grad_microbatch < self.batch_size and (
        self.batch_size % self.grad_microbatch):
      _fail(f"{p}.grad_microbatch", f"{self.grad_microbatch} must divide "
            f"{p}.batch_size={self.batch_size}")


@dataclasses.dataclass(**_kw)
class ServerConfig:
  mode: str = "fedbuff"  # fedasync | fedbuff | sync
  buffer_size: int = 10  # fedbuff: K arrivals per version
  optimizer: str = "sgd"
  optimizer_kwargs: dict = dataclasses.field(default_factory=dict)
  lr: float = 1.0
  mixing_alpha: float = 0.6  # fedasync
  staleness_fn: str = "polynomial"  # constant | polynomial | hinge
  staleness_a: float = 0.5
  staleness_b: float = 4.0  # hinge threshold
  max_staleness: int = -1  # -1: no cut-off
  weight_by_examples: bool = True

  def validate(self, p):
    _choice(f"{p}.mode", self.mode, ("fedasync", "fedbuff", "sync"))
    _range(f"{p}.buffer_size", self.buffer_size, 1)
    _check_optax(f"{p}.optimizer", self.optimizer)
    _range(f"{p}.lr", self.lr, 0, lo_open=True)
    _range(f"{p}.mixing_alpha", self.mixing_alpha, 0, 1, lo_open=True)
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
class AggregatorConfig:
  """`name` picks the kernel; the rest are its parameters (README table)."""
  name: str = "mean"
  weighted: bool = False  # median / trimmed_mean / multi_krum: use weights
  beta: float = 0.1  # trimmed_mean, hybrid: fraction trimmed per side
  num_byzantine: int = 1  # krum, multi_krum
  num_selected: int = 2  # multi_krum
  max_iters: int = 100  # geomed (Weiszfeld)
  tol: float = 1e-6  # geomed
  eps: float = 1e-6  # geomed smoothing
  tau: float = 1.0  # centered_clip radius
  iters: int = 3  # centered_clip
  clip_multiplier: float = 2.0  # hybrid: clip at multiplier x median norm
  min_trusted: int = 3  # hybrid: below this, fall back to the median
  weight_threshold: float = 0.5  # hybrid: a row is trusted above this
  norm_clip: float = 0.0  # > 0: clip every update to this L2 norm first
  window: int = 8  # fedasync: robust rule over the last `window` arrivals

  def validate(self, p):
    from afl import aggregators  # pylint: disable=g-import-not-at-top
    _choice(f"{p}.name", self.name, aggregators.names())
    _range(f"{p}.beta", self.beta, 0, 0.5)
    if self.beta == 0.5:
      _fail(f"{p}.beta", "must be < 0.5 (nothing would be left)")
    _range(f"{p}.num_byzantine", self.num_byzantine, 0)
    _range(f"{p}.num_selected", self.num_selected, 1)
    _range(f"{p}.max_iters", self.max_iters, 1)
    _range(f"{p}.tol", self.tol, 0)
    _range(f"{p}.eps", self.eps, 0, lo_open=True)
    _range(f"{p}.tau", self.tau, 0, lo_open=True)
    _range(f"{p}.iters", self.iters, 1)
    _range(f"{p}.clip_multiplier", self.clip_multiplier, 0, lo_open=True)
    _range(f"{p}.min_trusted", self.min_trusted, 1)
    _range(f"{p}.weight_threshold", self.weight_threshold, 0)
    _range(f"{p}.norm_clip", self.norm_clip, 0)
    _range(f"{p}.window", self.window, 1)

  def kwargs(self) -> dict:
    """The factory arguments of the chosen aggregator."""
    return {
        "mean": {},
        "median": dict(weighted=self.weighted),
        "trimmed_mean": dict(beta=self.beta, weighted=self.weighted),
        "krum": dict(num_byzantine=self.num_byzantine),
        "multi_krum": dict(num_byzantine=self.num_byzantine,
                           num_selected=self.num_selected,
                           weighted=self.weighted),
        "geomed": dict(max_iters=self.max_iters, tol=self.tol, eps=self.eps),
        "centered_clip": dict(tau=self.tau, iters=self.iters),
        "hybrid": dict(clip_multiplier=self.clip_multiplier, beta=self.beta,
                       min_trusted=self.min_trusted,
                       weight_threshold=self.weight_threshold),
    }[self.name]


@dataclasses.dataclass(**_kw)
class TrustSection:
  """Trust scores with soft quarantine (afl/aggregators/trust.py)."""
  enabled: bool = False
  ema: float = 0.8
  threshold: float = 0.4
  release_threshold: float = 0.6
  quarantine_scale: float = 0.1

  def validate(self, p):
    _range(f"{p}.ema", self.ema, 0, 1)
    if self.ema == 1:
      _fail(f"{p}.ema", "must be < 1 (trust would never move)")
    _range(f"{p}.threshold", self.threshold, 0, 1, lo_open=True)
    if not self.threshold < self.release_threshold <= 1:
      _fail(f"{p}.release_threshold", f"must be in (threshold="
            f"{self.threshold}, 1], got {self.release_threshold}")
    _range(f"{p}.quarantine_scale", self.quarantine_scale, 0, 1,
           lo_open=True)

  def trust_config(self):
    from afl.aggregators import trust  # pylint: disable=g-import-not-at-top
    return trust.TrustConfig(ema=self.ema, threshold=self.threshold,
                             release_threshold=self.release_threshold,
                             quarantine_scale=self.quarantine_scale)


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

  def validate(self, p):
    _choice(f"{p}.mode", self.mode, ("none", "client", "server"))
    _range(f"{p}.clip_norm", self.clip_norm, 0, lo_open=True)
    _range(f"{p}.noise_multiplier", self.noise_multiplier, 0)
    _range(f"{p}.target_epsilon", self.target_epsilon, 0)
    _range(f"{p}.delta", self.delta, 0, 1, lo_open=True)
    _choice(f"{p}.accountant", self.accountant, ("rdp", "pld"))
    _range(f"{p}.microbatch_size", self.microbatch_size, 0)


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
  max_versions: int = 100
  max_virtual_time: float = math.inf
  max_wall_seconds: float = math.inf

  def validate(self, p):
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
class DistributedConfig:
  """Multi-host runs: `jax.distributed.initialize` before anything else.
  Empty address/0 processes let JAX detect them (e.g. on TPU pods, SLURM)."""
  enabled: bool = False
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1

  def validate(self, p):
    _range(f"{p}.num_processes", self.num_processes, 0)
    _range(f"{p}.process_id", self.process_id, -1)

  def initialize(self):
    if not self.enabled:
      return
    import jax  # pylint: disable=g-import-not-at-top
    kwargs = {}
    if self.coordinator_address:
      kwargs["coordinator_address"] = self.coordinator_address
    if self.num_processes:
      kwargs["num_processes"] = self.num_processes
    if self.process_id >= 0:
      kwargs["process_id"] = self.process_id
    # CPU devices of several processes talk through gloo (no-op elsewhere).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


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
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
  server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
  scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
  aggregator: AggregatorConfig = dataclasses.field(
      default_factory=AggregatorConfig)
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
  attack: "AttackConfig" = dataclasses.field(
      default_factory=lambda: _attacks().AttackConfig())
  compression: "CompressionConfig" = dataclasses.field(
      default_factory=lambda: _compression().CompressionConfig())

  def validate(self, p):
    _range("seed", self.seed, 0)
    _range("num_clients", self.num_clients, 1)
    _range("concurrency", self.concurrency, 1)
    if self.concurrency > self.num_clients:
      _fail("concurrency", f"must be <= num_clients={self.num_clients}, "
            f"got {self.concurrency}")
    _check_combinations(self)
    del p


def _is_text(name: str) -> bool:
  from afl.data import text  # pylint: disable=g-import-not-at-top
  return name in text.CORPORA


def _attacks():
  from afl import attacks  # pylint: disable=g-import-not-at-top
  return attacks


def _compression():
  from afl import compression  # pylint: disable=g-import-not-at-top
  return compression


def _check_combinations(c: "ExperimentConfig"):
  """Combinations that make no sense fail here, naming the key to change."""
  agg = c.aggregator.name
  if c.dp.mode == "server":
    if agg != "mean":
      _fail("dp.mode", f"server DP calibrates noise to the sensitivity of a "
            f"sum of clipped updates, which a {agg!r} aggregate does not have;"
            f" use aggregator.name=mean or dp.mode=client")
    if c.server.mode == "fedasync":
      _fail("dp.mode", "server DP needs a buffer or round to add noise to; "
            "use server.mode=fedbuff or sync")
    if c.server.weight_by_examples:
      _fail("server.weight_by_examples", "must be False with dp.mode=server "
            "(example weights would change the sensitivity)")
  if c.attack.kind == "backdoor" and _is_text(c.data.name):
    _fail("attack.kind", "backdoor stamps a pixel trigger; it needs image "
          f"data, not the text corpus {c.data.name!r}")
  if c.trust.enabled and c.secagg.enabled:
    _fail("trust.enabled", "trust scores need individual updates, which "
          "secure aggregation hides; disable one of them")
  if c.trust.enabled and c.dp.mode == "server":
    _fail("trust.enabled", "server DP aggregates clipped updates with noise "
          "calibrated to the mean; trust reweighting is not covered by it")
  if agg in ("krum", "multi_krum"):
    k = c.server.buffer_size if c.server.mode == "fedbuff" else (
        c.concurrency if c.server.mode == "sync" else c.aggregator.window)
    need = 2 * c.aggregator.num_byzantine + 3
    if k < need:
      _fail("aggregator.num_byzantine", f"krum needs at least 2f+3={need} "
            f"updates per aggregation, but this setup aggregates {k}")
  if c.secagg.enabled:
    if agg != "mean":
      _fail("secagg.enabled", f"secure aggregation only reveals the sum; "
            f"aggregator {agg!r} needs individual updates (use mean)")
    if c.server.mode == "fedasync":
      _fail("secagg.enabled", "secure aggregation needs several updates per "
            "aggregation; use server.mode=fedbuff or sync")
    if c.server.weight_by_examples:
      _fail("server.weight_by_examples", "must be False with secagg.enabled "
            "(the server cannot weight updates it never sees)")


def _coerce(path: str, value: Any, hint: Any) -> Any:
  """Checks `value` against the annotation `hint`, allowing int -> float."""
  origin = typing.get_origin(hint)
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      _fail(path, f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      _fail(path, f"expected an integer, got {type(value).__name__} {value!r}")
    return value
  if hint is bool:
    if not isinstance(value, bool):
      _fail(path, f"expected true/false, got {type(value).__name__} {value!r}")
    return value
  if hint is str:
    if not isinstance(value, str):
      _fail(path, f"expected a string, got {type(value).__name__} {value!r}")
    return value
  if hint is tuple or origin is tuple:
    if not isinstance(value, (list, tuple)):
      _fail(path, f"expected a tuple, got {type(value).__name__} {value!r}")
    return tuple(value)
  if hint is dict:
    if _is_config_dict(value):
      return value.to_dict()
    if not isinstance(value, dict):
      _fail(path, f"expected a dict, got {type(value).__name__} {value!r}")
    return dict(value)
  if origin is types.UnionType or origin is typing.Union:
    if value is None and type(None) in typing.get_args(hint):
      return None
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    return _coerce(path, value, inner[0]) if len(inner) == 1 else value
  return value


def _is_config_dict(value) -> bool:
  return (ml_collections is not None
          and isinstance(value, ml_collections.ConfigDict))


def _build(cls, cfg, path: str):
  hints = typing.get_type_hints(
      cls, localns=dict(AttackConfig=_attacks().AttackConfig,
                        CompressionConfig=_compression().CompressionConfig))
  fields = {f.name: f for f in dataclasses.fields(cls)}
  given = dict(cfg.items()) if cfg is not None else {}
  for key in given:
    if key not in fields:
      where = f"config.{path}.{key}" if path else f"config.{key}"
      raise ConfigError(f"{where}: unknown key; known keys here: "
                        f"{sorted(fields)}")
  kwargs = {}
  for name, value in given.items():
    sub = f"{path}.{name}" if path else name
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
      if not (isinstance(value, dict) or _is_config_dict(value)):
        _fail(sub, f"expected a section, got {value!r}")
      kwargs[name] = _build(hint, value, sub)
    else:
      kwargs[name] = _coerce(sub, value, hint)
  obj = cls(**kwargs)
  obj.validate(path)
  return obj


def build_config(cfg: ml_collections.ConfigDict | dict) -> ExperimentConfig:
  """Validates a ConfigDict into an `ExperimentConfig` (raises ConfigError)."""
  return _build(ExperimentConfig, cfg, "")


def base_config() -> ml_collections.ConfigDict:
  """A ConfigDict holding every key with its default; config files start
  from it so that any key can be overridden with --config.a.b=value."""
  if ml_collections is None:
    raise ImportError("afl.config.base_config needs ml-collections: "
                      "pip install ml-collections")
  return ml_collections.ConfigDict(dataclasses.asdict(ExperimentConfig()))


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
