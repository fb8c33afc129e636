"""Tests for afl.privacy.secagg: masks cancel, dropouts recover, rows random."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from afl.config import base_config, build_config
from afl.privacy import secagg

SCALE = secagg.DEFAULT_SCALE

# Shared jitted entry points, and a handful of shapes, so that tests reuse
# compilations (each distinct (K, D) is a new program).
_mask = jax.jit(secagg.mask_updates)
_unmask = jax.jit(secagg.unmask_sum)
DIM = 129


def _quantized_sum(x, keep):
  """What secagg can at best return: the sum of fixed-point encodings."""
  q = np.round(np.asarray(x, np.float32) * np.float32(SCALE)).astype(np.int64)
  return (q[np.asarray(keep)].sum(0) / SCALE).astype(np.float32)


def _cohort(k, dim, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(k, dim)), jnp.float32)
  ids = jnp.asarray(rng.choice(10_000, size=k, replace=False), jnp.int32)
  return x, ids


# K = 1: self mask only; 3: odd; 6: even (the d = K/2 pairs come up twice).
@pytest.mark.parametrize("k", [1, 3, 6])
def test_masked_sum_equals_plain_sum(k):
  x, ids = _cohort(k, DIM)
  key = jax.random.key(42)
  masked = _mask(x, ids, key)
  assert masked.dtype == jnp.uint32
  everyone = jnp.ones(k, bool)
  got = _unmask(masked, ids, everyone, key)
  # Exact in the ring: only the fixed-point rounding of each input remains.
  np.testing.assert_array_equal(got, _quantized_sum(x, everyone))
  np.testing.assert_allclose(got, np.sum(np.asarray(x), 0), rtol=0,
                             atol=k / (2 * SCALE) + 1e-6)


@pytest.mark.parametrize("dropped", [[], [0], [1, 4], [0, 2, 3, 5], [1, 2, 3, 4,
                                                                    5]])
def test_dropouts_after_masking_are_recovered_exactly(dropped):
  k = 6
  x, ids = _cohort(k, DIM, seed=1)
  key = jax.random.key(7)
  masked = _mask(x, ids, key)
  survivors = np.ones(k, bool)
  survivors[dropped] = False
  got = _unmask(masked, ids, jnp.asarray(survivors), key)
  np.testing.assert_array_equal(got, _quantized_sum(x, survivors))
  # The server never reads a dropped client's row.
  tampered = masked.at[np.asarray(dropped, int)].set(123)
  np.testing.assert_array_equal(
      _unmask(tampered, ids, jnp.asarray(survivors), key), got)


def test_padding_rows_take_no_part():
  k = 6
  x, ids = _cohort(k, DIM, seed=2)
  key = jax.random.key(3)
  participants = jnp.array([True, False, True, True, False, True])
  survivors = jnp.array([True, False, False, True, True, True])  # 4: padding
  masked = _mask(x, ids, key, participants)
  np.testing.assert_array_equal(masked[~participants], 0)
  got = _unmask(masked, ids, survivors, key, participants)
  np.testing.assert_array_equal(
      got, _quantized_sum(x, np.asarray(participants & survivors)))
  # Same cohort without the padding rows gives the same masked vectors.
  live = np.flatnonzero(participants)
  np.testing.assert_array_equal(
      secagg.mask_updates(x[live], ids[live], key), masked[live])


def test_masks_depend_on_ids_not_cohort_position():
  x, ids = _cohort(6, DIM, seed=3)
  key = jax.random.key(0)
  perm = np.array([2, 0, 5, 3, 1, 4])
  np.testing.assert_array_equal(_mask(x[perm], ids[perm], key),
                                _mask(x, ids, key)[perm])


def _as_signed(masked):
  return np.asarray(jax.lax.bitcast_convert_type(masked, jnp.int32),
                    np.float64)


@pytest.mark.parametrize("k", [1, 3])
def test_masked_vector_is_uncorrelated_with_update(k):
  dim = 100_000
  rng = np.random.default_rng(4)
  # A strongly structured update, so any leakage would show up.
  x = np.tile(np.sin(np.linspace(0, 40, dim)) * 3.0, (k, 1))
  x += 0.1 * rng.normal(size=x.shape)
  ids = jnp.arange(k, dtype=jnp.int32) * 11 + 5
  masked = _mask(jnp.asarray(x, jnp.float32), ids, jax.random.key(9))
  # Under independence corr * sqrt(D) is ~N(0, 1).
  bound = stats.norm.isf(1e-6 / 2) / np.sqrt(dim)
  for i in range(k):
    y = _as_signed(masked[i])
    assert abs(np.corrcoef(y, x[i])[0, 1]) < bound
    # Uniform on the ring: the top bit is a fair coin.
    top = np.asarray(masked[i] >> 31, np.float64)
    assert abs(top.mean() - 0.5) < bound


def test_different_round_keys_give_different_masks():
  x, ids = _cohort(3, DIM)
  a = _mask(x, ids, jax.random.key(0))
  b = _mask(x, ids, jax.random.key(1))
  assert np.mean(np.asarray(a) == np.asarray(b)) < 0.01


def test_secure_sum_and_quantization_roundtrip():
  x, ids = _cohort(4, 50, seed=5)
  key = jax.random.key(1)
  survivors = jnp.array([True, False, True, True])
  got = jax.jit(secagg.secure_sum)(x, ids, key, survivors=survivors)
  np.testing.assert_array_equal(got, _quantized_sum(x, survivors))
  v = jnp.array([0.0, 1.0, -1.0, 2.0 ** -16, -3.5, 1e9, -1e9, jnp.nan])
  back = secagg.dequantize(secagg.quantize(v))
  np.testing.assert_array_equal(back[:5], v[:5])
  assert back[5] > 30_000 and back[6] < -30_000 and back[7] == 0


def test_no_retrace_with_new_data_and_keys():

  @jax.jit
  @chex.assert_max_traces(n=1)
  def round_trip(x, ids, survivors, key):
    m = secagg.mask_updates(x, ids, key)
    return secagg.unmask_sum(m, ids, survivors, key)

  x, ids = _cohort(4, 20)
  round_trip(x, ids, jnp.ones(4, bool), jax.random.key(0))
  round_trip(x + 1, ids + 1, jnp.array([True, False, True, True]),
             jax.random.key(1))


def test_secagg_needs_a_linear_aggregator():
  c = base_config()
  c.secagg.enabled = True
  c.server.weight_by_examples = False
  build_config(c)  # the mean
  c.aggregator.name = "median"
  with pytest.raises(ValueError, match="config.secagg.enabled: secure "
                     "aggregation only reveals the sum"):
    build_config(c)
