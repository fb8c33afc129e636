"""The mapping between HuggingFace BERT / ViT tensor names and Flax trees.

transformers v5 ships no Flax models, so `afl.models.bert` and
`afl.models.vit` name their modules after the PyTorch ones, and this module
maps checkpoint tensor names onto the Flax tree mechanically:

  encoder.layer.3.attention.self.query.weight
    -> ['encoder']['layer_3']['attention']['self']['query']['kernel'] (.T)
  embeddings.patch_embeddings.projection.weight (OIHW)
    -> [...]['projection']['kernel'] (HWIO)
  *.LayerNorm.weight / *.layernorm*.weight -> 'scale'
  nn.Embedding weight -> 'embedding'

The expected names and shapes come from the Flax module itself
(`jax.eval_shape` of its init), so every required weight is checked by name
and shape. Missing weights raise a one-line ValueError; weights the model
does not use are returned by `convert_hf_weights`, never silently dropped.
Checkpoint names with the `bert.` / `vit.` prefix of the task models
(BertForSequenceClassification, ViTForImageClassification) are accepted.
"""
import logging
from typing import Optional

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from afl.models import bert as bert_lib
from afl.models import vit as vit_lib
from afl.models.lora import NO_LORA, LoRAConfig, is_adapter_path

log = logging.getLogger(__name__)

MODEL_TYPES = ("bert", "vit")

# Registered torch buffers saved next to the weights; not parameters (BERT's
# position_ids is arange(max_len), which the Flax model computes).
_BUFFER_SUFFIXES = ("position_ids",)

_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}

_MAX_LISTED = 20


def format_names(names) -> str:
  """The sorted names, comma-separated, the first few only."""
  names = sorted(names)
  head = ", ".join(names[:_MAX_LISTED])
  more = len(names) - _MAX_LISTED
  return head + (f" ... and {more} more" if more > 0 else "")


def _encoder(model_type: str, config, add_pooling_layer: bool,
             lora: LoRAConfig = NO_LORA, dtype=jnp.float32):
  """(module, dummy input) for the bare encoder of that type."""
  if model_type == "bert":
    cfg = bert_lib.BertConfig.from_hf(config)
    return (bert_lib.BertModel(cfg, lora, add_pooling_layer, dtype),
            jax.ShapeDtypeStruct((1, 2), jnp.int32))
  if model_type == "vit":
    cfg = vit_lib.ViTConfig.from_hf(config)
    return (vit_lib.ViTModel(cfg, lora, add_pooling_layer, dtype),
            jax.ShapeDtypeStruct(
                (1, cfg.image_size, cfg.image_size, cfg.num_channels),
                jnp.float32))
  raise ValueError(f"model_type must be one of {MODEL_TYPES}, got "
                   f"{model_type!r}")


def expected_shapes(model_type: str, config,
                    add_pooling_layer: bool) -> dict:
  """{flax path tuple: shape} of the plain (rank-0) encoder's parameters."""
  module, dummy = _encoder(model_type, config, add_pooling_layer)
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros(dummy.shape,
                                                       dummy.dtype)))
  return {k: v.shape for k, v in
          traverse_util.flatten_dict(shapes["params"]).items()}


def hf_name(path) -> str:
  """Flax parameter path -> HF tensor name (the inverse of the mapping)."""
  parts = []
  for p in path[:-1]:
    if p.startswith("layer_") and p[len("layer_"):].isdigit():
      parts += ["layer", p[len("layer_"):]]
    else:
      parts.append(p)
  parts.append(_LEAF_TO_HF.get(path[-1], path[-1]))
  return ".".join(parts)


def _to_flax(path, x: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    if x.ndim == 2:  # torch Linear [out, in] -> Dense [in, out]
      return x.T
    if x.ndim == 4:  # torch Conv2d OIHW -> Flax Conv HWIO
      return x.transpose(2, 3, 1, 0)
  return x


def export_hf_weights(params, prefix: str = "") -> dict:
  """Flax encoder params -> {HF tensor name: np.ndarray} (inverse mapping).

  Fold adapters in first (`merge_lora_weights`): LoRA leaves and the head
  have no HF name and are refused. The result can be written with
  `safetensors.numpy.save_file` next to the config.json and read by
  transformers' `BertModel` / `ViTModel` (or by `load_hf_checkpoint`).

  Args:
    params: rank-0 `BertModel`/`ViTModel` params (no 'params' wrapper).
    prefix: prepended to every name, e.g. 'bert.'.
  """
  out = {}
  for path, x in traverse_util.flatten_dict(params).items():
    if is_adapter_path(path):
      raise ValueError(f"export_hf_weights: {'/'.join(path)} is an adapter "
                       "or head leaf; merge_lora_weights / split first")
    x = np.asarray(x)
    if path[-1] == "kernel":
      x = x.T if x.ndim == 2 else x.transpose(3, 2, 0, 1)
    out[prefix + hf_name(path)] = np.ascontiguousarray(x)
  return out


def _strip_prefix(tensors: dict, model_type: str) -> dict:
  prefix = model_type + "."
  out = {}
  for name, x in tensors.items():
    key = name[len(prefix):] if name.startswith(prefix) else name
    if key in out:
      raise ValueError(f"{model_type} checkpoint has both {key} and "
                       f"{prefix}{key}")
    out[key] = x
  return out


def convert_hf_weights(tensors: dict, model_type: str, config,
                       add_pooling_layer: Optional[bool] = None,
                       source: str = "checkpoint"):
  """Maps HF tensors onto the plain encoder's Flax parameter tree.

  Args:
    tensors: {HF name: array}, e.g. from `read_safetensors`.
    model_type: 'bert' or 'vit'.
    config: config.json dict or transformers config.
    add_pooling_layer: build with the pooler; None: iff the checkpoint has
      one. False with pooler weights present reports them as unexpected.
    source: where the tensors came from, for error messages.

  Returns:
    (params, unexpected, add_pooling_layer): the nested float32 parameter
    dict of `BertModel`/`ViTModel` with rank 0, the sorted names the model
    does not use, and whether the pooler was built.

  Raises:
    ValueError: one line listing the required weights that are missing, or
      those whose shape does not match the config.
  """
  tensors = _strip_prefix(tensors, model_type)
  if add_pooling_layer is None:
    add_pooling_layer = any(k.startswith("pooler.") for k in tensors)
  expected = expected_shapes(model_type, config, add_pooling_layer)
  flat, used, bad = {}, set(), []
  missing = []
  for path, shape in expected.items():
    name = hf_name(path)
    if name not in tensors:
      missing.append(name)
      continue
    x = _to_flax(path, np.asarray(tensors[name], np.float32))
    used.add(name)
    if x.shape != tuple(shape):
      bad.append(f"{name} {tuple(tensors[name].shape)} (want "
                 f"{tuple(shape)} after transpose)")
    flat[path] = x
  if missing:
    raise ValueError(f"{model_type} checkpoint {source}: missing "
                     f"{len(missing)} required weights: "
                     f"{format_names(missing)}")
  if bad:
    raise ValueError(f"{model_type} checkpoint {source}: shape mismatch "
                     f"with config.json: {'; '.join(sorted(bad))}")
  rest = set(tensors) - used
  buffers = {k for k in rest if k.endswith(_BUFFER_SUFFIXES)}
  if buffers:
    log.debug("%s checkpoint %s: skipping torch buffers %s", model_type,
              source, format_names(buffers))
  unexpected = sorted(rest - buffers)
  return traverse_util.unflatten_dict(flat), unexpected, add_pooling_layer
