"""Bulyan against a naive numpy implementation of the paper's rule."""
import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from afl import aggregators
from afl.aggregators import bulyan


def naive_krum_pick(x, rows, f):
  """Brute-force Krum over the row indices `rows`: the lowest-scoring one
  (ties to the lower index), in float64."""
  n = len(rows)
  m = min(max(n - f - 2, 1), max(n - 1, 0))
  best, best_score = None, np.inf
  for i in rows:
    d = sorted(float(np.sum((x[i].astype(np.float64) - x[j]) ** 2))
               for j in rows if j != i)
    score = sum(d[:m])
    if score < best_score:
      best, best_score = i, score
  return best


def naive_bulyan(x, valid, f):
  """Selection by repeated Krum, then per coordinate the mean of the beta
  values closest to the median (ties: the smaller value, i.e. a stable sort
  of the sorted values by distance), medians and distances in float32 like
  the kernel's."""
  rows = list(np.flatnonzero(valid))
  n = len(rows)
  if n == 0:
    return np.zeros(x.shape[1]), []
  theta, beta = n - 2 * f, n - 4 * f
  selected = []
  for _ in range(theta):
    pick = naive_krum_pick(x, rows, f)
    selected.append(pick)
    rows.remove(pick)
  out = np.zeros(x.shape[1])
  for j in range(x.shape[1]):
    v = np.sort(x[selected, j])
    med = np.float32(np.median(v))
    closest = np.argsort(np.abs(v - med), kind="stable")[:beta]
    out[j] = v[closest].astype(np.float64).mean()
  return out, sorted(selected)


def clamped_f(n, f=1, fraction=0.0):
  f = int(np.ceil(fraction * n)) if fraction > 0 else f
  return min(f, max((n - 3) // 4, 0))


def make_rows(k, seed, d=6, corrupt=True):
  """[K, D] float32 with tied values in half the columns (distinct Krum
  scores), and padding / NaN / inf rows when `corrupt`."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((k, d))
  x[:, : d // 2] = np.round(2 * x[:, : d // 2]) / 2
  mask = np.ones(k, bool)
  if corrupt:
    kinds = rng.choice(4, size=k, p=[0.7, 0.1, 0.1, 0.1])
    x[kinds == 1] = 1e9  # padding garbage must not leak
    mask[kinds == 1] = False
    x[kinds == 2, 0] = np.nan
    x[kinds == 3, 1] = np.inf
  x = x.astype(np.float32)
  return x, mask, mask & np.all(np.isfinite(x), axis=1)


class BulyanTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((7, 1), (9, 1), (11, 2), (16, 2), (33, 3),
                            (40, 8))
  def test_matches_naive(self, k, f):
    agg = aggregators.get("bulyan", num_byzantine=f)
    fn = self.variant(lambda x, m: agg.apply(
        {"u": x}, jnp.ones(k), m, ())[0]["u"])
    for seed, corrupt in ((0, False), (1, True), (2, True)):
      x, mask, valid = make_rows(k, seed + 10 * k, corrupt=corrupt)
      ref, _ = naive_bulyan(x, valid, clamped_f(int(valid.sum()), f))
      chex.assert_trees_all_close(fn(jnp.asarray(x), jnp.asarray(mask)), ref,
                                  atol=1e-6)

  @parameterized.parameters(0.1, 0.2, 0.25)
  def test_byzantine_fraction_sets_f_from_valid_rows(self, fraction):
    x, _, _ = make_rows(24, 3, corrupt=False)
    agg = aggregators.get("bulyan", byzantine_fraction=fraction)
    for n in (1, 2, 3, 6, 7, 11, 15, 24):
      mask = np.arange(24) < n
      ref, _ = naive_bulyan(x, mask, clamped_f(n, fraction=fraction))
      out, _ = agg.apply({"u": jnp.asarray(x)}, jnp.ones(24),
                         jnp.asarray(mask), ())
      chex.assert_trees_all_close(out["u"], ref, atol=1e-6)


def test_selection_is_repeated_krum():
  x, _, valid = make_rows(13, 7, corrupt=False)
  f = clamped_f(13, 2)
  _, ref = naive_bulyan(x, valid, f)
  _, selected = bulyan.bulyan_flat(jnp.asarray(x), jnp.asarray(valid), f)
  assert list(np.flatnonzero(np.asarray(selected))) == ref


def test_closest_window_tie_keeps_smaller_values():
  """Median 2 of [1, 1, 2, 3, 3]: beta = 2 keeps 2 and one 1 (distances
  tie at 1; the smaller value stays), not the window [1, 1]."""
  s = jnp.array([[1.0], [1.0], [2.0], [3.0], [3.0], [np.inf]])
  out = bulyan.closest_mean_of_sorted(s, jnp.int32(5), jnp.int32(2))
  assert float(out[0]) == 1.5
  s = jnp.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
  out = bulyan.closest_mean_of_sorted(s, jnp.int32(5), jnp.int32(3))
  assert float(out[0]) == 2.0  # {1, 2, 3}


def test_huge_rows_match_naive_and_are_trimmed():
  """f identical rows near float32 max. They can be selected in the last
  round (2f + 1 rows left, m = f - 1 neighbours, all at distance 0), so
  step 2 must, and does, trim them."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((11, 5)).astype(np.float32)
  x[[2, 6]] = 3e38
  out, selected = bulyan.bulyan_flat(jnp.asarray(x), jnp.ones(11, bool), 2)
  ref, ref_selected = naive_bulyan(x, np.ones(11, bool), 2)
  assert list(np.flatnonzero(np.asarray(selected))) == ref_selected
  chex.assert_trees_all_close(out, ref, atol=1e-6)
  honest = np.setdiff1d(np.arange(11), [2, 6])
  assert np.all((np.asarray(out) >= x[honest].min(0))
                & (np.asarray(out) <= x[honest].max(0)))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_aggregations_average_what_there_is(n):
  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  mask = np.arange(5) < n
  out, _ = bulyan.bulyan_flat(jnp.asarray(x), jnp.asarray(mask), 1)
  expect = x[mask].mean(0) if n else np.zeros(2)
  chex.assert_trees_all_close(out, expect)
