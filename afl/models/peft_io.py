"""LoRA adapters and merged checkpoints in the formats `peft` and
`transformers` read.

`export_adapter(dir, ...)` writes `adapter_config.json` (peft_type LORA, r,
lora_alpha, target_modules, base_model_name_or_path) and
`adapter_model.safetensors` with PEFT's names: for each adapted layer
`base_model.model.<module>.lora_A.weight` = A^T [r, in] and `.lora_B.weight`
= B^T [out, r] (afl's A is [in, r], B [r, out]; PEFT scales by alpha / r as
afl does). `<module>` is the module's name in transformers' PyTorch model:
for BERT the checkpoint's names, for ViT those of transformers >= 5.9
(`layers.N.attention.q_proj`, `mlp.fc1`; its checkpoints keep the 4.x
`encoder.layer.N.attention.attention.query`), and import reads both. Where afl's head is the one of a transformers class (BERT with
pooling=pooler: BertForSequenceClassification; ViT with pooling=cls:
ViTForImageClassification), module names are those of that class and the
head goes in the adapter as `modules_to_save` (`classifier`), so
`PeftModel.from_pretrained(AutoModelFor...(base), dir)` restores the whole
classifier. Otherwise (mean pooling) names are those of `AutoModel`, and the
head is written beside the adapter: `afl_head.safetensors` with `weight`
[num_classes, hidden] and `bias` [num_classes] (logits = pooled @ weight^T
+ bias) and `afl_head.json` naming the pooling.

`import_adapter(dir, template, ...)` reads such a folder back into afl's
adapter tree (a mismatch of rank, alpha, adapted layers or shapes with the
config is a one-line error); importing an export gives the tree back.

`export_merged(dir, ...)` writes `config.json` + `model.safetensors` of the
base with every adapter folded in (W + (alpha / r) B A): `AutoModel` loads
it, and `AutoModelFor...Classification` too where the head matches.
"""
import json
import os
import re

import numpy as np
from flax import traverse_util

from afl.models import lora as lora_lib
from afl.models.hf_mapping import export_hf_weights, hf_name

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "afl_head.safetensors"
HEAD_INFO = "afl_head.json"
_PREFIX = "base_model.model."
_CLASSES = {"bert": "BertForSequenceClassification",
            "vit": "ViTForImageClassification"}


def head_matches(model_type: str, pooling: str) -> bool:
  """Whether afl's head is that of the transformers classification class."""
  return (model_type, pooling) in (("bert", "pooler"), ("vit", "cls"))


def _strip(tree):
  return tree.get("params", tree)


# transformers >= 5.9 names ViT's modules differently from its checkpoint
# tensors (which keep the 4.x names): PEFT's names are the modules'.
_VIT_MODULES = (
    (r"encoder\.layer\.(\d+)\.attention\.attention\.query$",
     r"layers.\1.attention.q_proj"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.key$",
     r"layers.\1.attention.k_proj"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.value$",
     r"layers.\1.attention.v_proj"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense$",
     r"layers.\1.attention.o_proj"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense$", r"layers.\1.mlp.fc1"),
    (r"encoder\.layer\.(\d+)\.output\.dense$", r"layers.\1.mlp.fc2"),
)


def peft_module(name: str, model_type: str) -> str:
  """A checkpoint module name (4.x layout, as `hf_name` gives) -> the name
  of that module in transformers' PyTorch model, which PEFT uses; names
  already in the module layout are kept."""
  if model_type == "vit":
    for pattern, repl in _VIT_MODULES:
      name = re.sub(pattern, repl, name)
  return name


def _module(path, model_type: str, full: bool) -> str:
  name = hf_name(tuple(path[:-1]) + ("kernel",))[:-len(".weight")]
  return peft_module(name if full else name[len(model_type) + 1:],
                     model_type)


def _canonical_key(key: str, model_type: str) -> str:
  """A PEFT tensor name in either ViT layout -> the one afl writes."""
  if ".lora_" not in key:
    return key
  module, rest = key.rsplit(".lora_", 1)
  return f"{peft_module(module, model_type)}.lora_{rest}"


def adapter_tensors(adapters, model_type: str, pooling: str):
  """afl's adapter tree -> (PEFT tensors, head tensors or None), numpy."""
  full = head_matches(model_type, pooling)
  peft, head = {}, {}
  for path, x in traverse_util.flatten_dict(_strip(adapters)).items():
    x = np.asarray(x, np.float32)
    if path[-1] in (lora_lib.LORA_A, lora_lib.LORA_B):
      ab = "A" if path[-1] == lora_lib.LORA_A else "B"
      peft[f"{_PREFIX}{_module(path, model_type, full)}.lora_{ab}.weight"] = (
          np.ascontiguousarray(x.T))
    elif lora_lib.HEAD in path:
      leaf = "weight" if path[-1] == "kernel" else path[-1]
      head[leaf] = np.ascontiguousarray(x.T if leaf == "weight" else x)
  if full:
    peft.update({f"{_PREFIX}{lora_lib.HEAD}.{k}": v for k, v in head.items()})
    return peft, None
  return peft, head


def export_adapter(out_dir: str, adapters, *, model_type: str,
                   lora_cfg: lora_lib.LoRAConfig, base_model: str,
                   pooling: str, num_classes: int):
  """Writes the PEFT adapter folder `out_dir` (module doc)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  peft, head = adapter_tensors(adapters, model_type, pooling)
  targets = sorted({k[len(_PREFIX):].rsplit(".lora_", 1)[0]
                    for k in peft if ".lora_" in k})
  config = dict(
      peft_type="LORA", task_type=None, r=lora_cfg.rank,
      lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout_rate,
      target_modules=targets, bias="none", fan_in_fan_out=False,
      init_lora_weights=True, inference_mode=True,
      base_model_name_or_path=base_model,
      modules_to_save=[lora_lib.HEAD] if head is None else None,
      auto_mapping=({"base_model_class": _CLASSES[model_type],
                     "parent_library": f"transformers.models.{model_type}."
                                       f"modeling_{model_type}"}
                    if head is None else None))
  os.makedirs(out_dir, exist_ok=True)
  save_file(peft, os.path.join(out_dir, ADAPTER_WEIGHTS))
  with open(os.path.join(out_dir, ADAPTER_CONFIG), "w") as f:
    json.dump(config, f, indent=2)
  if head is not None:
    _write_head(out_dir, head, model_type, pooling, num_classes)


def _write_head(out_dir, head, model_type, pooling, num_classes):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(head, os.path.join(out_dir, HEAD_WEIGHTS))
  with open(os.path.join(out_dir, HEAD_INFO), "w") as f:
    json.dump(dict(model_type=model_type, pooling=pooling,
                   num_classes=num_classes,
                   logits="pooled @ weight.T + bias"), f, indent=2)


def import_adapter(path: str, template, *, model_type: str,
                   lora_cfg: lora_lib.LoRAConfig, pooling: str):
  """The adapter folder `path` as afl's adapter tree shaped like `template`
  (the model's freshly built adapters); ValueError on any mismatch."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  cfg_path = os.path.join(path, ADAPTER_CONFIG)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"config.model.init_adapter: no {ADAPTER_CONFIG} "
                            f"in {path}")
  with open(cfg_path) as f:
    config = json.load(f)
  if config.get("peft_type") != "LORA":
    raise ValueError(f"{cfg_path}: peft_type {config.get('peft_type')!r}, "
                     "not LORA")
  for key, want in (("r", lora_cfg.rank), ("lora_alpha", lora_cfg.alpha)):
    if float(config.get(key, -1)) != float(want):
      raise ValueError(f"{cfg_path}: {key}={config.get(key)} but the config "
                       f"has model.lora_{'rank' if key == 'r' else 'alpha'}="
                       f"{want}")
  got = {_canonical_key(k, model_type): v
         for k, v in load_file(os.path.join(path, ADAPTER_WEIGHTS)).items()}
  head_file = os.path.join(path, HEAD_WEIGHTS)
  want_peft, want_head = adapter_tensors(template, model_type, pooling)
  if want_head is not None:
    if not os.path.isfile(head_file):
      raise ValueError(f"{path}: no {HEAD_WEIGHTS} (pooling={pooling} keeps "
                       "the head beside the adapter)")
    got_head = load_file(head_file)
  else:
    got_head = None
  if set(got) != set(want_peft):
    extra = sorted(set(got) - set(want_peft))[:3]
    missing = sorted(set(want_peft) - set(got))[:3]
    raise ValueError(f"{path}: adapted layers differ from model.lora_targets "
                     f"(in the file only: {extra}; missing: {missing})")
  for name, want in list(want_peft.items()) + list((want_head or {}).items()):
    have = got[name] if name in want_peft else got_head.get(name)
    if have is None or have.shape != want.shape:
      raise ValueError(f"{path}: {name} has shape "
                       f"{None if have is None else have.shape}, the model "
                       f"needs {want.shape}")
  full = head_matches(model_type, pooling)
  flat = {}
  for p, x in traverse_util.flatten_dict(_strip(template)).items():
    if p[-1] in (lora_lib.LORA_A, lora_lib.LORA_B):
      ab = "A" if p[-1] == lora_lib.LORA_A else "B"
      t = got[f"{_PREFIX}{_module(p, model_type, full)}.lora_{ab}.weight"].T
    else:
      leaf = "weight" if p[-1] == "kernel" else p[-1]
      t = (got[f"{_PREFIX}{lora_lib.HEAD}.{leaf}"] if full
           else got_head[leaf])
      t = t.T if leaf == "weight" else t
    flat[p] = np.asarray(t, np.float32).reshape(np.shape(x))
  out = traverse_util.unflatten_dict(flat)
  return {"params": out} if "params" in template else out


def export_merged(out_dir: str, base, adapters, *, model_type: str,
                  lora_cfg: lora_lib.LoRAConfig, base_checkpoint: str,
                  pooling: str, num_classes: int):
  """Writes `out_dir/config.json` + `model.safetensors` (module doc);
  `base_checkpoint`: the folder whose config.json describes the base."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  merged = _strip(lora_lib.merge_params(base, adapters))
  if lora_cfg.rank > 0:
    merged = lora_lib.merge_lora_weights(merged, lora_cfg.alpha, lora_cfg.rank)
  head = merged.pop(lora_lib.HEAD)
  encoder = merged[model_type]
  with open(os.path.join(base_checkpoint, "config.json")) as f:
    config = json.load(f)
  os.makedirs(out_dir, exist_ok=True)
  if head_matches(model_type, pooling):
    tensors = export_hf_weights(encoder, prefix=f"{model_type}.")
    tensors[f"{lora_lib.HEAD}.weight"] = np.ascontiguousarray(
        np.asarray(head["kernel"], np.float32).T)
    tensors[f"{lora_lib.HEAD}.bias"] = np.asarray(head["bias"], np.float32)
    config.update(architectures=[_CLASSES[model_type]],
                  id2label={str(i): f"LABEL_{i}" for i in range(num_classes)},
                  label2id={f"LABEL_{i}": i for i in range(num_classes)})
  else:
    tensors = export_hf_weights(encoder)
    _write_head(out_dir, adapter_tensors({lora_lib.HEAD: head}, model_type,
                                         pooling)[1],
                model_type, pooling, num_classes)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)


def export_run(workdir: str, model_cfg, params, frozen, num_classes: int,
               log):
  """At the end of a run of an `hf` family: `workdir/adapter` (PEFT; not
  for rank 0, which has no adapters) and `workdir/merged` (transformers)."""
  from afl import models  # pylint: disable=g-import-not-at-top
  from afl.models import hf_checkpoint  # pylint: disable=g-import-not-at-top
  p = model_cfg.params
  lora_cfg = lora_lib.LoRAConfig(rank=p.lora_rank, alpha=p.lora_alpha,
                                 targets=tuple(p.lora_targets))
  base = str(hf_checkpoint.resolve_checkpoint(
      models.resolve_checkpoint(p.checkpoint), model_cfg.name))
  kw = dict(model_type=model_cfg.name, lora_cfg=lora_cfg, pooling=p.pooling,
            num_classes=num_classes)
  wrote = []
  if lora_cfg.rank > 0:
    export_adapter(os.path.join(workdir, "adapter"), params, base_model=base,
                   **kw)
    wrote.append("adapter/ (peft)")
  export_merged(os.path.join(workdir, "merged"), frozen, params,
                base_checkpoint=base, **kw)
  wrote.append("merged/ (transformers)")
  log(f"lora: wrote {' and '.join(wrote)} in {workdir}")
