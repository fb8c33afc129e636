"""Load HuggingFace BERT / ViT checkpoints (config.json + model.safetensors).

`load_hf_checkpoint` reads a checkpoint into the Flax parameter tree of the
bare encoder (`afl.models.bert.BertModel` / `afl.models.vit.ViTModel`);
`load_pretrained` puts those weights into a LoRA or classifier tree; and
`pretrained_classifier` builds a classifier with pretrained base weights.
Finding and reading the files is `afl.models.hf_checkpoint`'s job, mapping
tensor names onto the Flax tree `afl.models.hf_mapping`'s.

Missing weights raise a one-line ValueError; weights the model does not use
(an MLM head, a pooler the model was built without, a fine-tuned
classifier) are logged and returned, never silently dropped.

References:
  Devlin et al. (2019), BERT; Dosovitskiy et al. (2021), ViT;
  Hu et al. (2021), LoRA.
"""
import json
import logging
from typing import Any, Optional

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from afl.models import bert as bert_lib
from afl.models import vit as vit_lib
from afl.models.hf_checkpoint import read_safetensors, resolve_checkpoint
from afl.models.hf_mapping import (MODEL_TYPES, convert_hf_weights,
                                   format_names, hf_name)
from afl.models.lora import (LoRAConfig, is_adapter_path, merge_params,
                             split_params)

log = logging.getLogger(__name__)


def load_hf_checkpoint(path_or_id, model_type: Optional[str] = None, *,
                       add_pooling_layer: Optional[bool] = None,
                       strict: bool = False, download: bool = False):
  """Reads an HF BERT/ViT checkpoint folder into a Flax parameter tree.

  Args:
    path_or_id: local folder with config.json and model.safetensors, or a
      hub id found in the local HF cache.
    model_type: 'bert' or 'vit'; None takes config.json's `model_type`.
    add_pooling_layer: see `convert_hf_weights`.
    strict: raise instead of warning when the checkpoint has weights the
      model does not use.
    download: allow `huggingface_hub.snapshot_download` for an uncached id.

  Returns:
    (config, params): the config.json dict plus `model_type`,
    `add_pooling_layer` (how to build the module), `unexpected_weights` (the
    unused tensor names, also logged) and `checkpoint_dir`; and the rank-0
    encoder params (`BertModel`/`ViTModel`, no 'params' wrapper). Put them
    into a LoRA or classifier tree with `load_pretrained`.

  Raises:
    FileNotFoundError: no checkpoint there (one line).
    ValueError: missing/misshapen required weights, or unexpected ones when
      strict.

  >>> path = "/path/to/all-MiniLM-L6-v2"
  >>> cfg, params = load_hf_checkpoint(path)  # doctest: +SKIP
  >>> model = bert_lib.BertModel(  # doctest: +SKIP
  ...     bert_lib.BertConfig.from_hf(cfg), NO_LORA, cfg["add_pooling_layer"])
  """
  folder = resolve_checkpoint(path_or_id, model_type or "hf", download)
  config = json.loads((folder / "config.json").read_text())
  model_type = model_type or config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{folder}: model_type {model_type!r} is not one of "
                     f"{MODEL_TYPES}; pass model_type explicitly")
  params, unexpected, pooler = convert_hf_weights(
      read_safetensors(folder), model_type, config, add_pooling_layer,
      source=str(folder))
  if unexpected:
    msg = (f"{model_type} checkpoint {folder}: {len(unexpected)} weights "
           f"not used by the model: {format_names(unexpected)}")
    if strict:
      raise ValueError(msg)
    log.warning(msg)
  config = dict(config, model_type=model_type, add_pooling_layer=pooler,
                unexpected_weights=unexpected, checkpoint_dir=str(folder))
  return config, params


def load_pretrained(params, pretrained, at: Optional[str] = None):
  """Puts pretrained base weights into a (LoRA / classifier) parameter tree.

  Every non-adapter leaf of the target subtree is replaced by the pretrained
  leaf of the same path (shapes must match); LoRA leaves and the head keep
  their initial values.

  Args:
    params: a tree from `model.init` (with or without the 'params' key),
      e.g. of `BertClassifier` with LoRA.
    pretrained: encoder params from `load_hf_checkpoint`.
    at: name of the encoder submodule ('bert', 'vit'); None: the tree itself
      if it is an encoder, else whichever of 'bert'/'vit' it contains.

  Returns:
    A new tree with the same structure as `params`.

  Raises:
    ValueError: a base leaf has no pretrained value, a pretrained leaf has no
      place in the tree, or shapes differ (one line each, names listed).
  """
  if "params" in params and len(params) == 1:
    return {"params": load_pretrained(params["params"], pretrained, at)}
  if at is None:
    at = next((k for k in MODEL_TYPES if k in params), "")
  target = params[at] if at else params
  flat = dict(traverse_util.flatten_dict(target))
  src = traverse_util.flatten_dict(pretrained)
  extra = [hf_name(k) for k in src if k not in flat]
  if extra:
    raise ValueError(f"load_pretrained: {len(extra)} pretrained weights have "
                     f"no place in the model: {format_names(extra)}")
  missing = [hf_name(k) for k in flat
             if not is_adapter_path(k) and k not in src]
  if missing:
    raise ValueError(f"load_pretrained: {len(missing)} model weights missing "
                     f"from the pretrained tree: {format_names(missing)}")
  bad = [f"{hf_name(k)} {np.shape(v)} vs {np.shape(flat[k])}"
         for k, v in src.items() if np.shape(v) != np.shape(flat[k])]
  if bad:
    raise ValueError(f"load_pretrained: shape mismatch: {'; '.join(bad)}")
  for k, v in src.items():
    flat[k] = jnp.asarray(v, flat[k].dtype)
  new = traverse_util.unflatten_dict(flat)
  return dict(params, **{at: new}) if at else new


def pretrained_classifier(path_or_id, num_classes: int, key, *,
                          model_type: Optional[str] = None,
                          lora: LoRAConfig = LoRAConfig(),
                          pooling: str = "cls", dtype: Any = jnp.float32,
                          download: bool = False):
  """A BertClassifier / ViTClassifier with pretrained base weights.

  Args:
    path_or_id: checkpoint folder or cached hub id.
    num_classes: head width.
    key: PRNG key for the LoRA A matrices and the head.
    model_type: 'bert' / 'vit' / None (from config.json).
    lora: adapter config.
    pooling: see `BertClassifier` / `ViTClassifier`.
    dtype: computation dtype.
    download: see `resolve_checkpoint`.

  Returns:
    (module, params): params is {'params': ...}, ready for `split_params`.
  """
  folder = resolve_checkpoint(path_or_id, model_type or "hf", download)
  if model_type is None:
    model_type = json.loads((folder / "config.json").read_text()).get(
        "model_type")
  pooler = model_type == "bert" and pooling == "pooler"
  config, base = load_hf_checkpoint(folder, model_type,
                                    add_pooling_layer=pooler)
  if model_type == "bert":
    module = bert_lib.BertClassifier(bert_lib.BertConfig.from_hf(config),
                                     num_classes, lora, pooling, pooler,
                                     dtype)
    dummy = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  else:
    cfg = vit_lib.ViTConfig.from_hf(config)
    module = vit_lib.ViTClassifier(cfg, num_classes, lora, pooling, dtype)
    dummy = jax.ShapeDtypeStruct(
        (1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
  # Initialise only the adapters: under jit, XLA drops the random init of
  # the 22M+ base weights (and the forward pass) that the checkpoint
  # replaces anyway; each leaf's init depends only on its path, so the
  # adapters equal those of a full `module.init(key, ...)`.
  adapters = jax.jit(lambda k: split_params(module.init(
      k, jnp.zeros(dummy.shape, dummy.dtype)))[1])(key)
  params = merge_params({"params": {model_type: base}}, adapters)
  return module, load_pretrained(params, base, model_type)
