"""Tests for afl.data.partition: CSR client shards and their partitioners."""
import numpy as np
import pytest

from afl.data import partition as P


def _labels(n=3000, k=10, seed=0):
  return np.random.default_rng(seed).integers(0, k, n)


def _assert_exact_cover(part, n):
  """Every example appears exactly once across the shards."""
  np.testing.assert_array_equal(np.sort(part.indices), np.arange(n))
  assert part.indices.dtype == np.int32 and part.offsets.dtype == np.int64
  assert part.offsets[0] == 0 and part.offsets[-1] == n
  assert part.sizes().sum() == n


BUILDERS = {
    "iid": lambda y, c, rng, m: P.iid(y.size, c, rng, min_size=m),
    "dirichlet_0.3": lambda y, c, rng, m: P.dirichlet(y, c, 0.3, rng,
                                                      min_size=m),
    "dirichlet_100": lambda y, c, rng, m: P.dirichlet(y, c, 100.0, rng,
                                                      min_size=m),
    "quantity_1": lambda y, c, rng, m: P.quantity_skew(y.size, c, 1.0, rng,
                                                       min_size=m),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("n,clients,min_size", [
    (3000, 1, 1), (3000, 7, 5), (3001, 30, 10), (2000, 40, 5),
    (500, 100, 0)])
def test_no_sample_lost_or_duplicated(kind, n, clients, min_size):
  y = _labels(n)
  part = BUILDERS[kind](y, clients, np.random.default_rng(1), min_size)
  _assert_exact_cover(part, n)
  assert part.num_clients == clients
  assert part.sizes().min() >= min_size
  # client_indices views tile `indices` in order.
  np.testing.assert_array_equal(
      np.concatenate([part.client_indices(c) for c in range(clients)]),
      part.indices)


@pytest.mark.parametrize("n,clients", [(10, 3), (100, 100), (1001, 10),
                                       (7, 1)])
def test_iid_sizes_differ_by_at_most_one(n, clients):
  sizes = P.iid(n, clients, np.random.default_rng(0)).sizes()
  assert sizes.max() - sizes.min() <= 1
  assert sizes.sum() == n


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_deterministic_from_seed(kind):
  y = _labels()
  a = BUILDERS[kind](y, 20, np.random.default_rng(42), 5)
  b = BUILDERS[kind](y, 20, np.random.default_rng(42), 5)
  c = BUILDERS[kind](y, 20, np.random.default_rng(43), 5)
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_array_equal(a.offsets, b.offsets)
  assert not np.array_equal(a.indices, c.indices)


def test_label_skew_falls_as_alpha_rises():
  y = _labels(6000)
  tv = {}
  for alpha in (0.1, 1.0, 100.0):
    part = P.dirichlet(y, 50, alpha, np.random.default_rng(0), min_size=5)
    tv[alpha] = P.summarize(part, y, 10)["label_tv"]
  assert tv[0.1] > tv[1.0] > tv[100.0]
  assert tv[0.1] > 0.5 and tv[100.0] < 0.1
  iid_tv = P.summarize(P.iid(y.size, 50, np.random.default_rng(0)), y,
                       10)["label_tv"]
  assert iid_tv < 0.15


def test_quantity_skew_spread_grows_with_sigma():
  def cv(sigma):
    s = P.quantity_skew(20000, 200, sigma, np.random.default_rng(0),
                        min_size=5).sizes()
    return s.std() / s.mean()
  assert cv(0.0) < 0.01  # Equal weights: sizes differ only by rounding.
  assert cv(0.1) < cv(1.0) < cv(2.0)


def test_quantity_skew_labels_stay_iid():
  y = _labels(20000)
  part = P.quantity_skew(y.size, 20, 1.0, np.random.default_rng(0),
                         min_size=200)
  assert P.summarize(part, y, 10)["label_tv"] < 0.1


@pytest.mark.parametrize("call", [
    lambda rng: P.iid(99, 10, rng, min_size=10),
    lambda rng: P.dirichlet(_labels(99), 10, 1.0, rng, min_size=10),
    lambda rng: P.quantity_skew(99, 10, 1.0, rng, min_size=10),
    lambda rng: P.iid(5, 10, rng),
])
def test_too_small_dataset_is_a_clear_error(call):
  with pytest.raises(ValueError, match="too small for num_clients"):
    call(np.random.default_rng(0))


def test_dirichlet_unreachable_min_size_names_the_settings():
  y = _labels(1000)
  with pytest.raises(ValueError, match="data.dirichlet_alpha") as e:
    P.dirichlet(y, 50, 0.01, np.random.default_rng(0), min_size=15,
                max_tries=5)
  assert "data.min_shard_size" in str(e.value)
  assert "num_clients" in str(e.value)


def test_dirichlet_tiny_alpha_is_finite_and_skewed():
  y = _labels(2000)
  part = P.dirichlet(y, 10, 1e-3, np.random.default_rng(0), min_size=0)
  _assert_exact_cover(part, y.size)
  assert P.summarize(part, y, 10)["classes_per_client"] < 3


def test_shards_are_not_sorted_by_class():
  # A client reading a prefix of its shard should not see a single class.
  y = np.repeat(np.arange(10), 100)
  part = P.dirichlet(y, 2, 1000.0, np.random.default_rng(0))
  assert len(np.unique(y[part.client_indices(0)[:50]])) > 3


def test_one_hundred_thousand_clients():
  y = _labels(400_000, k=10, seed=3)
  rng = np.random.default_rng(0)
  for part in (P.iid(y.size, 100_000, rng, min_size=4),
               P.dirichlet(y, 100_000, 1000.0, rng, min_size=1),
               P.quantity_skew(y.size, 100_000, 1.0, rng, min_size=2)):
    assert part.num_clients == 100_000
    assert part.offsets.nbytes == 8 * 100_001
    _assert_exact_cover(part, y.size)
  summary = P.summarize(part, y, 10)
  assert summary["num_clients"] == 100_000 and summary["size_min"] >= 2


def test_summarize_closed_form():
  y = np.array([0, 0, 1, 1])
  skewed = P.Partition(np.array([0, 1, 2, 3], np.int32),
                       np.array([0, 2, 4], np.int64))
  s = P.summarize(skewed, y, 2)
  assert s["label_tv"] == pytest.approx(0.5)
  assert s["classes_per_client"] == 1.0
  assert (s["size_min"], s["size_median"], s["size_max"]) == (2, 2.0, 2)
  balanced = P.Partition(np.array([0, 2, 1, 3], np.int32),
                         np.array([0, 2, 4], np.int64))
  s = P.summarize(balanced, y, 2)
  assert s["label_tv"] == pytest.approx(0.0)
  assert s["classes_per_client"] == 2.0
  # An empty client is counted but does not enter the label averages.
  with_empty = P.Partition(np.array([0, 2, 1, 3], np.int32),
                           np.array([0, 2, 2, 4], np.int64))
  s = P.summarize(with_empty, y, 2)
  assert s["num_empty"] == 1 and s["label_tv"] == pytest.approx(0.0)
  line = P.format_summary(s)
  assert "3 clients" in line and "1 empty" in line and "\n" not in line


def test_partition_validation_and_accessors():
  part = P.Partition(np.array([3, 1, 2, 0], np.int32),
                     np.array([0, 1, 1, 4], np.int64))
  assert part.num_clients == 3 and part.num_examples == 4
  np.testing.assert_array_equal(part.sizes(), [1, 0, 3])
  np.testing.assert_array_equal(part.client_indices(2), [1, 2, 0])
  assert part.client_indices(1).size == 0
  np.testing.assert_array_equal(part.client_ids(), [0, 2, 2, 2])
  with pytest.raises(IndexError):
    part.client_indices(3)
  with pytest.raises(TypeError, match="int32"):
    P.Partition(np.arange(4), np.array([0, 4], np.int64))
  with pytest.raises(ValueError, match="offsets"):
    P.Partition(np.arange(4, dtype=np.int32), np.array([0, 3], np.int64))
  with pytest.raises(ValueError, match="offsets"):
    P.Partition(np.arange(4, dtype=np.int32), np.array([0, 3, 2, 4],
                                                       np.int64))


def test_make_by_name():
  y = _labels(1000)
  for name in P.REGISTRY.names():
    part = P.make(name, y, 10, np.random.default_rng(0), min_size=5)
    _assert_exact_cover(part, y.size)
  with pytest.raises(ValueError, match="unknown partition"):
    P.make("pathological", y, 10, np.random.default_rng(0))


@pytest.mark.parametrize("call,match", [
    (lambda rng: P.dirichlet(_labels(100), 5, 0.0, rng), "alpha"),
    (lambda rng: P.quantity_skew(100, 5, -1.0, rng), "sigma"),
    (lambda rng: P.iid(100, 0, rng), "num_clients"),
])
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call(np.random.default_rng(0))
