"""FLTrust's root reference (afl/server/root.py) against hand-written SGD."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afl import models
from afl.client import task_key
from afl.config import build_config
from afl.server import root
from afl.simulation import Simulation
from afl.validate import ConfigError
from configs import tiny


def _root_config(**trust):
  c = tiny.get_config()
  c.trust.update(enabled=True, reference="root", root_examples=40, **trust)
  c.stop.max_versions = 4
  return build_config(c)


def test_hold_out_is_a_seeded_split():
  a, rest = root.hold_out(100, 10, seed=3)
  assert len(a) == 10 and len(set(a)) == 10
  np.testing.assert_array_equal(np.sort(np.concatenate([a, rest])),
                                np.arange(100))
  np.testing.assert_array_equal(a, root.hold_out(100, 10, seed=3)[0])
  assert not np.array_equal(a, root.hold_out(100, 10, seed=4)[0])


def test_root_examples_are_no_clients_data_and_logged():
  lines = []
  sim = Simulation(_root_config(), None, log=lines.append)
  ids, _ = root.hold_out(len(sim.c.dataset.train_y), 40, seed=0)
  shards = np.asarray(sim.c.partition.indices)
  assert not set(ids.tolist()) & set(shards.tolist())
  assert len(shards) + 40 <= len(sim.c.dataset.train_y)
  assert any("ASSUMPTION" in m and "40 held-out" in m for m in lines)
  s = sim.run()
  assert s["trust_reference"] == "root" and s["trust_root_examples"] == 40
  assert "clean" in s["trust_assumption"]


def test_root_update_is_local_sgd_on_the_root_examples():
  """The reference = `local_steps` optax SGD steps from the given params on
  batches drawn with replacement from the root examples with the task key
  of (client 0, aggregation index): recomputed here step by step."""
  cfg = _root_config()
  sim = Simulation(cfg, None, log=lambda m: None)
  ref = sim.server.reference
  ds, c = sim.c.dataset, cfg.client
  ids, _ = root.hold_out(len(ds.train_y), 40, seed=0)
  params = sim.server.params
  got = np.asarray(ref(params, 7))

  apply_fn, _, _ = models.build_model(cfg.model, ds.num_classes,
                                      ds.train_x.shape[1:],
                                      jax.random.PRNGKey(0), lambda m: None)

  def loss(p, x, y):
    logits = apply_fn(p, x, None)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  opt = optax.sgd(c.lr)
  p, st = params, opt.init(params)
  key = task_key(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 3), 0, 7)
  for _ in range(c.local_steps):
    key, sub = jax.random.split(key)
    pos = np.asarray(jax.random.randint(sub, (c.batch_size,), 0, len(ids)))
    batch = ids[pos]
    g = jax.grad(loss)(p, jnp.asarray(ds.train_x[batch]),
                       jnp.asarray(ds.train_y[batch]))
    u, st = opt.update(g, st, p)
    p = optax.apply_updates(p, u)
  want = np.asarray(jax.flatten_util.ravel_pytree(
      jax.tree_util.tree_map(jnp.subtract, p, params))[0])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(want).sum() > 0
  # Another aggregation draws other batches.
  assert not np.allclose(np.asarray(ref(params, 8)), got)


def test_root_examples_must_leave_client_data():
  c = tiny.get_config()
  c.trust.update(enabled=True, reference="root", root_examples=10_000)
  with pytest.raises(ConfigError, match="trust.root_examples"):
    Simulation(build_config(c), None, log=lambda m: None)


@pytest.mark.parametrize("kv", [("reference", "mean"), ("root_examples", 0)])
def test_reference_keys_validated(kv):
  c = tiny.get_config()
  c.trust.update(enabled=True, **dict([kv]))
  with pytest.raises(ConfigError, match=f"trust.{kv[0]}"):
    build_config(c)
