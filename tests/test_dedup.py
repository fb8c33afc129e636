"""The duplicate-merging stage against a numpy brute force."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.aggregators import base as agg_base
from afl.server import duplicates
from afl.server import stages
from afl.server.rows import Rows

K, D = 12, 6


def _rows(flat, mask, weight, scale):
  flat = jnp.asarray(flat, jnp.float32)
  k = flat.shape[0]
  return Rows(flat=flat, weight=jnp.asarray(weight, jnp.float32),
              scale=jnp.asarray(scale, jnp.float32), mask=jnp.asarray(mask),
              ids=jnp.arange(k, dtype=jnp.int32), malicious=jnp.zeros(k, bool),
              aggregate=jnp.zeros(flat.shape[1], jnp.float32))


def _stage(tolerance):
  entry = stages.REGISTRY["dedup"]
  return entry.build(entry.params(tolerance=tolerance),
                     key=jax.random.PRNGKey(0))


def _numpy(flat, mask, weight, scale, tol):
  """Components by depth-first search over the float64 cosine graph; each
  becomes its weighted mean at its lowest index, weight the mean."""
  x = flat.astype(np.float64)
  norm = np.linalg.norm(x, axis=1)
  idx = [i for i in range(len(mask)) if mask[i]]

  def near(i, j):
    if norm[i] == 0 or norm[j] == 0:
      return norm[i] == 0 and norm[j] == 0
    return x[i] @ x[j] / (norm[i] * norm[j]) > tol

  label = {}
  for i in idx:
    if i in label:
      continue
    todo, label[i] = [i], i
    while todo:
      a = todo.pop()
      for b in idx:
        if b not in label and near(a, b):
          label[b] = i
          todo.append(b)
  out_flat, out_w = np.zeros_like(x), weight.astype(np.float64).copy()
  out_s, out_m = scale.astype(np.float64).copy(), np.zeros(len(mask), bool)
  for rep in set(label.values()):
    g = [i for i in idx if label[i] == rep]
    out_m[rep] = True
    out_flat[rep] = np.average(x[g], axis=0, weights=weight[g])
    out_w[rep] = weight[g].mean()
    out_s[rep] = np.average(scale[g], weights=weight[g])
  return out_flat, out_w, out_s, out_m


def _planted(seed):
  """Random rows with near-copies planted: a scaled copy, a chain of
  three (each within tolerance of the next, the ends farther apart), two
  zero rows, and invalid rows of junk that copy valid ones."""
  rng = np.random.default_rng(seed)
  flat = rng.normal(size=(K, D)).astype(np.float32)
  flat[3] = 2.5 * flat[1]
  u = flat[5] / np.linalg.norm(flat[5])
  v = rng.normal(size=D)
  v -= (v @ u) * u
  v /= np.linalg.norm(v)
  for j, theta in zip((7, 9), (0.12, 0.24)):  # cos(0.12) > 0.99 > cos(0.24)
    flat[j] = np.linalg.norm(flat[5]) * (np.cos(theta) * u
                                         + np.sin(theta) * v)
  flat[[4, 10]] = 0.0
  mask = np.ones(K, bool)
  mask[[2, 8]] = False
  flat[2] = flat[1]
  flat[8] = 1e6
  weight = rng.uniform(0.5, 2.0, size=K).astype(np.float32)
  scale = rng.uniform(0.2, 1.0, size=K).astype(np.float32)
  return flat, mask, weight, scale


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dedup_against_brute_force(seed):
  flat, mask, weight, scale = _planted(seed)
  stage = _stage(0.99)
  out, _ = jax.jit(stage.apply)(_rows(flat, mask, weight, scale), ())
  e_flat, e_w, e_s, e_m = _numpy(flat, mask, weight, scale, 0.99)
  out = jax.tree_util.tree_map(np.asarray, out)
  np.testing.assert_array_equal(out.mask, e_m)
  # Planted groups: {1, 3}, the chain {5, 7, 9}, the zeros {4, 10}.
  assert not any(out.mask[[3, 7, 9, 10]]) and all(out.mask[[1, 5, 4]])
  np.testing.assert_allclose(np.where(e_m[:, None], out.flat, 0.0), e_flat,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.weight[e_m], e_w[e_m], rtol=1e-6)
  np.testing.assert_allclose(out.scale[e_m], e_s[e_m], rtol=1e-6)
  # A group is malicious if any of its rows is.
  mal = np.zeros(K, bool)
  mal[9] = True
  rows = _rows(flat, mask, weight, scale).replace(malicious=jnp.asarray(mal))
  flagged, _ = stage.apply(rows, ())
  assert np.flatnonzero(np.asarray(flagged.malicious)).tolist() == [5, 9]
  # A lone row is kept bit for bit.
  np.testing.assert_array_equal(out.flat[0], flat[0])


def test_copies_count_once_in_a_weighted_mean():
  """k copies of a row (any positive scale) give the aggregate of the
  buffer with that row once; without copies nothing changes."""
  rng = np.random.default_rng(5)
  flat = rng.normal(size=(K, D)).astype(np.float32)
  flat[6:] = flat[0] * rng.uniform(0.5, 2.0, size=(K - 6, 1))
  mask, weight = np.ones(K, bool), np.ones(K, np.float32)
  out, _ = _stage(0.99).apply(_rows(flat, mask, weight, weight), ())
  mean = agg_base.REGISTRY["mean"].build(
      agg_base.REGISTRY["mean"].params()).coordinatewise
  got = mean(out.flat, out.weight, out.mask)
  group = np.concatenate([flat[:1], flat[6:]]).mean(0)
  expect = (group + flat[1:6].sum(0)) / 6
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
  distinct = rng.normal(size=(K, D)).astype(np.float32)
  out, _ = _stage(0.99).apply(_rows(distinct, mask, weight, weight), ())
  np.testing.assert_array_equal(out.flat, distinct)
  np.testing.assert_array_equal(out.mask, mask)


def test_huge_finite_rows_and_no_valid_row():
  flat, mask, weight, scale = _planted(0)
  flat[8] = 0.0
  small = duplicates.copy_groups(jnp.asarray(flat), jnp.asarray(mask), 0.99)
  huge = duplicates.copy_groups(jnp.asarray(flat * 1e30), jnp.asarray(mask),
                                0.99)
  np.testing.assert_array_equal(small, huge)
  none = duplicates.copy_groups(jnp.asarray(flat), jnp.zeros(K, bool), 0.99)
  np.testing.assert_array_equal(none, np.arange(K))
