"""Aggregation kernels against independent references (numpy, scipy, loops)."""
import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from absl.testing import parameterized

from afl import aggregators
from afl.aggregators import (_scale, _sortnet, base, bulyan, centered_clip,
                             clipping, geomed, hybrid, krum, mean, median,
                             params, trimmed_mean, trust)
from afl.validate import ConfigError

SIZES = (1, 2, 3, 64)
D = 7


# ----------------------------------------------------------------------------
# Test data and references.
# ----------------------------------------------------------------------------

def make_case(k, corrupt, seed=0, d=D, int_weights=False):
  """[K, D] float32 with ties; padding / NaN / inf rows when `corrupt`.

  Returns (x, weights, mask, valid) where `valid` is the reference's view of
  which rows count (mask and all finite).
  """
  rng = np.random.default_rng(seed + 1000 * k + int(corrupt))
  x = rng.standard_normal((k, d))
  x[:, : d // 2] = np.round(x[:, : d // 2])  # many ties in these columns
  if int_weights:  # exact ties in cumulative weight, incl. zero weights
    w = rng.integers(0, 4, size=k).astype(np.float64)
  else:
    w = rng.uniform(0.2, 3.0, size=k)
  mask = np.ones(k, bool)
  if corrupt and k >= 3:
    kinds = rng.integers(0, 4, size=k)  # 0: fine, 1: pad, 2: NaN, 3: inf
    kinds[-1] = 0  # at least one valid row
    for i, kind in enumerate(kinds):
      if kind == 1:
        mask[i] = False
        x[i] = 1e9  # padding garbage must not leak
      elif kind == 2:
        x[i, rng.integers(d)] = np.nan
      elif kind == 3:
        x[i, rng.integers(d)] = -np.inf if i % 2 else np.inf
  x = x.astype(np.float32)
  w = w.astype(np.float32)
  if int_weights and w[mask & np.all(np.isfinite(x), 1)].sum() == 0:
    w[-1] = 1.0
  valid = mask & np.all(np.isfinite(x), axis=1)
  return x, w, mask, valid


def ref_weighted_median(x, w, valid):
  """Per-coordinate loop; the rule in median.py's docstring, in float64."""
  keep = valid & (w > 0)
  xs, ws = x[keep].astype(np.float64), w[keep].astype(np.float64)
  out = np.zeros(x.shape[1])
  if not keep.any():
    return out
  for j in range(x.shape[1]):
    order = np.argsort(xs[:, j], kind="stable")
    v, c = xs[order, j], np.cumsum(ws[order])
    half = c[-1] / 2
    lower = v[np.argmax(c >= half)]
    upper = v[np.argmax(c > half)]
    out[j] = (lower + upper) / 2
  return out


def ref_weighted_trimmed_mean(x, w, valid, beta, trim=None):
  """Per-coordinate loop over weight intervals (trimmed_mean.py docstring);
  `trim(n)` rows' worth cut per side, by default int(beta * n)."""
  keep = valid & (w > 0)
  xs, ws = x[keep].astype(np.float64), w[keep].astype(np.float64)
  out = np.zeros(x.shape[1])
  n = len(xs)
  if n == 0:
    return out
  t = int(beta * n) if trim is None else trim(n)
  total = ws.sum()
  lo, hi = t * total / n, total - t * total / n
  for j in range(x.shape[1]):
    order = np.argsort(xs[:, j], kind="stable")
    acc, start = 0.0, 0.0
    for i in order:
      end = start + ws[i]
      acc += xs[i, j] * max(0.0, min(end, hi) - max(start, lo))
      start = end
    out[j] = acc / (hi - lo)
  return out


def ref_krum_scores(x, valid, f):
  """Brute force: explicit pairwise distances, sort, sum the m nearest."""
  idx = np.flatnonzero(valid)
  n = len(idx)
  m = min(max(n - f - 2, 1), max(n - 1, 0))
  scores = np.full(len(x), np.inf)
  for i in idx:
    d = sorted(float(np.sum((x[i].astype(np.float64) - x[j]) ** 2))
               for j in idx if j != i)
    scores[i] = sum(d[:m])
  return scores


def np_median_or_zero(x, valid):
  return np.median(x[valid], axis=0) if valid.any() else np.zeros(x.shape[1])


def apply_flat(agg, x, w, mask, state=()):
  out, state = agg.apply({"u": jnp.asarray(x)}, jnp.asarray(w),
                         jnp.asarray(mask), state)
  return out["u"], state


# ----------------------------------------------------------------------------
# Kernels vs references, with and without jit.
# ----------------------------------------------------------------------------

# (K, corrupt); corruption needs K >= 3 to leave a valid row.
CASES = [(1, False), (2, False), (3, True), (64, True)]


class KernelTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_median(self, k, corrupt):
    x, w, mask, valid = make_case(k, corrupt)
    agg = aggregators.get("median")
    fn = self.variant(lambda x, w, m: apply_flat(agg, x, w, m)[0])
    chex.assert_trees_all_close(fn(x, w, mask), np_median_or_zero(x, valid),
                                atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_weighted_median(self, k, corrupt):
    agg = aggregators.get("median", weighted=True)
    fn = self.variant(lambda x, w, m: apply_flat(agg, x, w, m)[0])
    for int_weights in (False, True):
      x, w, mask, valid = make_case(k, corrupt, int_weights=int_weights)
      chex.assert_trees_all_close(fn(x, w, mask),
                                  ref_weighted_median(x, w, valid), atol=1e-6)
    # Equal weights (not 1, not a power of 2) reproduce np.median exactly.
    x, _, mask, valid = make_case(k, corrupt)
    chex.assert_trees_all_close(fn(x, np.full(k, 0.3, np.float32), mask),
                                np_median_or_zero(x, valid), atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_trimmed_mean(self, k, corrupt):
    x, w, mask, valid = make_case(k, corrupt)
    for beta in (0.1, 0.49):
      agg = aggregators.get("trimmed_mean", beta=beta)
      fn = self.variant(lambda x, w, m, agg=agg: apply_flat(agg, x, w, m)[0])
      chex.assert_trees_all_close(
          fn(x, w, mask), scipy.stats.trim_mean(x[valid], beta, axis=0),
          atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_weighted_trimmed_mean(self, k, corrupt):
    beta = 0.3
    agg = aggregators.get("trimmed_mean", beta=beta, weighted=True)
    fn = self.variant(lambda x, w, m: apply_flat(agg, x, w, m)[0])
    for int_weights in (False, True):
      x, w, mask, valid = make_case(k, corrupt, int_weights=int_weights)
      chex.assert_trees_all_close(
          fn(x, w, mask), ref_weighted_trimmed_mean(x, w, valid, beta),
          atol=1e-5)
    x, _, mask, valid = make_case(k, corrupt)
    chex.assert_trees_all_close(
        fn(x, np.full(k, 0.3, np.float32), mask),
        scipy.stats.trim_mean(x[valid], beta, axis=0), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_krum(self, k, corrupt):
    x, w, mask, valid = make_case(k, corrupt)
    x[:, : D // 2] += 0.01 * np.arange(k)[:, None]  # break exact score ties
    f = 1
    ref = ref_krum_scores(x, valid, f)  # scores themselves: test_krum_scores
    agg = aggregators.get("krum", num_byzantine=f)
    out = self.variant(lambda x, w, m: apply_flat(agg, x, w, m)[0])(x, w, mask)
    chex.assert_trees_all_close(out, x[np.argmin(ref)])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_multi_krum(self, k, corrupt):
    x, w, mask, valid = make_case(k, corrupt)
    x[:, : D // 2] += 0.01 * np.arange(k)[:, None]
    f, sel = 1, 3
    ref = ref_krum_scores(x, valid, f)
    chosen = np.argsort(ref, kind="stable")[: min(sel, valid.sum())]
    agg = aggregators.get("multi_krum", num_byzantine=f, num_selected=sel,
                          weighted=True)
    fn = self.variant(lambda x, w, m: apply_flat(agg, x, w, m)[0])
    for ww in (w, np.ones_like(w)):  # ones: the paper's uniform average
      expect = (ww[chosen] @ x[chosen].astype(np.float64)) / ww[chosen].sum()
      chex.assert_trees_all_close(fn(x, ww, mask), expect, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_geomed(self, k, corrupt):
    x, w, mask, valid = make_case(k, corrupt, d=3)
    agg = aggregators.get("geomed", max_iters=500, tol=1e-10, eps=1e-8)
    out = np.asarray(
        self.variant(lambda x, w, m: apply_flat(agg, x, w, m)[0])(x, w, mask),
        np.float64)
    xv, wv = x[valid].astype(np.float64), w[valid].astype(np.float64)
    obj = lambda v: np.sum(wv * np.linalg.norm(xv - v, axis=1))
    ref = scipy.optimize.minimize(
        obj, np.average(xv, axis=0, weights=wv), method="Nelder-Mead",
        options=dict(xatol=1e-9, fatol=1e-12, maxiter=20000)).x
    # Objective within float32 accuracy of the optimum, and close to it.
    self.assertLessEqual(obj(out), obj(ref) * (1 + 1e-5) + 1e-6)
    chex.assert_trees_all_close(out, ref, atol=2e-3)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_centered_clip(self, k, corrupt):
    x, w, mask, valid = make_case(k, corrupt)
    tau, iters = 0.8, 2
    agg = aggregators.get("centered_clip", tau=tau, iters=iters)
    fn = self.variant(lambda x, w, m, s: apply_flat(agg, x, w, m, s))
    xv = x[valid].astype(np.float64)
    wv = w[valid] / w[valid].sum()
    v = np.zeros(x.shape[1])
    # The zero center is init's state (tested in
    # test_centered_clip_bounds_outlier_influence).
    state = jnp.zeros(x.shape[1])
    for _ in range(2):  # second round starts from the first aggregate
      for _ in range(iters):
        diff = xv - v
        norm = np.linalg.norm(diff, axis=1)
        v = v + (wv * np.minimum(1, tau / np.maximum(norm, 1e-30))) @ diff
      out, state = fn(x, w, mask, state)
      chex.assert_trees_all_close(out, v, atol=1e-5)
      chex.assert_trees_all_close(state, v, atol=1e-5)


# ----------------------------------------------------------------------------
# Edge cases, closed forms, pipeline, compile behaviour.
# ----------------------------------------------------------------------------

ALL_KERNELS = [
    ("mean", {}), ("median", {}), ("median", {"weighted": True}),
    ("trimmed_mean", {"beta": 0.2}),
    ("trimmed_mean", {"beta": 0.2, "weighted": True}),
    ("trimmed_mean", {"byzantine_fraction": 0.3}),
    ("krum", {"num_byzantine": 1}), ("krum", {"byzantine_fraction": 0.2}),
    ("multi_krum", {"num_byzantine": 1, "num_selected": 2}),
    ("bulyan", {}), ("geomed", {}), ("centered_clip", {}), ("hybrid", {}),
    ("hybrid", {"byzantine_fraction": 0.3}),
]


@pytest.mark.parametrize("name,kw", ALL_KERNELS)
def test_pytree_single_trace_and_no_valid_rows(name, kw):
  """Nested pytree in/out; further calls with equal shapes do not retrace.

  The last call has no valid row (padding, NaN, inf): the result is zeros.
  """
  rng = np.random.default_rng(0)
  agg = aggregators.get(name, **kw)
  ups = {"a": jnp.asarray(rng.standard_normal((5, 2, 3)), jnp.float32),
         "b": (jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),)}
  state = agg.init(ups)
  if name == "centered_clip":  # None state -> [D] state: one warm-up call
    _, state = agg.apply(ups, jnp.ones(5), jnp.ones(5, bool), state)
    state = jnp.zeros_like(state)  # so the all-invalid call must give zeros
  chex.clear_trace_counter()
  # A plain wrapper, since chex refuses to wrap hybrid's already-jitted apply.
  fn = jax.jit(chex.assert_max_traces(lambda *a: agg.apply(*a), n=1))
  mask = jnp.asarray([1, 1, 0, 1, 1], bool)
  for seed in range(3):
    ups = jax.tree_util.tree_map(lambda u: u + seed, ups)
    out, _ = fn(ups, jnp.ones(5), mask, state)
  chex.assert_trees_all_equal_shapes(out, jax.tree_util.tree_map(
      lambda u: u[0], ups))
  bad = {"a": ups["a"].at[0, 0, 0].set(np.nan).at[1, 1, 1].set(np.inf),
         "b": (ups["b"][0].at[3, 2].set(-np.inf).at[4, 0].set(np.nan),)}
  out, _ = fn(bad, jnp.ones(5), mask, state)
  chex.assert_trees_all_close(out, jax.tree_util.tree_map(
      lambda u: jnp.zeros_like(u[0]), ups))


def test_hybrid_apply_is_jitted_and_compiles_once():
  agg = aggregators.get("hybrid")
  x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
  for s in range(3):
    apply_flat(agg, x + s, np.ones(6, np.float32), np.ones(6, bool),
               agg.init({"u": jnp.asarray(x)}))
  assert agg.apply._cache_size() == 1


@pytest.mark.parametrize("k", [2, 3, 64])
def test_median_even_count_averages_middle_pair(k):
  x = np.arange(k * 2, dtype=np.float32).reshape(k, 2)[::-1].copy()
  mask = np.ones(k, bool)
  mask[0] = k % 2 == 0  # keep an even number of valid rows in every case
  n_even = mask.sum() % 2 == 0
  out = median.median_flat(jnp.asarray(x), jnp.asarray(mask))
  chex.assert_trees_all_close(out, np.median(x[mask], axis=0))
  assert n_even


def test_weighted_median_closed_forms():
  x = jnp.array([[1.0], [2.0], [3.0], [4.0]])
  valid = jnp.ones(4, bool)
  f = lambda w: float(median.weighted_median_flat(x, jnp.asarray(w), valid)[0])
  assert f([1.0, 1.0, 1.0, 1.0]) == 2.5  # exact half at a boundary: average
  assert f([1.0, 1.0, 1.0, 5.0]) == 4.0  # heavy row holds the half mass
  assert f([3.0, 1.0, 1.0, 1.0]) == 1.5  # C = 3 = W/2 exactly at row 1
  assert f([0.0, 1.0, 0.0, 1.0]) == 3.0  # zero weights never chosen: (2+4)/2


def test_weighted_trimmed_mean_closed_form():
  # Weights 1,1,2 -> W = 4, n = 3, beta 0.34: t = 1, cut 4/3 from each end.
  # Kept: row 2 (value 2) on [4/3, 2) -> 2/3, row 3 (value 3) on [2, 8/3).
  x = jnp.array([[1.0], [2.0], [3.0]])
  out = trimmed_mean.weighted_trimmed_mean_flat(
      x, jnp.array([1.0, 1.0, 2.0]), jnp.ones(3, bool), 0.34)
  expect = (2 * 2 / 3 + 3 * 2 / 3) / (4 / 3)
  chex.assert_trees_all_close(out, jnp.array([expect]))


@pytest.mark.parametrize("k,d,block", [(17, 1000, 128), (64, 2500, None)])
def test_column_blocking_matches_references(k, d, block):
  """Several blocks and an overlapping last block give exact results."""
  x, w, _, _ = make_case(k, False, d=d)
  valid = np.ones(k, bool)
  valid[0] = False
  keys = _sortnet.sort_keys(jnp.asarray(x), jnp.asarray(valid))
  out = _sortnet.map_column_blocks(
      lambda a: _sortnet.bitonic_sort(a[0])[k // 2], (keys,), block=block)
  chex.assert_trees_all_close(out, np.sort(np.where(valid[:, None], x, np.inf),
                                           axis=0)[k // 2])
  chex.assert_trees_all_close(median.median_flat(x, valid),
                              np.median(x[valid], axis=0), atol=1e-6)
  chex.assert_trees_all_close(
      trimmed_mean.weighted_trimmed_mean_flat(x, w, valid, 0.2),
      ref_weighted_trimmed_mean(x, w, valid, 0.2), atol=1e-5)
  if block is None:  # hybrid folds the clip factors into the blocks too
    x[2] *= 30
    out, _ = hybrid.hybrid_flat(jnp.asarray(x), jnp.asarray(w),
                                jnp.asarray(valid), clip_multiplier=1.5,
                                beta=0.2, min_trusted=1, weight_threshold=0.0)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    c = 1.5 * np.median(norms[valid])
    xc = x * np.minimum(1, c / norms)[:, None]
    chex.assert_trees_all_close(out, ref_weighted_trimmed_mean(xc, w, valid,
                                                               0.2), atol=1e-4)


@pytest.mark.parametrize("k,f", [(1, 0), (3, 1), (64, 8)])
def test_krum_scores(k, f):
  x, _, _, valid = make_case(k, True, d=20)
  scores = np.asarray(krum.krum_scores(jnp.asarray(x), jnp.asarray(valid), f))
  ref = ref_krum_scores(x, valid, f)
  # The scores of the rows times s^2, s a power of two.
  top = ref[valid].max()
  c = scores[valid].max() / top if top > 0 else 1.0
  assert np.log2(c) == pytest.approx(round(np.log2(c)), abs=1e-4)
  chex.assert_trees_all_close(np.where(valid, scores / c, 0),
                              np.where(valid, ref, 0), rtol=1e-4, atol=1e-5)
  assert np.all(np.isinf(scores[~valid]))
  assert int(np.argmin(scores)) == int(np.argmin(ref))


def test_geomed_collinear_and_weighted_closed_form():
  x = jnp.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
  out, _ = geomed.geomed_flat(x, jnp.ones(3), jnp.ones(3, bool), 500, 1e-12,
                              1e-9)
  chex.assert_trees_all_close(out, jnp.array([1.0, 0.0]), atol=1e-4)
  # A point holding more than half the weight is the geometric median.
  out, _ = geomed.geomed_flat(x, jnp.array([1.0, 1.0, 3.0]), jnp.ones(3, bool),
                              500, 1e-12, 1e-9)
  chex.assert_trees_all_close(out, jnp.array([5.0, 0.0]), atol=1e-4)


def test_geomed_start_on_a_data_point_still_converges():
  """The coordinate-wise median is the row (-2, -1), not the optimum: the
  smoothed Weiszfeld step barely leaves a data point, so the start must not
  be the median itself."""
  x = np.array([[3, -1], [-2, 2], [-2, -1], [1, 0], [-3, -3]], np.float32)
  out, _ = geomed.geomed_flat(jnp.asarray(x), jnp.ones(5), jnp.ones(5, bool))
  obj = lambda v: np.sum(np.linalg.norm(x - v, axis=1))
  ref = scipy.optimize.minimize(obj, x.mean(0), method="Nelder-Mead",
                                options=dict(xatol=1e-9, fatol=1e-12)).x
  assert obj(np.asarray(out, np.float64)) <= obj(ref) * (1 + 1e-4)
  assert obj(np.asarray(out, np.float64)) < obj(x[2]) - 0.1


def test_centered_clip_bounds_outlier_influence():
  agg = centered_clip.centered_clip(tau=1.0, iters=1)
  x = np.array([[0.0, 0.0], [0.0, 0.0], [1e6, 0.0]], np.float32)
  state = agg.init({"u": jnp.asarray(x)})
  np.testing.assert_array_equal(state, np.zeros(2))  # the zero center
  out, state = apply_flat(agg, x, np.ones(3, np.float32), np.ones(3, bool),
                          state)
  chex.assert_trees_all_close(out, np.array([1 / 3, 0.0]), atol=1e-6)
  # Next round starts at the previous aggregate.
  out, _ = apply_flat(agg, x, np.ones(3, np.float32), np.ones(3, bool), state)
  chex.assert_trees_all_close(out, np.array([1 / 3 + (-2 / 3 + 1) / 3, 0.0]),
                              atol=1e-6)


def test_norm_clipping():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8], [np.nan, 1.0]])
  valid = jnp.array([True, True, True, False])
  out = clipping.clip_by_norm(x, valid, 2.0)
  chex.assert_trees_all_close(out[:3], jnp.array([[1.2, 1.6], [0, 0],
                                                  [0.6, 0.8]]))
  assert np.isnan(out[3, 0])  # invalid rows untouched, still invalid
  out, thr = clipping.clip_relative_to_median_norm(x, valid, 2.0)
  assert float(thr) == pytest.approx(2.0)  # median of norms {5, 0, 1} = 1
  chex.assert_trees_all_close(out[0], jnp.array([1.2, 1.6]))


def test_hybrid_matches_composed_reference_and_falls_back():
  x, w, mask, valid = make_case(64, True, d=D)
  x[valid.nonzero()[0][:3]] *= 50  # a few rows that clipping must catch
  agg = hybrid.hybrid(clip_multiplier=2.0, beta=0.2, min_trusted=3,
                      weight_threshold=0.5)
  norms = np.linalg.norm(np.where(valid[:, None], x, 0).astype(np.float64),
                         axis=1)
  c = 2.0 * np.median(norms[valid])
  xc = x * np.minimum(1, c / np.maximum(norms, 1e-30))[:, None]
  out, st = apply_flat(agg, x, w, mask, agg.init({"u": jnp.asarray(x)}))
  assert not bool(st.used_fallback)
  assert float(st.clip_threshold) == pytest.approx(c, rel=1e-5)
  chex.assert_trees_all_close(out, ref_weighted_trimmed_mean(xc, w, valid, 0.2),
                              atol=1e-4)
  # Only two rows above the threshold -> weighted median fallback.
  w2 = np.where(np.arange(64) < 2, 1.0, 0.1).astype(np.float32)
  out, st = apply_flat(agg, x, w2, mask, agg.init({"u": jnp.asarray(x)}))
  assert bool(st.used_fallback) == (int(np.sum(valid & (w2 > 0.5))) < 3)
  chex.assert_trees_all_close(out, ref_weighted_median(xc, w2, valid),
                              atol=1e-4)


# ----------------------------------------------------------------------------
# Breakdown: f < K/2 huge rows.
# ----------------------------------------------------------------------------

def _attacked(k=9, f=4, d=6, seed=0, identical=False):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((k, d)).astype(np.float32)
  bad = rng.choice(k, f, replace=False)
  signs = rng.choice([-1.0, 1.0], size=(f, d))
  x[bad] = 1e6 if identical else 1e6 * signs
  honest = np.setdiff1d(np.arange(k), bad)
  return x, bad, honest


@pytest.mark.parametrize("seed,identical", [(0, False), (1, True)])
def test_breakdown_median_and_trimmed_mean(seed, identical):
  x, _, honest = _attacked(seed=seed, identical=identical)
  lo, hi = x[honest].min(0), x[honest].max(0)
  ones, mask = np.ones(9, np.float32), np.ones(9, bool)
  for name, kw in [("median", {}), ("median", {"weighted": True}),
                   ("trimmed_mean", {"beta": 0.45}),
                   ("trimmed_mean", {"beta": 0.45, "weighted": True}),
                   ("hybrid", {"beta": 0.45})]:
    agg = aggregators.get(name, **kw)
    out = np.asarray(apply_flat(
        agg, x, ones, mask, agg.init({"u": jnp.asarray(x)}))[0])
    assert np.all((out >= lo - 1e-6) & (out <= hi + 1e-6)), (name, kw, out)


@pytest.mark.parametrize("seed,identical", [(0, False), (1, True)])
def test_breakdown_krum_picks_honest(seed, identical):
  x, _, honest = _attacked(k=9, f=3, seed=seed, identical=identical)
  scores = krum.krum_scores(jnp.asarray(x), jnp.ones(9, bool), 3)
  assert int(np.argmin(np.asarray(scores))) in honest
  _, selected = krum.multi_krum_flat(jnp.asarray(x), jnp.ones(9),
                                     jnp.ones(9, bool), 3, 4)
  assert set(np.flatnonzero(np.asarray(selected))) <= set(honest)


# ----------------------------------------------------------------------------
# Config validation, registry, docstring examples.
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw,field", [
    ("trimmed_mean", {"beta": 0.5}, "beta"),
    ("trimmed_mean", {"beta": -0.1}, "beta"),
    ("trimmed_mean", {"byzantine_fraction": 0.5}, "byzantine_fraction"),
    ("krum", {"num_byzantine": -1}, "num_byzantine"),
    ("krum", {"byzantine_fraction": -0.1}, "byzantine_fraction"),
    ("multi_krum", {"num_selected": 0}, "num_selected"),
    ("bulyan", {"num_byzantine": -1}, "num_byzantine"),
    ("bulyan", {"byzantine_fraction": 0.5}, "byzantine_fraction"),
    ("geomed", {"eps": 0.0}, "eps"),
    ("geomed", {"max_iters": 0}, "max_iters"),
    ("centered_clip", {"tau": 0.0}, "tau"),
    ("centered_clip", {"iters": 0}, "iters"),
    ("hybrid", {"clip_multiplier": 0.0}, "clip_multiplier"),
    ("hybrid", {"beta": 0.7}, "beta"),
    ("hybrid", {"byzantine_fraction": 0.6}, "byzantine_fraction"),
])
def test_invalid_hyperparameters_name_the_field(name, kw, field):
  with pytest.raises(ValueError, match=field):
    aggregators.get(name, **kw)


def test_registry_names():
  assert set(base.names()) >= {"mean", "median", "trimmed_mean", "krum",
                               "multi_krum", "bulyan", "geomed",
                               "centered_clip", "hybrid"}


@pytest.mark.parametrize("module", [mean, median, trimmed_mean, krum, bulyan,
                                    geomed, centered_clip, clipping, hybrid,
                                    trust],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples(module):
  result = doctest.testmod(module, globs=dict(vars(module)))
  assert result.failed == 0 and result.attempted > 0


# ----------------------------------------------------------------------------
# Overflow: any finite rows up to float32 max.
# ----------------------------------------------------------------------------

FMAX = float(np.finfo(np.float32).max)
# Parameters under which each rule tolerates 2 huge rows of 8 (those not
# listed tolerate them with their defaults).
ROBUST_KW = {"trimmed_mean": {"byzantine_fraction": 0.25},
             "hybrid": {"byzantine_fraction": 0.25},
             "krum": {"num_byzantine": 2}, "multi_krum": {"num_byzantine": 2}}


def _variants(name, kw):
  """kw, and kw with weighted=True where the rule has that parameter."""
  out = [kw]
  if "weighted" in aggregators.REGISTRY[name].param_fields():
    out.append({**kw, "weighted": True})
  return out


def _apply_all_valid(name, kw, x, w):
  agg = aggregators.get(name, **kw)
  out, _ = apply_flat(agg, x, w, np.ones(len(x), bool),
                      agg.init({"u": jnp.asarray(x)}))
  return np.asarray(out, np.float64)


@pytest.mark.parametrize("name", aggregators.names())
def test_rows_near_float32_max_give_finite_results(name):
  """Every output coordinate is finite and between the rows' extremes (or 0,
  where centered clipping starts and hybrid clipping shrinks to)."""
  rng = np.random.default_rng(0)
  x = (FMAX * rng.uniform(0.5, 1.0, (8, 5))
       * rng.choice([-1.0, 1.0], (8, 5))).astype(np.float32)
  x[0] = FMAX  # the largest finite values themselves
  x[1, :3] = -FMAX
  w = rng.uniform(0.2, 3.0, 8).astype(np.float32)
  lo, hi = np.minimum(x.min(0), 0), np.maximum(x.max(0), 0)
  for kw in _variants(name, {}):
    for ww in (w, np.ones(8, np.float32)):
      out = _apply_all_valid(name, kw, x, ww)
      assert np.all(np.isfinite(out)), (kw, out)
      assert np.all((out >= lo) & (out <= hi)), (kw, out)


def test_rows_near_float32_max_match_float64_references():
  rng = np.random.default_rng(1)
  x = (FMAX * rng.uniform(0.5, 1.0, (9, 4))).astype(np.float32)
  x[:, 1] *= -1
  x64, w = x.astype(np.float64), rng.uniform(0.2, 3.0, 9).astype(np.float32)
  refs = [
      ("mean", {}, np.average(x64, axis=0, weights=w)),
      ("median", {}, np.median(x64, axis=0)),
      ("trimmed_mean", {"beta": 0.2}, scipy.stats.trim_mean(x64, 0.2, axis=0)),
      ("krum", {}, x64[np.argmin(ref_krum_scores(x64, np.ones(9, bool), 1))]),
  ]
  for name, kw, ref in refs:
    np.testing.assert_allclose(_apply_all_valid(name, kw, x, w), ref,
                               rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("huge", [1e30, 3e38])
@pytest.mark.parametrize("name", aggregators.names())
def test_two_huge_rows_of_eight(name, huge):
  """Finite for every rule and weights; with equal weights, robust
  (non-linear) rules stay within the honest rows' per-coordinate range (a
  weighted trimmed mean cuts mass, so heavy huge rows could straddle it)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 5)).astype(np.float32)
  x[[1, 5]] = np.clip(x[[1, 5]].astype(np.float64) * huge, -3e38, 3e38)
  honest = np.array([0, 2, 3, 4, 6, 7])
  lo, hi = x[honest].min(0), x[honest].max(0)
  w = rng.uniform(0.5, 2.0, 8).astype(np.float32)
  for kw in _variants(name, ROBUST_KW.get(name, {})):
    for ww in (w, np.ones(8, np.float32)):
      out = _apply_all_valid(name, kw, x, ww)
      assert np.all(np.isfinite(out)), (kw, out)
      if ww is not w and not aggregators.REGISTRY[name].prop("linear"):
        assert np.all((out >= lo - 1e-6) & (out <= hi + 1e-6)), (kw, out)


@pytest.mark.parametrize("huge", [1e30, 3e38])
def test_krum_is_not_blinded_by_one_huge_row(huge):
  """A huge row must not swamp the distances among the others: with rows
  centred on the mean (dragged to ~huge / 8) the cancellation error exceeded
  every honest distance, with one scale for all rows their squares
  underflowed, and either way a moderate attacker could win."""
  rng = np.random.default_rng(0)
  x = 0.1 * rng.standard_normal((8, 16)).astype(np.float32)
  x[0] += 1.0  # moderate: near the honest rows, but clearly the farthest
  x[7] = huge
  f = 2
  ref = ref_krum_scores(x.astype(np.float64), np.ones(8, bool), f)
  scores = np.asarray(krum.krum_scores(jnp.asarray(x), jnp.ones(8, bool), f))
  np.testing.assert_array_equal(np.argsort(scores, kind="stable"),
                                np.argsort(ref, kind="stable"))
  agg = aggregators.get("krum", num_byzantine=f)
  out = apply_flat(agg, x, np.ones(8, np.float32), np.ones(8, bool))[0]
  np.testing.assert_array_equal(np.asarray(out), x[np.argmin(ref)])
  assert np.argmin(ref) != 0


def test_norm_rules_clip_rows_whose_norm_overflows():
  x = np.full((3, 100), 1e20, np.float32)  # |row| = 1e21, |row|^2 > max
  x[1] = 1.0
  ones, valid = np.ones(3, np.float32), np.ones(3, bool)
  clipped = np.asarray(clipping.clip_by_norm(jnp.asarray(x), valid, 2.0))
  np.testing.assert_allclose(np.linalg.norm(clipped, axis=1), [2, 2, 2],
                             rtol=1e-5)
  agg = centered_clip.centered_clip(tau=1.0, iters=1)
  out, _ = apply_flat(agg, x[[0, 2]], ones[:2], valid[:2],
                      agg.init({"u": jnp.asarray(x)}))
  np.testing.assert_allclose(np.asarray(out), np.full(100, 0.1), rtol=1e-5)


# ----------------------------------------------------------------------------
# Weights in the Krum family: a weight-0 row takes no part.
# ----------------------------------------------------------------------------

KRUM_FAMILY = [("krum", {"num_byzantine": 1}),
               ("multi_krum", {"num_byzantine": 1, "num_selected": 3}),
               ("multi_krum", {"num_byzantine": 1, "num_selected": 3,
                               "weighted": True}),
               ("bulyan", {"num_byzantine": 1})]


@pytest.mark.parametrize("name,kw", KRUM_FAMILY)
def test_krum_family_zero_weight_row_is_as_if_masked(name, kw):
  x, w, mask, _ = make_case(9, False, seed=3)
  agg = aggregators.get(name, **kw)
  scores = ref_krum_scores(x, mask, 1)
  best = int(np.argmin(scores))  # the row Krum would pick
  w0, m0 = w.copy(), mask.copy()
  w0[best], m0[best] = 0.0, False
  out = np.asarray(apply_flat(agg, x, w0, mask)[0])
  np.testing.assert_array_equal(out, np.asarray(apply_flat(agg, x, w, m0)[0]))
  if name == "krum":
    assert not np.allclose(out, x[best])


@pytest.mark.parametrize("name,kw", [KRUM_FAMILY[0], KRUM_FAMILY[1],
                                     KRUM_FAMILY[3]])
def test_krum_family_positive_weights_do_not_change_the_result(name, kw):
  x, w, mask, _ = make_case(9, False, seed=4)
  agg = aggregators.get(name, **kw)
  np.testing.assert_array_equal(
      np.asarray(apply_flat(agg, x, w, mask)[0]),
      np.asarray(apply_flat(agg, x, np.ones(9, np.float32), mask)[0]))


# ----------------------------------------------------------------------------
# byzantine_fraction: ceil(fraction * n) per aggregation, n valid rows.
# ----------------------------------------------------------------------------

def ref_trim(x, valid, t):
  """Sort per column, drop t per side, average (float64)."""
  s = np.sort(x[valid].astype(np.float64), axis=0)
  return s[t:len(s) - t].mean(axis=0) if len(s) else np.zeros(x.shape[1])


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.3, 0.45])
def test_byzantine_fraction_trims_ceil_of_valid_rows(fraction):
  x, w, _, _ = make_case(12, False, seed=5)
  tm = aggregators.get("trimmed_mean", byzantine_fraction=fraction)
  wtm = aggregators.get("trimmed_mean", byzantine_fraction=fraction,
                        weighted=True)
  hy = aggregators.get("hybrid", byzantine_fraction=fraction,
                       clip_multiplier=1e6, min_trusted=1,
                       weight_threshold=0.0)
  trim = lambda n: min(int(np.ceil(fraction * n)), (n - 1) // 2)
  for n in (1, 2, 3, 5, 8, 9, 12):
    mask = np.arange(12) < n
    t = trim(n)
    ref = ref_trim(x, mask, t)
    # scipy with beta = t / n trims the same t (where the float product
    # rounds back to t).
    if int(t / n * n) == t:
      chex.assert_trees_all_close(ref, scipy.stats.trim_mean(
          x[mask].astype(np.float64), t / n, axis=0), atol=1e-12)
    chex.assert_trees_all_close(apply_flat(tm, x, w, mask)[0], ref,
                                atol=1e-5)
    chex.assert_trees_all_close(
        apply_flat(wtm, x, np.full(12, 0.7, np.float32), mask)[0], ref,
        atol=1e-5)
    ref_w = ref_weighted_trimmed_mean(x, w, mask, None, trim)
    chex.assert_trees_all_close(apply_flat(wtm, x, w, mask)[0], ref_w,
                                atol=1e-5)
    out, _ = apply_flat(hy, x, w, mask, hy.init({"u": jnp.asarray(x)}))
    chex.assert_trees_all_close(out, ref_w, atol=1e-5)


def test_byzantine_fraction_trims_small_buffers_beta_does_not():
  x = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0], [80.0]],
               np.float32)
  ones, mask = np.ones(8, np.float32), np.ones(8, bool)
  by_beta = aggregators.get("trimmed_mean", beta=0.1)
  by_fraction = aggregators.get("trimmed_mean", byzantine_fraction=0.1)
  assert float(apply_flat(by_beta, x, ones, mask)[0][0]) == 13.5  # nothing
  assert float(apply_flat(by_fraction, x, ones, mask)[0][0]) == 4.5


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3, 0.45])
def test_byzantine_fraction_sets_krum_f_per_aggregation(fraction):
  x, w, _, _ = make_case(16, False, seed=6, d=5)
  x += 0.01 * np.arange(16)[:, None]  # no score ties
  for n in (1, 3, 5, 8, 11, 16):
    mask = np.arange(16) < n
    f = int(np.ceil(fraction * n))
    ref = ref_krum_scores(x, mask, f)
    by_fraction = aggregators.get("krum", byzantine_fraction=fraction)
    chex.assert_trees_all_close(apply_flat(by_fraction, x, w, mask)[0],
                                x[np.argmin(ref)])
    mk = aggregators.get("multi_krum", byzantine_fraction=fraction,
                         num_selected=3)
    chosen = np.argsort(ref, kind="stable")[:min(3, n)]
    chex.assert_trees_all_close(apply_flat(mk, x, w, mask)[0],
                                x[chosen].mean(0), atol=1e-6)


class _Rows:
  """The one method of the experiment config that `check` reads."""

  def __init__(self, rows):
    self.rows = rows

  def rows_per_aggregation(self):
    return self.rows


@pytest.mark.parametrize("cls,kw,rows,key", [
    (params.Krum, {"num_byzantine": 2}, 6, "num_byzantine"),
    (params.MultiKrum, {"byzantine_fraction": 0.3}, 8, "byzantine_fraction"),
    (params.Bulyan, {"num_byzantine": 1}, 6, "num_byzantine"),
    (params.Bulyan, {"byzantine_fraction": 0.2}, 10, "byzantine_fraction"),
])
def test_config_check_names_the_key_that_sets_f(cls, kw, rows, key):
  p = cls(**kw)
  p.validate("aggregator")
  with pytest.raises(ConfigError, match=rf"^config\.aggregator\.{key}: "):
    p.check(_Rows(rows), "aggregator")
  p.check(_Rows(rows + 10), "aggregator")  # enough rows: no error


def test_byzantine_fraction_is_one_shared_config_key():
  from afl import config  # pylint: disable=g-import-not-at-top
  for name in ("trimmed_mean", "krum", "multi_krum", "bulyan", "hybrid"):
    assert "byzantine_fraction" in aggregators.REGISTRY[name].param_fields()
  c = config.build_config({"aggregator": {"name": "bulyan",
                                          "byzantine_fraction": 0.1}})
  assert c.aggregator.params == params.Bulyan(byzantine_fraction=0.1)
  with pytest.raises(ConfigError, match=r"^config\.aggregator\."
                     "byzantine_fraction: "):
    config.build_config({"aggregator": {"byzantine_fraction": 0.5}})
