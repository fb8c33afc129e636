"""Pathological shards and k-classes-per-client partitions."""
import doctest

import numpy as np
import pytest

from afl.config import ConfigError, build_config
from afl.data import label_skew, partition
from configs import tiny


def _exact_cover(p, n):
  """Every example in exactly one shard."""
  got = np.sort(p.indices)
  np.testing.assert_array_equal(got, np.arange(n))


def test_shards_like_mcmahan():
  # Fashion-MNIST's shape: 10 balanced classes of 6,000, 100 clients x 2
  # shards of 300: each shard is one class.
  y = np.repeat(np.arange(10), 6000)
  rng = np.random.default_rng(0)
  p = label_skew.shards(y[rng.permutation(y.size)], 100, 2,
                        np.random.default_rng(1))
  _exact_cover(p, y.size)
  assert (p.sizes() == 600).all()
  yp = y[np.random.default_rng(0).permutation(y.size)]
  per_client = [len(np.unique(yp[p.client_indices(c)])) for c in range(100)]
  assert max(per_client) <= 2 and min(per_client) >= 1
  # Each client's examples form 2 runs of 300 in the label-sorted order.
  for c in range(100):
    counts = np.bincount(yp[p.client_indices(c)], minlength=10)
    assert sorted(counts[counts > 0].tolist()) in ([600], [300, 300])


def test_shards_uneven_sizes_and_determinism():
  y = np.random.default_rng(2).integers(0, 7, 1003)
  a = label_skew.shards(y, 10, 3, np.random.default_rng(5))
  b = label_skew.shards(y, 10, 3, np.random.default_rng(5))
  np.testing.assert_array_equal(a.indices, b.indices)
  _exact_cover(a, y.size)
  # 30 shards of 33 or 34: a client holds 3 of them.
  assert set(a.sizes().tolist()) <= set(range(99, 103))
  # 3 shards of a label-sorted order: at most 3 runs of labels, so at most
  # 3 + 2 = 5 distinct labels (a shard straddles at most one boundary here).
  for c in range(10):
    assert len(np.unique(y[a.client_indices(c)])) <= 6
  with pytest.raises(ValueError, match="shards"):
    label_skew.shards(y, 10, 200, np.random.default_rng(0))


def test_classes_per_client():
  y = np.random.default_rng(3).integers(0, 10, 5000)
  p = label_skew.classes(y, 30, 3, np.random.default_rng(4))
  _exact_cover(p, y.size)
  for c in range(30):
    assert len(np.unique(y[p.client_indices(c)])) == 3
  # A class is split equally (to one example) among the clients holding it.
  for k in range(10):
    per = [int((y[p.client_indices(c)] == k).sum()) for c in range(30)]
    held = [n for n in per if n]
    assert max(held) - min(held) <= 1 and sum(held) == int((y == k).sum())
  # Every class has a holder even with few clients.
  q = label_skew.classes(y, 4, 3, np.random.default_rng(0))
  _exact_cover(q, y.size)
  with pytest.raises(ValueError, match="classes_per_client=2"):
    label_skew.classes(y, 4, 2, np.random.default_rng(0))  # 8 < 10 classes
  with pytest.raises(ValueError, match="classes_per_client=11"):
    label_skew.classes(y, 40, 11, np.random.default_rng(0))


def test_registered_and_configured():
  y = np.repeat(np.arange(4), 50)
  p = partition.make("shards", y, 10, np.random.default_rng(0),
                     shards_per_client=2)
  _exact_cover(p, y.size)
  s = partition.summarize(p, y, 4)
  assert s["classes_per_client"] <= 2.0
  c = tiny.get_config()
  c.data.update(partition="classes", classes_per_client=2)
  assert build_config(c).data.params.classes_per_client == 2
  c.data.classes_per_client = 0
  with pytest.raises(ConfigError, match=r"config\.data\.classes_per_client"):
    build_config(c)


def test_min_size_is_enforced():
  y = np.concatenate([np.zeros(100, int), np.ones(2, int)])
  with pytest.raises(ValueError, match="min_size=5"):
    label_skew.classes(y, 10, 1, np.random.default_rng(0), min_size=5)


def test_docstring_examples():
  result = doctest.testmod(label_skew, globs=dict(vars(label_skew)))
  assert result.failed == 0 and result.attempted > 0
