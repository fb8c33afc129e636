"""Top-k, error feedback and bytes accounting against closed forms and numpy."""
import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree

from afl import compression as C
from afl import config
from afl import config_tree


def ref_topk_mask(x, k):
  """Stable sort by descending magnitude: lowest index first among ties."""
  mag = np.abs(x).astype(np.float64)
  mag[np.isnan(mag)] = np.inf
  order = np.lexsort((np.arange(len(x)), -mag))
  mask = np.zeros(len(x), bool)
  mask[order[:k]] = True
  return mask


class TopKTest(parameterized.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.parameters((1000, 1), (1000, 10), (1000, 999), (1, 1))
  def test_vs_argpartition(self, d, k):
    x = np.random.default_rng(d + k).standard_normal(d).astype(np.float32)
    mask = np.asarray(self.variant(C.topk_mask, static_argnums=1)(x, k))
    want = np.zeros(d, bool)
    want[np.argpartition(-np.abs(x), k - 1)[:k]] = True
    np.testing.assert_array_equal(mask, want)
    vals, idx = self.variant(C.topk_sparsify, static_argnums=1)(x, k)
    assert idx.dtype == jnp.int32 and idx.shape == (k,)
    np.testing.assert_array_equal(np.asarray(idx), np.flatnonzero(want))
    np.testing.assert_array_equal(np.asarray(vals), x[np.flatnonzero(want)])
    np.testing.assert_array_equal(C.densify(vals, idx, d),
                                  np.where(want, x, 0))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 3, 5, 11)
  def test_ties_lowest_index_first(self, k):
    # Magnitudes 2, 1, 1, 2, 1, 2, 1, 1, 0, -0, 1 with both signs.
    x = np.array([2., -1., 1., -2., 1., 2., -1., 1., 0., -0., 1.], np.float32)
    mask = np.asarray(self.variant(C.topk_mask, static_argnums=1)(x, k))
    np.testing.assert_array_equal(mask, ref_topk_mask(x, k))
    assert mask.sum() == k

  def test_ties_random_repeated_magnitudes(self):
    rng = np.random.default_rng(0)
    fn = jax.jit(C.topk_mask, static_argnums=1)
    for k in (1, 7, 50, 199):
      x = (rng.integers(0, 4, 200) * rng.choice([-1., 1.], 200)).astype(
          np.float32)
      np.testing.assert_array_equal(fn(x, k), ref_topk_mask(x, k))

  def test_sparsify_vmaps(self):
    x = jnp.array([[1., 3., 2.], [5., 0., -6.]])
    vals, idx = jax.vmap(lambda r: C.topk_sparsify(r, 2))(x)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 2]])
    np.testing.assert_array_equal(vals, [[3., 2.], [5., -6.]])

  def test_nan_counts_as_largest(self):
    x = np.array([1., np.nan, 3., -2.], np.float32)
    np.testing.assert_array_equal(C.topk_mask(x, 2), [False, True, True,
                                                      False])

  def test_k_range(self):
    with pytest.raises(ValueError, match="k must be"):
      C.topk_mask(jnp.ones(3), 4)
    with pytest.raises(ValueError, match="k must be"):
      C.topk_mask(jnp.ones(3), 0)

  @parameterized.parameters((0.01, 1000, 10), (0.07, 100, 7), (1e-9, 10, 1),
                            (1.0, 7, 7), (0.5, 3, 2), (0.015, 100, 2),
                            (0.3, 10, 3))
  def test_k_for(self, ratio, d, k):
    assert C.k_for(ratio, d) == k

  def test_per_tensor(self):
    rng = np.random.default_rng(1)
    tree = {"w": rng.standard_normal((6, 5)).astype(np.float32),
            "b": rng.standard_normal(5).astype(np.float32),
            "s": np.array(3.0, np.float32)}
    out = jax.jit(C.topk_per_tensor, static_argnums=1)(tree, 0.2)
    for name, leaf in tree.items():
      k = C.k_for(0.2, leaf.size)
      flat = leaf.ravel()
      want = np.where(ref_topk_mask(flat, k), flat, 0).reshape(leaf.shape)
      np.testing.assert_array_equal(out[name], want)
    # The same selection on the raveled vector with per-tensor segments.
    flat, unravel = ravel_pytree(tree)
    seg = C.segments_for(tree, 0.2)
    assert C.budget_total(seg) == 6 + 1 + 1
    sent = C.compress(flat, seg)
    chex.assert_trees_all_equal(unravel(sent), out)

  def test_segments_must_cover_vector(self):
    with pytest.raises(ValueError, match="segment sizes"):
      C.compress(jnp.ones(5), ((2, 1), (2, 1)))


class ErrorFeedbackTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_conserves_mass(self, float16):
    d, k, steps = 300, 10, 25
    rng = np.random.default_rng(2)
    deltas = rng.standard_normal((steps, d)).astype(np.float32)
    step = jax.jit(lambda dl, r: C.compress_with_feedback(
        dl, r, k, float16=float16))
    residual = jnp.zeros(d)
    total_sent = np.zeros(d, np.float64)
    for t in range(steps):
      sent, residual = step(deltas[t], residual)
      sent = np.asarray(sent)
      assert np.count_nonzero(sent) <= k
      if float16:  # every sent value is exactly representable in float16
        np.testing.assert_array_equal(sent.astype(np.float16).astype(
            np.float32), sent)
      total_sent += sent
    np.testing.assert_allclose(total_sent + np.asarray(residual),
                               deltas.astype(np.float64).sum(0), atol=1e-4)

  def test_single_step_definition(self):
    delta = jnp.array([3., -1., 0.5, -4., 0.2])
    residual = jnp.array([0., 2.5, 0., 0., -0.1])
    sent, new = C.compress_with_feedback(delta, residual, 2)
    corrected = np.array([3., 1.5, 0.5, -4., 0.1], np.float32)
    np.testing.assert_allclose(sent, [3., 0., 0., -4., 0.])
    np.testing.assert_allclose(new, corrected - np.asarray(sent))

  def test_float16_rounding_goes_to_residual(self):
    delta = jnp.array([1.0001, 1e5, 0.0], jnp.float32)
    sent, res = C.compress_with_feedback(delta, jnp.zeros(3), 2, float16=True)
    sent = np.asarray(sent)
    assert sent[0] == np.float32(np.float16(1.0001))
    assert sent[1] == np.float32(np.finfo(np.float16).max)  # clipped, finite
    np.testing.assert_allclose(sent + np.asarray(res), delta, rtol=1e-7)

  def test_nonfinite_residual_reset(self):
    delta = jnp.array([np.inf, 1.0, 2.0])
    sent, res = C.compress_with_feedback(delta, jnp.zeros(3), 1)
    assert np.isinf(np.asarray(sent)[0])
    np.testing.assert_array_equal(res, [0., 1., 2.])

  def test_vmap_over_cohort(self):
    rng = np.random.default_rng(3)
    deltas = rng.standard_normal((4, 50)).astype(np.float32)
    res = rng.standard_normal((4, 50)).astype(np.float32)
    fn = jax.jit(jax.vmap(lambda d, r: C.compress_with_feedback(d, r, 5)))
    sent, new = fn(deltas, res)
    for i in range(4):
      s, n = C.compress_with_feedback(deltas[i], res[i], 5)
      np.testing.assert_array_equal(sent[i], s)
      np.testing.assert_array_equal(new[i], n)

  def test_make_compressor(self):
    tree = {"a": jnp.zeros((10,)), "b": jnp.zeros((4, 5))}
    delta = jnp.arange(30.0) - 15.0
    res = jnp.ones(30)
    none = C.make_compressor(C.CompressionConfig(kind="none"), tree)
    s, r = none(delta, res)
    np.testing.assert_array_equal(s, delta)
    np.testing.assert_array_equal(r, 0)
    ef = C.make_compressor(C.CompressionConfig(kind="topk", ratio=0.1), tree)
    s, r = ef(delta, res)
    s2, r2 = C.compress_with_feedback(delta, res, 3)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(r, r2)
    no_ef = C.make_compressor(
        C.CompressionConfig(kind="topk", ratio=0.1, error_feedback=False),
        tree)
    s, r = no_ef(delta, res)
    np.testing.assert_array_equal(s, C.compress(delta, 3))
    np.testing.assert_array_equal(r, 0)
    per = C.make_compressor(
        C.CompressionConfig(kind="topk", ratio=0.1, per_tensor=True), tree)
    s, _ = per(delta, jnp.zeros(30))
    assert np.count_nonzero(np.asarray(s)[:10]) == 1
    assert np.count_nonzero(np.asarray(s)[10:]) == 2


class ResidualStoreTest(parameterized.TestCase):

  def test_only_participants(self):
    store = C.ResidualStore()
    np.testing.assert_array_equal(store.get(7, 4), np.zeros(4))
    assert len(store) == 0 and 7 not in store
    buf = np.array([1., 2., 3., 4.])
    store.set(7, buf)
    buf[:] = 0  # the store keeps its own copy
    np.testing.assert_array_equal(store.get(7, 4), [1., 2., 3., 4.])
    store.set_many([2, 9, 7], np.ones((3, 4)), mask=[True, False, True])
    assert len(store) == 2 and 9 not in store
    np.testing.assert_array_equal(store.get_many([7, 3, 2], 4),
                                  [[1] * 4, [0] * 4, [1] * 4])
    assert store.nbytes() == 2 * 4 * 4
    with pytest.raises(ValueError, match="shape"):
      store.get(7, 5)

  def test_state_dict_roundtrip(self):
    store = C.ResidualStore()
    for cid in (5, 1, 30):
      store.set(cid, np.full(3, cid, np.float32))
    state = store.state_dict()
    np.testing.assert_array_equal(state["ids"], [1, 5, 30])
    other = C.ResidualStore()
    other.load_state_dict(state)
    assert len(other) == 3
    for cid in (5, 1, 30):
      np.testing.assert_array_equal(other.get(cid, 3), store.get(cid, 3))
    empty = C.ResidualStore()
    empty.load_state_dict(C.ResidualStore().state_dict())
    assert len(empty) == 0


class BytesTest(parameterized.TestCase):

  @parameterized.parameters((1000, 10, 4, 4), (10**6, 1000, 2, 4),
                            (7, 7, 4, 8))
  def test_closed_form(self, d, k, vb, ib):
    assert C.bytes_per_update(d, k, value_bytes=vb, index_bytes=ib) == (
        k * (vb + ib))
    assert C.bytes_per_update(d, k, value_bytes=vb, dense=True) == d * vb

  def test_config_bytes(self):
    assert C.CompressionConfig().update_bytes(1000) == 4000
    assert C.CompressionConfig(float16=True).update_bytes(1000) == 2000
    cfg = C.CompressionConfig(kind="topk", ratio=0.01)
    assert cfg.update_bytes(1000) == 10 * 8
    f16 = C.CompressionConfig(kind="topk", ratio=0.01, float16=True)
    assert f16.update_bytes(1000) == 10 * 6
    assert cfg.update_bytes(30, ((10, 1), (20, 2))) == 3 * 8

  def test_comm_stats(self):
    s = C.CommStats()
    s.add_up(80, count=3)
    s.add_down(4000)
    s.add_up(80)
    assert s.as_dict() == dict(up_bytes=320, down_bytes=4000, uploads=4,
                               downloads=1, total_bytes=4320)
    t = C.CommStats()
    t.load_state_dict(s.state_dict())
    assert t == s


class ConfigTest(parameterized.TestCase):

  def test_defaults_valid(self):
    C.CompressionConfig().validate("compression")
    C.CompressionConfig(kind="topk", ratio=1.0).validate("compression")

  @parameterized.parameters(("kind", "randk"), ("ratio", 0.0),
                            ("ratio", 1.5), ("ratio", True),
                            ("error_feedback", 1), ("per_tensor", "yes"),
                            ("float16", None))
  def test_validate_names_key(self, key, value):
    with pytest.raises(ValueError,
                       match=rf"^config\.compression\.{key}: ") as e:
      C.CompressionConfig(**{key: value}).validate("compression")
    assert "\n" not in str(e.value)
    # launch.py prints ConfigError (a ValueError) as one line.
    assert isinstance(e.value, config.ConfigError)

  def test_builds_through_afl_config(self):
    cfg = config_tree.build(C.CompressionConfig, {"kind": "topk", "ratio": 1},
                            "compression")
    assert cfg.ratio == 1.0 and isinstance(cfg.ratio, float)


@pytest.mark.parametrize("module", [C, C.topk, C.host])
def test_doctests(module):
  res = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert res.failed == 0 and res.attempted > 0
