"""BERT-family text encoder (BERT, MiniLM) in Flax linen, with LoRA layers.

Matches HuggingFace `BertModel` numerically (post-LN layers, exact erf GELU,
absolute position embeddings), and names its modules after HF's so that
`afl.models.hf_mapping` maps a `model.safetensors` checkpoint onto the tree by
name: `encoder.layer.3.attention.self.query.weight` is
`params['encoder']['layer_3']['attention']['self']['query']['kernel']` (its
transpose).

References:
  Devlin, J., Chang, M.-W., Lee, K. and Toutanova, K. (2019). BERT:
  Pre-training of Deep Bidirectional Transformers for Language
  Understanding. NAACL.
  Wang, W., Wei, F., Dong, L., Bao, H., Yang, N. and Zhou, M. (2020).
  MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
  Pre-Trained Transformers. NeurIPS.
  Hu et al. (2021), LoRA, arXiv:2106.09685.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax  # noqa: F401  (the docstring example uses it)
import jax.numpy as jnp

from afl.models.lora import LoRAConfig, HEAD
# activation and hf_config_dict are re-exported (they were defined here).
from afl.models.transformer import (  # noqa: F401
    EncoderConfig, SelfAttention, _Backbone, _Block, _dense, _Intermediate,
    _layer_norm, _Pooler, activation, hf_config_dict)

POOLINGS = ("cls", "mean", "pooler")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig(EncoderConfig):
  """HF BERT config.json fields beyond EncoderConfig (defaults: BERT-base)."""
  vocab_size: int = 30522
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  pad_token_id: Optional[int] = 0
  position_embedding_type: str = "absolute"

  def _check(self):
    if self.position_embedding_type != "absolute":
      raise ValueError("only absolute position embeddings are supported, got "
                       "position_embedding_type="
                       f"{self.position_embedding_type!r}")


class _DenseOut(nn.Module):
  """dense -> dropout -> LayerNorm(x + residual): HF's BertSelfOutput and
  BertOutput (post-LN)."""
  features: int
  eps: float
  dropout_rate: float
  lora: LoRAConfig
  logical: str
  dtype: Any

  @nn.compact
  def __call__(self, x, residual, deterministic):
    y = _dense(self.features, "dense", self.lora, self.dtype,
               self.logical)(x, deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return _layer_norm(self.eps, self.dtype, "LayerNorm")(y + residual)


class _Attention(_Block):

  @nn.compact
  def __call__(self, x, mask, deterministic):
    c = self.config
    ctx = SelfAttention(c.num_attention_heads, c.attention_probs_dropout_prob,
                        self.lora, dtype=self.dtype,
                        name="self")(x, mask, deterministic)
    return _DenseOut(c.hidden_size, c.layer_norm_eps, c.hidden_dropout_prob,
                     self.lora, "attn_out", self.dtype,
                     name="output")(ctx, x, deterministic)


class BertLayer(_Block):
  """One post-LN transformer layer (Devlin et al. 2019; Vaswani et al.)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    c = self.config
    x = _Attention(c, self.lora, self.dtype, name="attention")(
        x, mask, deterministic)
    h = _Intermediate(c, self.lora, self.dtype, name="intermediate")(
        x, deterministic)
    return _DenseOut(c.hidden_size, c.layer_norm_eps, c.hidden_dropout_prob,
                     self.lora, "mlp_out", self.dtype,
                     name="output")(h, x, deterministic)


class _Embeddings(nn.Module):
  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic):
    c = self.config
    embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=self.dtype,
                                     name=name)
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (embed(c.vocab_size, "word_embeddings")(input_ids)
         + embed(c.max_position_embeddings, "position_embeddings")(positions)
         + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids))
    x = _layer_norm(c.layer_norm_eps, self.dtype, "LayerNorm")(x)
    return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class _Encoder(_Block):

  @nn.compact
  def __call__(self, x, mask, deterministic):
    for i in range(self.config.num_hidden_layers):
      x = BertLayer(self.config, self.lora, self.dtype,
                    name=f"layer_{i}")(x, mask, deterministic)
    return x


def attention_mask_from_ids(input_ids, pad_token_id: Optional[int]):
  """True where a token is real: `input_ids != pad_token_id` (all True when
  the config has no pad token)."""
  if pad_token_id is None:
    return jnp.ones(input_ids.shape, bool)
  return input_ids != pad_token_id


class BertModel(_Backbone):
  """The BERT encoder: embeddings, N post-LN layers, optional pooler.

  Attributes:
    config: architecture (`BertConfig.from_hf(...)`).
    lora: which Dense layers carry adapters; rank 0 is the plain model.
    add_pooling_layer: include HF's tanh pooler over [CLS] (its weights
      exist in most BERT checkpoints).
    dtype: computation dtype; parameters are float32.

  Call: `(input_ids [B, L] int, attention_mask [B, L] or None,
  token_type_ids [B, L] or None, deterministic=True)` ->
  `(last_hidden_state [B, L, D] float32, pooled [B, D] float32 or None)`.
  A None attention mask is derived from `input_ids != config.pad_token_id`
  (HF would attend to padding instead), so a batch of padded ids alone is a
  valid input; dropout runs only with deterministic=False and a 'dropout'
  rng.

  >>> cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
  ...                  num_attention_heads=2, intermediate_size=16)
  >>> m = BertModel(cfg)
  >>> ids = jnp.array([[1, 5, 7, 0]])
  >>> v = m.init(jax.random.key(0), ids)
  >>> h, pooled = m.apply(v, ids)
  >>> h.shape, pooled
  ((1, 4, 8), None)

  References:
    Devlin et al. (2019), BERT, sec. 3; Hu et al. (2021), LoRA.
  """

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
               deterministic: bool = True):
    c = self.config
    # Ids may arrive as floats (a generic `init(key, jnp.zeros(shape))`);
    # the embedding lookup needs integers.
    input_ids = input_ids.astype(jnp.int32)
    if attention_mask is None:
      attention_mask = attention_mask_from_ids(input_ids, c.pad_token_id)
    attention_mask = attention_mask.astype(bool)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = _Embeddings(c, self.dtype, name="embeddings")(
        input_ids, token_type_ids, deterministic)
    x = _Encoder(c, self.lora, self.dtype, name="encoder")(
        x, attention_mask, deterministic)
    pooled = None
    if self.add_pooling_layer:
      pooled = _Pooler(c.hidden_size, self.dtype, name="pooler")(x)
      pooled = pooled.astype(jnp.float32)
    return x.astype(jnp.float32), pooled


def pool(hidden, mask, pooling: str, pooled=None):
  """[B, L, D] -> [B, D]: the [CLS] token, the masked mean, or `pooled`."""
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    # sentence-transformers' mean pooling: padding tokens do not count.
    w = mask.astype(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / jnp.maximum(w.sum(1), 1e-9)
  if pooling == "pooler":
    if pooled is None:
      raise ValueError("pooling='pooler' needs add_pooling_layer=True")
    return pooled
  raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class BertClassifier(nn.Module):
  """BERT encoder (under `bert`) + dropout + linear head (under `classifier`).

  Attributes:
    config: architecture.
    num_classes: head width.
    lora: adapters of the encoder; `split_params` puts them and the head in
      the trainable half.
    pooling: 'cls' (the [CLS] hidden state), 'mean' (masked mean over tokens;
      how sentence-transformers trains all-MiniLM-L6-v2), or 'pooler' (HF
      BertForSequenceClassification: tanh pooler over [CLS]; needs
      add_pooling_layer).
    add_pooling_layer: build the pooler (loaded frozen from the checkpoint).
    dtype: computation dtype.

  Call: `(input_ids, attention_mask=None, token_type_ids=None,
  deterministic=True) -> logits [B, num_classes] float32`.

  References:
    Devlin et al. (2019), BERT, sec. 4.1; Reimers and Gurevych (2019),
    Sentence-BERT (mean pooling); Hu et al. (2021), LoRA.
  """
  config: BertConfig
  num_classes: int
  lora: LoRAConfig = LoRAConfig()
  pooling: str = "cls"
  add_pooling_layer: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
               deterministic: bool = True):
    input_ids = input_ids.astype(jnp.int32)
    if attention_mask is None:
      attention_mask = attention_mask_from_ids(input_ids,
                                               self.config.pad_token_id)
    hidden, pooled = BertModel(
        self.config, self.lora, self.add_pooling_layer or
        self.pooling == "pooler", self.dtype, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic)
    x = pool(hidden, attention_mask, self.pooling, pooled)
    x = nn.Dropout(self.config.hidden_dropout_prob)(
        x, deterministic=deterministic)
    return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(
        x).astype(jnp.float32)
