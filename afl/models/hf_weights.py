"""Load HuggingFace BERT / ViT checkpoints (config.json + model.safetensors).

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
does not use (an MLM head, a pooler the model was built without, a
fine-tuned classifier) are logged and returned, never silently dropped.
Checkpoint names with the `bert.` / `vit.` prefix of the task models
(BertForSequenceClassification, ViTForImageClassification) are accepted.

Only numpy + safetensors are needed at run time; `huggingface_hub` is used,
when installed, to find a hub id in the local HF cache (offline-safe), and to
download it only when asked (`download=True`).

References:
  Devlin et al. (2019), BERT; Dosovitskiy et al. (2021), ViT;
  Hu et al. (2021), LoRA.
"""
import json
import logging
import os
import pathlib
from typing import Any, Optional

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from afl.models import bert as bert_lib
from afl.models import vit as vit_lib
from afl.models.lora import (NO_LORA, LoRAConfig, is_adapter_path,
                             merge_params, split_params)

log = logging.getLogger(__name__)

MODEL_TYPES = ("bert", "vit")

# What to suggest when a checkpoint is not found.
DEFAULT_IDS = {
    "bert": "sentence-transformers/all-MiniLM-L6-v2",
    "vit": "google/vit-base-patch16-224",
}

# Registered torch buffers saved next to the weights; not parameters (BERT's
# position_ids is arange(max_len), which the Flax model computes).
_BUFFER_SUFFIXES = ("position_ids",)

_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}

_MAX_LISTED = 20


def _names(names) -> str:
  names = sorted(names)
  head = ", ".join(names[:_MAX_LISTED])
  more = len(names) - _MAX_LISTED
  return head + (f" ... and {more} more" if more > 0 else "")


def _not_found(model_type: str, where) -> FileNotFoundError:
  return FileNotFoundError(
      f"{model_type} checkpoint: no config.json/model.safetensors under "
      f"{where}; download {DEFAULT_IDS.get(model_type, 'a checkpoint')} to "
      "the HF cache or pass a local folder")


def _has_weights(d: pathlib.Path) -> bool:
  return ((d / "model.safetensors").is_file()
          or (d / "model.safetensors.index.json").is_file())


def _from_hf_cache(repo_id: str) -> Optional[pathlib.Path]:
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    hit = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
  except Exception:  # pylint: disable=broad-except
    # A malformed id is "not in the cache", not a crash: the caller reports
    # one FileNotFoundError for every way of not finding the checkpoint.
    return None
  if isinstance(hit, str):
    d = pathlib.Path(hit).parent
    if _has_weights(d):
      return d
  return None


def resolve_checkpoint(path_or_id, model_type: str = "bert",
                       download: bool = False) -> pathlib.Path:
  """The local folder holding config.json and model.safetensors.

  Args:
    path_or_id: a local folder, or a hub id such as
      'sentence-transformers/all-MiniLM-L6-v2' looked up in the HF cache.
    model_type: only for the error message.
    download: fetch a hub id that is not cached (needs network and
      huggingface_hub); off by default so runs and tests stay offline.

  Raises:
    FileNotFoundError: one line naming the place looked at and what to do.
  """
  p = pathlib.Path(os.path.expanduser(str(path_or_id)))
  if p.is_dir():
    if (p / "config.json").is_file() and _has_weights(p):
      return p
    raise _not_found(model_type, p)
  if p.exists():
    raise _not_found(model_type, p)
  repo_id = str(path_or_id)
  hit = _from_hf_cache(repo_id)
  if hit is not None:
    return hit
  if download:
    try:
      import huggingface_hub  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise _not_found(model_type, f"{repo_id} (huggingface_hub is not "
                       "installed, cannot download)") from e
    d = pathlib.Path(huggingface_hub.snapshot_download(
        repo_id, allow_patterns=["config.json", "model.safetensors",
                                 "model.safetensors.index.json",
                                 "model-*.safetensors"]))
    if (d / "config.json").is_file() and _has_weights(d):
      return d
  raise _not_found(model_type, f"{path_or_id} (not a folder, not in the HF "
                   "cache)")


def read_safetensors(folder) -> dict:
  """{name: np.ndarray} from model.safetensors or a sharded index."""
  folder = pathlib.Path(folder)
  index = folder / "model.safetensors.index.json"
  if index.is_file() and not (folder / "model.safetensors").is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    out = {}
    for s in shards:
      out.update(load_file(str(folder / s)))
    return out
  # bfloat16/float16 checkpoints load too (numpy dtypes via ml_dtypes); the
  # mapping casts every weight to float32.
  return load_file(str(folder / "model.safetensors"))


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
                     f"{len(missing)} required weights: {_names(missing)}")
  if bad:
    raise ValueError(f"{model_type} checkpoint {source}: shape mismatch "
                     f"with config.json: {'; '.join(sorted(bad))}")
  rest = set(tensors) - used
  buffers = {k for k in rest if k.endswith(_BUFFER_SUFFIXES)}
  if buffers:
    log.debug("%s checkpoint %s: skipping torch buffers %s", model_type,
              source, _names(buffers))
  unexpected = sorted(rest - buffers)
  return traverse_util.unflatten_dict(flat), unexpected, add_pooling_layer


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
           f"not used by the model: {_names(unexpected)}")
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
                     f"no place in the model: {_names(extra)}")
  missing = [hf_name(k) for k in flat
             if not is_adapter_path(k) and k not in src]
  if missing:
    raise ValueError(f"load_pretrained: {len(missing)} model weights missing "
                     f"from the pretrained tree: {_names(missing)}")
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
