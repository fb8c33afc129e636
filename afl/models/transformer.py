"""The parts that the BERT and ViT encoders (`afl.models.bert`, `.vit`) share.

HF config handling (`activation`, `hf_config_dict`, `EncoderConfig`),
multi-head self-attention, the LoRA-aware Dense and torch-exact LayerNorm
factories, the intermediate (MLP-in) and pooler modules, and the attribute
bases of their submodules and encoders. Module names follow HF's, so
`afl.models.hf_mapping` maps checkpoints onto either tree by name.

References:
  Vaswani et al. (2017), Attention Is All You Need, NeurIPS.
  Hu et al. (2021), LoRA, arXiv:2106.09685.
"""
import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from afl.models.lora import LoRAConfig, LoRADense


_ACTIVATIONS = {
    # HF "gelu" is the exact erf form; the tanh forms are HF's "gelu_new".
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str):
  """The HF `hidden_act` of that name as a JAX function."""
  if name not in _ACTIVATIONS:
    raise ValueError(f"unsupported hidden_act {name!r}; supported: "
                     f"{sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def hf_config_dict(config) -> dict:
  """A plain dict from a transformers config object or a config.json dict."""
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if isinstance(config, Mapping):
    return dict(config)
  raise TypeError(f"expected a dict or a transformers config, got "
                  f"{type(config).__name__}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig:
  """The fields and checks that HF's BERT and ViT config.json share.

  Build a subclass with `Cls.from_hf(dict_or_transformers_config)`.
  """
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  layer_norm_eps: float = 1e-12

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    self._check()
    activation(self.hidden_act)

  def _check(self):
    """A subclass's own field checks (after the heads, before hidden_act)."""

  @classmethod
  def from_hf(cls, config, **overrides):
    """From a config.json dict or a `transformers` config; unknown keys are
    ignored, `overrides` win."""
    d = hf_config_dict(config)
    names = {f.name for f in dataclasses.fields(cls)}
    # HF configs carry many unrelated keys (architectures, torch dtype, ...).
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    kwargs.update(overrides)
    return cls(**kwargs)


class SelfAttention(nn.Module):
  """Multi-head scaled dot-product self-attention (query/key/value only).

  The output projection is a separate module because BERT and ViT nest it
  differently; both name it so HF weights map by name.
  """
  num_heads: int
  dropout_rate: float
  lora: LoRAConfig
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    """x: [B, L, D]; mask: [B, L] bool over keys (True = attend) or None."""
    d = x.shape[-1]
    head_dim = d // self.num_heads

    def proj(name):
      y = LoRADense(d, rank=self.lora.rank_for(name), alpha=self.lora.alpha,
                    dropout_rate=self.lora.dropout_rate,
                    use_bias=self.use_bias, dtype=self.dtype,
                    name=name)(x, deterministic)
      return y.reshape(y.shape[:-1] + (self.num_heads, head_dim))

    q, k, v = proj("query"), proj("key"), proj("value")
    # Scores and softmax in float32 even when computing in bfloat16: the
    # exponent overflows and the masked sum loses precision otherwise.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    if mask is not None:
      # A finite minimum (not -inf) matches HF and keeps a row whose keys are
      # all masked finite (uniform) instead of NaN.
      scores = jnp.where(mask[:, None, None, :], scores,
                         jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    return ctx.reshape(ctx.shape[:2] + (d,))


def _dense(features, name, lora: LoRAConfig, dtype, logical=None):
  return LoRADense(features, rank=lora.rank_for(logical or name),
                   alpha=lora.alpha, dropout_rate=lora.dropout_rate,
                   dtype=dtype, name=name)


def _layer_norm(eps, dtype, name):
  # Two-pass variance, as torch computes it: the fast E[x^2] - E[x]^2 form
  # costs ~1e-6 relative error on BERT activations, too much for parity.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype,
                      name=name)


class _Block(nn.Module):
  """A part of a BERT or ViT encoder: architecture, adapters, dtype."""
  config: Any  # BertConfig or ViTConfig
  lora: LoRAConfig
  dtype: Any


class _Intermediate(_Block):
  """dense -> activation; HF's BertIntermediate and ViTIntermediate."""

  @nn.compact
  def __call__(self, x, deterministic):
    c = self.config
    y = _dense(c.intermediate_size, "dense", self.lora, self.dtype,
               "mlp_in")(x, deterministic)
    return activation(c.hidden_act)(y)


class _Pooler(nn.Module):
  """tanh(dense(h[:, 0])), HF's BertPooler (and ViTPooler)."""
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, hidden):
    return jnp.tanh(nn.Dense(self.features, dtype=self.dtype,
                             name="dense")(hidden[:, 0]))


class _Backbone(nn.Module):
  """The attributes of BertModel and ViTModel (documented there)."""
  config: Any  # BertConfig or ViTConfig
  lora: LoRAConfig = LoRAConfig()
  add_pooling_layer: bool = False
  dtype: Any = jnp.float32
