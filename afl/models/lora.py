"""Low-rank adapters (LoRA) for Flax Dense layers, and the base/adapter split.

A LoRA layer keeps the pretrained kernel W frozen and learns a low-rank
update: y = x W + b + (alpha / r) * dropout(x) A B, with A [in, r] random and
B [r, out] zero at init, so training starts exactly at the pretrained model.
In federated fine-tuning only A, B and the classification head are trained
and exchanged; the base weights stay on every client unchanged.

Parameter-name convention (every model in `afl.models` follows it, so
`split_params` works on any of them):

* adapter leaves are named `lora_a` and `lora_b`, next to the layer's
  `kernel` and `bias`;
* the task head lives under a module named `classifier`.

References:
  Hu, E. J., Shen, Y., Wallis, P., Allen-Zhu, Z., Li, Y., Wang, S., Wang, L.
  and Chen, W. (2021). LoRA: Low-Rank Adaptation of Large Language Models.
  arXiv:2106.09685.
"""
import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

LORA_A = "lora_a"
LORA_B = "lora_b"
HEAD = "classifier"

# Logical names of the transformer Dense layers LoRA can wrap. BERT and ViT
# both use them, so one `targets` tuple means the same layers in both.
TARGETS = frozenset(
    {"query", "key", "value", "attn_out", "mlp_in", "mlp_out"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
  """Which layers get adapters, and how big.

  Attributes:
    rank: r, the adapter rank; 0 turns every target into a plain Dense.
    alpha: the update is scaled by alpha / rank (Hu et al. 2021, sec. 4.1),
      so changing the rank does not change the effective learning rate much.
    dropout_rate: dropout on the adapter input only (as in PEFT); the frozen
      path is left untouched.
    targets: logical layer names from `TARGETS`; the paper's default adapts
      the attention query and value projections.
  """
  rank: int = 8
  alpha: float = 16.0
  dropout_rate: float = 0.0
  targets: Sequence[str] = ("query", "value")

  def __post_init__(self):
    # A tuple keeps the config hashable, which linen module fields need.
    object.__setattr__(self, "targets", tuple(self.targets))
    if self.rank < 0:
      raise ValueError(f"lora rank must be >= 0, got {self.rank}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(
          f"lora dropout_rate must be in [0, 1), got {self.dropout_rate}")
    unknown = sorted(set(self.targets) - TARGETS)
    if unknown:
      raise ValueError(f"unknown lora targets {unknown}; choose from "
                       f"{sorted(TARGETS)}")

  def rank_for(self, name: str) -> int:
    """The rank a layer with logical name `name` gets (0: no adapter)."""
    return self.rank if name in self.targets else 0


NO_LORA = LoRAConfig(rank=0)


class LoRADense(nn.Module):
  """Dense layer with a frozen base and a trainable low-rank update.

  Parameters: `kernel` [in, out] and `bias` [out] (the base, named as in
  `nn.Dense` so pretrained trees load unchanged), and, for rank > 0,
  `lora_a` [in, rank] (kaiming-uniform as in PEFT) and `lora_b` [rank, out]
  (zeros, so the initial output equals the base layer's).

  Freezing is not done here (no stop_gradient): the trainer differentiates
  only with respect to the adapter subtree from `split_params`, and with
  rank 0 the layer stays trainable for full fine-tuning.

  Attributes:
    features: output width.
    rank: adapter rank; 0 is a plain Dense (no adapter leaves).
    alpha: scale numerator; the update is multiplied by alpha / rank.
    dropout_rate: dropout applied to the adapter input when not
      deterministic (needs a 'dropout' rng).
    use_bias: whether the base layer has a bias.
    dtype: computation dtype; parameters stay float32.

  >>> layer = LoRADense(3, rank=2, alpha=4.0)
  >>> v = layer.init(jax.random.key(0), jnp.ones((1, 5)))
  >>> sorted(v["params"])
  ['bias', 'kernel', 'lora_a', 'lora_b']
  >>> y = layer.apply(v, jnp.ones((1, 5)))  # B = 0: same as the base layer

  References:
    Hu et al. (2021), LoRA, arXiv:2106.09685, sec. 4.1.
  """
  features: int
  rank: int = 0
  alpha: float = 16.0
  dropout_rate: float = 0.0
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    in_features = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (in_features, self.features), jnp.float32)
    x = x.astype(self.dtype)
    y = jnp.dot(x, kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    if self.rank <= 0:
      return y
    # variance_scaling(1/3, fan_in, uniform) is torch's kaiming_uniform with
    # a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)): PEFT's init for A.
    a = self.param(LORA_A,
                   nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                    "uniform"),
                   (in_features, self.rank), jnp.float32)
    b = self.param(LORA_B, nn.initializers.zeros,
                   (self.rank, self.features), jnp.float32)
    h = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    update = jnp.dot(jnp.dot(h, a.astype(self.dtype)), b.astype(self.dtype))
    return y + (self.alpha / self.rank) * update


def _flat(params) -> dict:
  return traverse_util.flatten_dict(params)


def is_adapter_path(path: Sequence[str]) -> bool:
  """True for LoRA leaves and anything under the classification head."""
  return path[-1] in (LORA_A, LORA_B) or HEAD in path


def split_params(params) -> tuple[dict, dict]:
  """Splits a parameter tree into (frozen base, trainable adapters).

  The adapters are the LoRA leaves plus the classification head: the part
  clients train and the server aggregates. Both halves keep the nesting of
  the input (with empty branches pruned), so `merge_params` inverts this.

  Args:
    params: a nested dict of parameters (with or without the outer
      'params' collection key).

  Returns:
    (base, adapters), two nested dicts that partition the leaves.

  >>> base, ad = split_params({"l": {"kernel": 1, "lora_a": 2},
  ...                          "classifier": {"bias": 3}})
  >>> base, ad
  ({'l': {'kernel': 1}}, {'l': {'lora_a': 2}, 'classifier': {'bias': 3}})
  """
  base, adapters = {}, {}
  for path, leaf in _flat(params).items():
    (adapters if is_adapter_path(path) else base)[path] = leaf
  return (traverse_util.unflatten_dict(base),
          traverse_util.unflatten_dict(adapters))


def merge_params(base, adapters) -> dict:
  """Inverse of `split_params`: one tree with the leaves of both.

  Raises:
    ValueError: if a leaf appears in both trees (the halves must partition).
  """
  flat = dict(_flat(base))
  for path, leaf in _flat(adapters).items():
    if path in flat:
      raise ValueError(
          f"merge_params: {'/'.join(path)} is in both base and adapters")
    flat[path] = leaf
  return traverse_util.unflatten_dict(flat)


def merge_lora_weights(params, alpha: float, rank: int) -> dict:
  """Folds every adapter into its kernel: W <- W + (alpha / rank) A B.

  The result has no `lora_a`/`lora_b` leaves and runs in the same model
  built with rank 0 (plain Dense layers), with the same outputs up to
  float rounding: useful for export and adapter-free inference.

  Args:
    params: tree containing LoRADense parameter dicts.
    alpha: the LoRA alpha the model was built with.
    rank: the LoRA rank the model was built with (> 0).

  Returns:
    A new tree; the input is not modified.
  """
  if rank <= 0:
    raise ValueError(f"merge_lora_weights needs rank > 0, got {rank}")
  flat = dict(_flat(params))
  scale = alpha / rank
  for path in [p for p in flat if p[-1] == LORA_A]:
    parent = path[:-1]
    a = flat.pop(path)
    b = flat.pop(parent + (LORA_B,))
    kernel = flat[parent + ("kernel",)]
    flat[parent + ("kernel",)] = (
        kernel + scale * jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)
    ).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def count_params(params) -> int:
  """Number of scalar parameters in a tree."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def adapter_summary(params) -> Mapping[str, int]:
  """{'base': n, 'adapters': m, 'total': n + m} parameter counts."""
  base, adapters = split_params(params)
  nb, na = count_params(base), count_params(adapters)
  return {"base": nb, "adapters": na, "total": nb + na}
