"""ViT PEFT adapters and merged checkpoints against peft / transformers'
PyTorch ViT, on a small random ViT written by transformers (skipped
without torch or peft)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.models import hf_weights, lora, peft_io
from afl.models import vit as vit_lib

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("vit")
  hf_cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  image_size=32, patch_size=8)
  torch.manual_seed(0)
  transformers.ViTModel(hf_cfg, add_pooling_layer=False).save_pretrained(
      path, safe_serialization=True)
  return str(path)


def _afl(base_dir, pooling):
  cfg = lora.LoRAConfig(rank=4, alpha=8.0, targets=("query", "value"))
  module, params = hf_weights.pretrained_classifier(
      base_dir, 3, jax.random.key(0), model_type="vit", lora=cfg,
      pooling=pooling)
  base, adapters = lora.split_params(params)
  rng = np.random.default_rng(1)  # non-zero B: the adapters matter
  adapters = jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32),
      adapters)
  merged = lora.merge_params(base, adapters)
  pixels = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(
      np.float32)
  images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
  logits = module.apply(merged, images)
  hidden, _ = vit_lib.ViTModel(module.config, cfg, False).apply(
      {"params": merged["params"]["vit"]}, images)
  return (cfg, base, adapters, torch.from_numpy(pixels), np.asarray(logits),
          np.asarray(hidden))


def _close(got, want, rel=1e-4):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err < rel, err


def _head_logits(out_dir, hidden):
  """The documented afl head beside the adapter: mean over patch tokens."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  head = load_file(os.path.join(out_dir, peft_io.HEAD_WEIGHTS))
  return hidden[:, 1:].mean(1) @ head["weight"].T + head["bias"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_adapter_loads_in_peft(tmp_path, base_dir, pooling):
  cfg, _, adapters, pixels, logits, hidden = _afl(base_dir, pooling)
  out = str(tmp_path / "adapter")
  peft_io.export_adapter(out, adapters, model_type="vit", lora_cfg=cfg,
                         base_model=base_dir, pooling=pooling, num_classes=3)
  if pooling == "cls":
    model = transformers.AutoModelForImageClassification.from_pretrained(
        base_dir, num_labels=3)
    pm = peft.PeftModel.from_pretrained(model, out).eval()
    with torch.no_grad():
      got = pm(pixel_values=pixels).logits.numpy()
      h = pm.base_model.model.vit(pixel_values=pixels).last_hidden_state
  else:
    pm = peft.PeftModel.from_pretrained(
        transformers.AutoModel.from_pretrained(base_dir), out).eval()
    with torch.no_grad():
      h = pm(pixel_values=pixels).last_hidden_state
    got = _head_logits(out, h.numpy())
  _close(h.numpy(), hidden)
  _close(got, logits)
  back = peft_io.import_adapter(out, adapters, model_type="vit",
                                lora_cfg=cfg, pooling=pooling)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, adapters)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_merged_checkpoint_loads_in_transformers(tmp_path, base_dir,
                                                     pooling):
  cfg, base, adapters, pixels, logits, hidden = _afl(base_dir, pooling)
  out = str(tmp_path / "merged")
  peft_io.export_merged(out, base, adapters, model_type="vit", lora_cfg=cfg,
                        base_checkpoint=base_dir, pooling=pooling,
                        num_classes=3)
  enc = transformers.AutoModel.from_pretrained(out).eval()
  with torch.no_grad():
    h = enc(pixel_values=pixels).last_hidden_state.numpy()
  _close(h, hidden)
  if pooling == "cls":
    clf = transformers.AutoModelForImageClassification.from_pretrained(
        out).eval()
    with torch.no_grad():
      _close(clf(pixel_values=pixels).logits.numpy(), logits)
  else:
    _close(_head_logits(out, h), logits)


def test_vit_adapter_in_the_4x_layout_imports(tmp_path, base_dir):
  """Adapters written with transformers 4.x name ViT's modules like its
  checkpoint tensors (encoder.layer.N.attention.attention.query); import
  reads them as the current layout (layers.N.attention.q_proj)."""
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  cfg, _, adapters, *_ = _afl(base_dir, "cls")
  out = str(tmp_path / "adapter")
  peft_io.export_adapter(out, adapters, model_type="vit", lora_cfg=cfg,
                         base_model=base_dir, pooling="cls", num_classes=3)
  f = os.path.join(out, peft_io.ADAPTER_WEIGHTS)
  new = load_file(f)
  old = {k.replace(".layers.", ".encoder.layer.").replace(
      "attention.q_proj", "attention.attention.query").replace(
          "attention.v_proj", "attention.attention.value"): v
         for k, v in new.items()}
  assert "base_model.model.vit.encoder.layer.1.attention.attention.value." \
         "lora_B.weight" in old and set(old) != set(new)
  save_file(old, f)
  back = peft_io.import_adapter(out, adapters, model_type="vit",
                                lora_cfg=cfg, pooling="cls")
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, adapters)
