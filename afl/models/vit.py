"""Vision Transformer (ViT) encoder in Flax linen, with LoRA layers.

Matches HuggingFace `ViTModel` hidden states: conv patch embedding, a
learned [CLS] token and position embeddings, pre-LN blocks (attention and a
GELU MLP), and a final LayerNorm. Modules are named after HF's so
`afl.models.hf_weights` loads `google/vit-*` checkpoints by name. Images are
NHWC float arrays, like the rest of `afl.models` (HF takes NCHW).

References:
  Dosovitskiy, A., Beyer, L., Kolesnikov, A., Weissenborn, D., Zhai, X.,
  Unterthiner, T., Dehghani, M., Minderer, M., Heigold, G., Gelly, S.,
  Uszkoreit, J. and Houlsby, N. (2021). An Image is Worth 16x16 Words:
  Transformers for Image Recognition at Scale. ICLR.
  Hu et al. (2021), LoRA, arXiv:2106.09685.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax  # noqa: F401  (the docstring example uses it)
import jax.numpy as jnp

from afl.models.lora import HEAD, LoRAConfig
from afl.models.transformer import (EncoderConfig, SelfAttention, _Backbone,
                                    _Block, _dense, _Intermediate,
                                    _layer_norm, _Pooler)

POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig(EncoderConfig):
  """HF ViT config.json fields beyond EncoderConfig (defaults: ViT-B/16)."""
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  qkv_bias: bool = True
  pooler_output_size: int = 0  # 0: hidden_size, as HF's default
  pooler_act: str = "tanh"

  def _check(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of "
                       f"patch_size {self.patch_size}")
    if self.pooler_act != "tanh":
      raise ValueError(f"only pooler_act='tanh' is supported, got "
                       f"{self.pooler_act!r}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


class _PatchEmbeddings(nn.Module):
  config: ViTConfig
  dtype: Any

  @nn.compact
  def __call__(self, images):
    p = self.config.patch_size
    # A p x p conv with stride p is the paper's "linear projection of
    # flattened patches" (Dosovitskiy et al. 2021, eq. 1), and is how HF
    # stores it, so its OIHW weight maps onto an HWIO kernel.
    x = nn.Conv(self.config.hidden_size, (p, p), (p, p), padding="VALID",
                dtype=self.dtype, name="projection")(images)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class _Embeddings(nn.Module):
  config: ViTConfig
  dtype: Any

  @nn.compact
  def __call__(self, images, deterministic):
    c = self.config
    if images.shape[1:] != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(
          f"ViT expects NHWC images of shape (B, {c.image_size}, "
          f"{c.image_size}, {c.num_channels}), got {images.shape}")
    x = _PatchEmbeddings(c, self.dtype, name="patch_embeddings")(images)
    init = nn.initializers.truncated_normal(0.02)
    cls = self.param("cls_token", init, (1, 1, c.hidden_size), jnp.float32)
    pos = self.param("position_embeddings", init,
                     (1, c.num_patches + 1, c.hidden_size), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)
    return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class _DenseDropout(_Block):
  """Dense (LoRA target `target`) + dropout: HF's ViT*Output modules."""
  target: str

  @nn.compact
  def __call__(self, x, deterministic):
    y = _dense(self.config.hidden_size, "dense", self.lora, self.dtype,
               self.target)(x, deterministic)
    return nn.Dropout(self.config.hidden_dropout_prob)(
        y, deterministic=deterministic)


class _Attention(_Block):

  @nn.compact
  def __call__(self, x, deterministic):
    c = self.config
    ctx = SelfAttention(c.num_attention_heads, c.attention_probs_dropout_prob,
                        self.lora, use_bias=c.qkv_bias, dtype=self.dtype,
                        name="attention")(x, None, deterministic)
    out = _DenseDropout(c, self.lora, self.dtype, "attn_out", name="output")
    return out(ctx, deterministic)


class ViTLayer(_Block):
  """Pre-LN block: x + attn(LN(x)), then h + mlp(LN(h))."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = self.config
    ln = lambda name: _layer_norm(c.layer_norm_eps, self.dtype, name)
    x = x + _Attention(c, self.lora, self.dtype, name="attention")(
        ln("layernorm_before")(x), deterministic)
    h = _Intermediate(c, self.lora, self.dtype, name="intermediate")(
        ln("layernorm_after")(x), deterministic)
    out = _DenseDropout(c, self.lora, self.dtype, "mlp_out", name="output")
    return x + out(h, deterministic)


class _Encoder(_Block):

  @nn.compact
  def __call__(self, x, deterministic):
    for i in range(self.config.num_hidden_layers):
      x = ViTLayer(self.config, self.lora, self.dtype, name=f"layer_{i}")(
          x, deterministic)
    return x


class ViTModel(_Backbone):
  """The ViT encoder; returns HF's `last_hidden_state` (after the final LN).

  Attributes:
    config: architecture (`ViTConfig.from_hf(...)`).
    lora: which Dense layers carry adapters; rank 0 is the plain model.
    add_pooling_layer: include HF's tanh pooler over [CLS].
    dtype: computation dtype; parameters are float32.

  Call: `(images [B, H, W, C] float, deterministic=True)` ->
  `(last_hidden_state [B, 1 + patches, D] float32, pooled or None)`.

  >>> cfg = ViTConfig(hidden_size=8, num_hidden_layers=1,
  ...                 num_attention_heads=2, intermediate_size=16,
  ...                 image_size=8, patch_size=4)
  >>> m = ViTModel(cfg)
  >>> x = jnp.zeros((2, 8, 8, 3))
  >>> h, _ = m.apply(m.init(jax.random.key(0), x), x)
  >>> h.shape
  (2, 5, 8)

  References:
    Dosovitskiy et al. (2021), ViT, sec. 3.1; Hu et al. (2021), LoRA.
  """

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    c = self.config
    x = _Embeddings(c, self.dtype, name="embeddings")(
        images.astype(self.dtype), deterministic)
    x = _Encoder(c, self.lora, self.dtype, name="encoder")(x, deterministic)
    x = _layer_norm(c.layer_norm_eps, self.dtype, "layernorm")(x)
    pooled = None
    if self.add_pooling_layer:
      pooled = _Pooler(c.pooler_output_size or c.hidden_size, self.dtype,
                       name="pooler")(x).astype(jnp.float32)
    return x.astype(jnp.float32), pooled


class ViTClassifier(nn.Module):
  """ViT encoder (under `vit`) + linear head (under `classifier`).

  Attributes:
    config: architecture.
    num_classes: head width.
    lora: adapters of the encoder.
    pooling: 'cls' (the final-LN [CLS] state, as HF ViTForImageClassification)
      or 'mean' (mean over the patch tokens).
    dtype: computation dtype.

  Call: `(images [B, H, W, C], deterministic=True) -> logits [B, classes]`.

  References:
    Dosovitskiy et al. (2021), ViT, sec. 3.1 (CLS head) and appendix D.3
    (global average pooling); Hu et al. (2021), LoRA.
  """
  config: ViTConfig
  num_classes: int
  lora: LoRAConfig = LoRAConfig()
  pooling: str = "cls"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    if self.pooling not in POOLINGS:
      raise ValueError(
          f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
    hidden, _ = ViTModel(self.config, self.lora, False, self.dtype,
                         name="vit")(images, deterministic)
    x = hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(1)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(
        x).astype(jnp.float32)

