"""The registered pre-aggregation stages (bucketing, NNM) against numpy
(duplicate merging: tests/test_dedup.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.config import base_config, build_config
from afl.server import stages
from afl.server.rows import PAD_ID, Rows
from afl.simulation import Simulation
from afl.validate import ConfigError
from configs import tiny

K, D = 10, 4


def _rows(flat, mask, weight=None, malicious=None):
  flat = jnp.asarray(flat, jnp.float32)
  k = flat.shape[0]
  return Rows(
      flat=flat,
      weight=jnp.ones(k) if weight is None else jnp.asarray(weight,
                                                            jnp.float32),
      scale=jnp.full(k, 0.5), mask=jnp.asarray(mask),
      ids=jnp.arange(k, dtype=jnp.int32),
      malicious=(jnp.zeros(k, bool) if malicious is None
                 else jnp.asarray(malicious)),
      aggregate=jnp.zeros(flat.shape[1], jnp.float32))


def _stage(name, key=jax.random.PRNGKey(3), **params):
  entry = stages.REGISTRY[name]
  return entry.build(entry.params(**params), key=key)


def _expected_buckets(key, flat, mask, weight, malicious, s):
  """The stage's documented order, rebuilt: the valid rows in the order of
  jax.random.permutation(key, K); buckets of s consecutive ones."""
  perm = np.asarray(jax.random.permutation(key, len(mask)))
  order = [i for i in perm if mask[i]]
  groups = [order[b:b + s] for b in range(0, len(order), s)]
  means = [np.average(flat[g], axis=0, weights=weight[g]) for g in groups]
  return (groups, np.asarray(means),
          [weight[g].sum() for g in groups],
          [malicious[g].any() for g in groups])


@pytest.mark.parametrize("weighted", [False, True])
def test_bucketing_against_numpy_with_its_key(weighted):
  """n = 7 of 10 rows valid, s = 3: buckets of 3, 3, 1 over the key's
  permutation, a fresh subkey (another order) at the next aggregation."""
  rng = np.random.default_rng(0)
  flat = rng.normal(size=(K, D)).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0, 1], bool)
  weight = (rng.uniform(0.5, 2.0, K) if weighted else np.ones(K)).astype(
      np.float32)
  malicious = np.zeros(K, bool)
  malicious[4] = True
  key = jax.random.PRNGKey(7)
  stage = _stage("bucketing", key=key, bucket_size=3)
  apply = jax.jit(stage.apply)
  rows = _rows(flat, mask, weight, malicious)
  state = stage.init(rows)
  groups_seen = []
  for _ in range(2):
    key, sub = jax.random.split(key)
    out, state = apply(rows, state)
    groups, means, weights, bad = _expected_buckets(sub, flat, mask, weight,
                                                    malicious, 3)
    groups_seen.append(groups)
    assert [len(g) for g in groups] == [3, 3, 1]
    np.testing.assert_array_equal(out.mask, np.arange(K) < 3)
    np.testing.assert_allclose(out.flat[:3], means, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.flat[3:], 0.0)
    np.testing.assert_allclose(out.weight[:3], weights, rtol=1e-6)
    np.testing.assert_array_equal(out.weight[3:], 0.0)
    np.testing.assert_array_equal(out.scale, out.mask.astype(np.float32))
    np.testing.assert_array_equal(out.malicious[:3], bad)
    assert not np.any(out.malicious[3:])
    np.testing.assert_array_equal(out.ids, PAD_ID + K + np.arange(K))
    # A weighted mean aggregator sees the same mean with or without it.
    np.testing.assert_allclose(
        np.asarray(out.weight) @ np.asarray(out.flat) / out.weight.sum(),
        weight[mask] @ flat[mask] / weight[mask].sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state, key)  # the state is the key
  assert groups_seen[0] != groups_seen[1]


def test_bucketing_any_valid_count_one_compilation():
  """n = 0, 1, 2, 4 rows, s = 2: ceil(n / 2) buckets, all from one trace; a
  lone row comes out bit for bit; with n = 0 nothing is valid."""
  rng = np.random.default_rng(1)
  flat = rng.normal(size=(K, D)).astype(np.float32)
  stage = _stage("bucketing", bucket_size=2)
  traces = []

  def apply(rows, state):
    traces.append(1)
    return stage.apply(rows, state)
  apply = jax.jit(apply)
  for n in (0, 1, 2, 4):
    mask = np.zeros(K, bool)
    mask[K - n:] = True
    out, _ = apply(_rows(flat, mask), stage.init(None))
    assert int(out.mask.sum()) == -(-n // 2)
    np.testing.assert_array_equal(out.mask, np.arange(K) < -(-n // 2))
    assert np.all(np.isfinite(out.flat))
    if n == 0:
      np.testing.assert_array_equal(out.flat, 0.0)
      np.testing.assert_array_equal(out.weight, 0.0)
    if n == 1:
      np.testing.assert_array_equal(out.flat[0], flat[-1])
    if n == 4:  # two buckets of two: together the four rows
      np.testing.assert_allclose(out.flat[:2].sum(0) * 2, flat[-4:].sum(0),
                                 rtol=1e-5, atol=1e-6)
  assert len(traces) == 1


def test_bucketing_zero_weight_bucket_takes_plain_mean():
  flat = np.arange(8, dtype=np.float32).reshape(2, 4)
  stage = _stage("bucketing", bucket_size=2)
  out, _ = stage.apply(_rows(flat, [True, True], weight=[0.0, 0.0]),
                       stage.init(None))
  np.testing.assert_allclose(out.flat[0], flat.mean(0))
  assert float(out.weight[0]) == 0.0


def _nnm_numpy(flat, mask, f):
  """Brute force: each valid row the mean of its max(n - f, 1) nearest
  valid rows (itself included)."""
  idx = np.flatnonzero(mask)
  m = max(len(idx) - f, 1)
  out = flat.astype(np.float64).copy()
  for i in idx:
    d = np.sum((flat[idx] - flat[i]) ** 2, axis=1)
    out[i] = flat[idx[np.argsort(d, kind="stable")[:m]]].mean(0)
  return out


@pytest.mark.parametrize("f", [0, 1, 2, 3, 6, 9])
def test_nnm_against_brute_force(f):
  """7 valid rows of 10 (invalid rows hold junk and stay as they are), f up
  to beyond n (one neighbour: itself)."""
  rng = np.random.default_rng(f)
  flat = rng.normal(size=(K, D)).astype(np.float32)
  flat[:3] += 4.0  # a cluster
  mask = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1], bool)
  flat[~mask] = 1e6
  stage = _stage("nnm", num_byzantine=f)
  out, _ = jax.jit(stage.apply)(_rows(flat, mask), stage.init(None))
  np.testing.assert_allclose(out.flat, _nnm_numpy(flat, mask, f), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(out.mask, mask)


def test_nnm_no_valid_row_and_one():
  flat = np.random.default_rng(2).normal(size=(K, D)).astype(np.float32)
  stage = _stage("nnm", num_byzantine=1)
  apply = jax.jit(stage.apply)
  out, _ = apply(_rows(flat, np.zeros(K, bool)), ())
  np.testing.assert_array_equal(out.flat, flat)
  one = np.arange(K) == 4
  out, _ = apply(_rows(flat, one), ())
  np.testing.assert_allclose(out.flat, flat, rtol=1e-6)


@pytest.mark.parametrize("name,params", [("nnm", {"num_byzantine": 2}),
                                         ("bucketing", {"bucket_size": 3})])
def test_huge_finite_rows_stay_finite(name, params):
  """Rows x 1e30: squared distances would overflow float32; the output is
  the scaled output of the unscaled rows."""
  flat = np.random.default_rng(3).normal(size=(K, D)).astype(np.float32)
  mask = np.arange(K) != 5
  stage = _stage(name, **params)
  apply = jax.jit(stage.apply)
  small, _ = apply(_rows(flat, mask), stage.init(None))
  huge, _ = apply(_rows(flat * 1e30, mask), stage.init(None))
  assert np.all(np.isfinite(huge.flat))
  np.testing.assert_allclose(huge.flat, np.asarray(small.flat) * 1e30,
                             rtol=1e-4, atol=1e25)


@pytest.mark.parametrize("name", ["bucketing", "nnm", "dedup"])
def test_private_aggregation_refuses_the_stages(name):
  c = base_config()
  c.aggregator.stages = (name,)
  c.secagg.enabled = True
  with pytest.raises(ConfigError) as err:
    build_config(c)
  msg = str(err.value)
  assert "\n" not in msg
  assert msg.startswith("config.aggregator.stages: stage ") and name in msg
  assert not stages.REGISTRY[name].prop("linear")


@pytest.mark.parametrize("stage_names,aggregator",
                         [(("bucketing",), "centered_clip"),
                          (("nnm", "bucketing"), "median"),
                          (("dedup", "bucketing"), "krum")])
def test_tiny_simulation_with_stages(stage_names, aggregator):
  c = tiny.get_config()
  c.server.update(buffer_size=6)
  c.aggregator.update(name=aggregator, stages=stage_names)
  c.stage.bucketing.bucket_size = 3
  c.stop.max_versions = 3
  cfg = build_config(c)
  assert cfg.stage.bucketing.bucket_size == 3
  sim = Simulation(cfg, None, log=lambda m: None)
  at = stage_names.index("bucketing")
  key = np.asarray(sim.server.state.stages[1][at])
  summary = sim.run()
  assert summary["num_server_versions"] == 3
  leaves = jax.tree_util.tree_leaves(sim.server.params)
  assert all(np.all(np.isfinite(x)) for x in leaves)
  # bucketing's state (its key) was split once per aggregation.
  for _ in range(3):
    key = jax.random.split(key)[0]
  np.testing.assert_array_equal(sim.server.state.stages[1][at], key)
