"""LoRADense, the base/adapter split, and folding adapters into kernels.

Closed forms: with B = 0 a LoRA model is exactly its base model; with any B,
the model with W + (alpha/r) A B folded in (rank 0) gives the same outputs.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.models import lora as lora_lib
from afl.models.bert import BertClassifier, BertConfig, BertModel
from afl.models.lora import (NO_LORA, LoRAConfig, LoRADense, count_params,
                             merge_lora_weights, merge_params, split_params)
from afl.models.vit import ViTClassifier, ViTConfig, ViTModel

ALL_TARGETS = tuple(sorted(lora_lib.TARGETS))

# One layer each: the layer code is the same for every layer, and eager
# dispatch cost grows with depth.
# Same sizes as tests/test_hf_models.py, so eager op caches are shared.
BERT = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=16,
                  max_position_embeddings=12)
VIT = ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=16, image_size=8, patch_size=4)

IDS = jnp.array([[2, 7, 9, 3], [2, 5, 3, 0]])
IMAGES = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))


def _models(kind, lora):
  if kind == "bert":
    return BertModel(BERT, lora), IDS
  return ViTModel(VIT, lora), IMAGES


def _randomize_b(params, key):
  """Every lora_b leaf set to N(0, 0.1^2): a trained-looking adapter."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  keys = iter(jax.random.split(key, len(flat)))
  def f(path, x):
    if path[-1].key == lora_lib.LORA_B:
      return 0.1 * jax.random.normal(next(keys), x.shape)
    return x
  return jax.tree_util.tree_map_with_path(f, params)


class LoRADenseTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_rank0_is_dense(self):
    x = jax.random.normal(jax.random.key(0), (3, 5))
    layer = LoRADense(4, rank=0)
    v = layer.init(jax.random.key(1), x)
    self.assertEqual(sorted(v["params"]), ["bias", "kernel"])
    got = self.variant(layer.apply)(v, x)
    want = nn.Dense(4).apply(v, x)
    chex.assert_trees_all_close(got, want, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_closed_form(self):
    x = jax.random.normal(jax.random.key(0), (3, 5))
    layer = LoRADense(4, rank=2, alpha=6.0)
    p = layer.init(jax.random.key(1), x)["params"]
    p["lora_b"] = jax.random.normal(jax.random.key(2), (2, 4))
    got = self.variant(layer.apply)({"params": p}, x)
    want = x @ p["kernel"] + p["bias"] + 3.0 * (x @ p["lora_a"] @ p["lora_b"])
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)

  def test_init(self):
    layer = LoRADense(64, rank=8)
    p = layer.init(jax.random.key(0), jnp.ones((1, 100)))["params"]
    chex.assert_shape(p["lora_a"], (100, 8))
    np.testing.assert_array_equal(p["lora_b"], np.zeros((8, 64)))
    # kaiming_uniform(a=sqrt(5)) as in PEFT: U(-1/sqrt(in), 1/sqrt(in)).
    a = np.asarray(p["lora_a"])
    self.assertLessEqual(np.abs(a).max(), 0.1 + 1e-6)
    self.assertGreater(a.std(), 0.1 / np.sqrt(3) * 0.8)

  def test_dropout_only_in_training(self):
    x = jnp.ones((4, 6))
    layer = LoRADense(3, rank=2, dropout_rate=0.5)
    p = layer.init(jax.random.key(0), x)["params"]
    p["lora_b"] = jnp.ones((2, 3))
    no_drop = LoRADense(3, rank=2).apply({"params": p}, x)
    # Eval: no rng needed, output independent of the dropout rate.
    chex.assert_trees_all_close(layer.apply({"params": p}, x), no_drop)
    train = layer.apply({"params": p}, x, deterministic=False,
                        rngs={"dropout": jax.random.key(3)})
    self.assertFalse(np.allclose(train, no_drop))

  def test_config_validation(self):
    with self.assertRaisesRegex(ValueError, "unknown lora targets"):
      LoRAConfig(targets=("qurey",))
    with self.assertRaisesRegex(ValueError, "rank"):
      LoRAConfig(rank=-1)
    with self.assertRaisesRegex(ValueError, "dropout"):
      LoRAConfig(dropout_rate=1.0)
    # Lists become tuples, so the config stays hashable for linen.
    self.assertEqual(hash(LoRAConfig(targets=["key"])),
                     hash(LoRAConfig(targets=("key",))))


@pytest.fixture(scope="module")
def lora_models():
  """kind -> (LoRA model on every target, plain model, input, params)."""
  lora = LoRAConfig(rank=3, alpha=5.0, dropout_rate=0.3, targets=ALL_TARGETS)
  out = {}
  for kind in ("bert", "vit"):
    model, x = _models(kind, lora)
    plain, _ = _models(kind, NO_LORA)
    out[kind] = model, plain, x, model.init(jax.random.key(0), x)["params"]
  return out


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_zero_b_is_base_model(kind, lora_models):
  model, plain, x, params = lora_models[kind]
  base, adapters = split_params(params)
  assert len(jax.tree.leaves(adapters)) == 2 * len(ALL_TARGETS)
  got, _ = model.apply({"params": params}, x)
  want, _ = plain.apply({"params": base}, x)
  # x A 0 adds exact zeros: not just close, equal.
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_merged_weights_match_unmerged(kind, lora_models):
  model, plain, x, params = lora_models[kind]
  params = _randomize_b(params, jax.random.key(7))
  base, _ = split_params(params)
  unmerged, _ = model.apply({"params": params}, x)  # eval: dropout off
  merged, _ = plain.apply(
      {"params": merge_lora_weights(params, model.lora.alpha,
                                    model.lora.rank)}, x)
  untouched, _ = plain.apply({"params": base}, x)
  chex.assert_trees_all_close(merged, unmerged, rtol=1e-4, atol=1e-5)
  assert not np.allclose(untouched, unmerged, atol=1e-3)  # B really mattered


def test_merge_rejects_rank0():
  with pytest.raises(ValueError, match="rank > 0"):
    merge_lora_weights({}, 16.0, 0)


@pytest.mark.parametrize("classifier", ["bert", "vit"])
def test_split_merge_round_trip(classifier):
  lora = LoRAConfig(rank=2)
  if classifier == "bert":
    model, x = BertClassifier(BERT, 3, lora, pooling="mean"), IDS
  else:
    model, x = ViTClassifier(VIT, 3, lora), IMAGES
  variables = model.init(jax.random.key(0), x)
  base, adapters = split_params(variables)
  chex.assert_trees_all_equal(merge_params(base, adapters), variables)
  assert count_params(base) + count_params(adapters) == count_params(
      variables)
  # Adapters are exactly the LoRA leaves and the head.
  names = {"/".join(str(k.key) for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(adapters)[0]}
  assert {n.split("/")[-1] for n in names} == {"lora_a", "lora_b", "kernel",
                                                "bias"}
  assert all("lora_" in n or "/classifier/" in n for n in names)
  # Only query and value carry adapters by default.
  assert sum(n.endswith("lora_a") for n in names) == 2
  with pytest.raises(ValueError, match="in both"):
    merge_params(base, base)


def test_gradient_through_adapters_only():
  """The federated pattern: differentiate w.r.t. adapters, base fixed."""
  model = BertClassifier(BERT, 2, LoRAConfig(rank=2), pooling="cls")
  base, adapters = split_params(model.init(jax.random.key(0), IDS))

  def loss(ad):
    logits = model.apply(merge_params(base, ad), IDS)
    return -jax.nn.log_softmax(logits)[:, 0].mean()

  grads = jax.jit(jax.grad(loss))(adapters)
  chex.assert_trees_all_equal_structs(grads, adapters)
  # lora_a gets no gradient while B = 0 (d/dA of x A B is x^T (g B^T) = 0);
  # lora_b and the head do.
  flat = {"/".join(str(k.key) for k in p): g for p, g in
          jax.tree_util.tree_flatten_with_path(grads)[0]}
  assert all(np.all(g == 0) for n, g in flat.items() if n.endswith("lora_a"))
  assert any(np.any(g != 0) for n, g in flat.items() if n.endswith("lora_b"))
