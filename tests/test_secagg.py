"""Tests for afl.privacy.secagg: masks cancel, dropouts recover, rows random;
the fixed-point range is clipped, duplicate ids are rejected, and the server's
merge + privacy stages sum a buffer holding a client twice exactly."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from afl.config import base_config, build_config
from afl.privacy import secagg
from afl.server import Arrival, build as server_build, private, stages
from afl.server.rows import PAD_ID, Rows

SCALE = secagg.DEFAULT_SCALE

# Shared jitted entry points, and a handful of shapes, so that tests reuse
# compilations (each distinct (K, D) is a new program).
_mask = jax.jit(secagg.mask_updates)
_unmask = jax.jit(secagg.unmask_sum)
DIM = 129


def _fixed_point(x, participants=None):
  """Reference encoding in int64: round(x * scale), clipped to
  floor((2^31 - 1) / n) for n participants (all rows when None)."""
  q = np.round(np.asarray(x, np.float32) * np.float32(SCALE)).astype(np.int64)
  n = len(q) if participants is None else int(np.sum(participants))
  bound = (2 ** 31 - 1) // max(n, 1)
  return np.clip(q, -bound, bound)


def _quantized_sum(x, keep, participants=None):
  """What secagg can at best return: the sum of fixed-point encodings."""
  q = _fixed_point(x, participants)
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
  masked, clipped = _mask(x, ids, key)
  assert masked.dtype == jnp.uint32
  np.testing.assert_array_equal(clipped, 0)
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
  masked, _ = _mask(x, ids, key)
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
  masked, _ = _mask(x, ids, key, participants)
  np.testing.assert_array_equal(masked[~participants], 0)
  got = _unmask(masked, ids, survivors, key, participants)
  np.testing.assert_array_equal(
      got, _quantized_sum(x, np.asarray(participants & survivors),
                          participants))
  # Same cohort without the padding rows gives the same masked vectors.
  live = np.flatnonzero(participants)
  np.testing.assert_array_equal(
      secagg.mask_updates(x[live], ids[live], key)[0], masked[live])


def test_masks_depend_on_ids_not_cohort_position():
  x, ids = _cohort(6, DIM, seed=3)
  key = jax.random.key(0)
  perm = np.array([2, 0, 5, 3, 1, 4])
  np.testing.assert_array_equal(_mask(x[perm], ids[perm], key)[0],
                                _mask(x, ids, key)[0][perm])


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
  masked, _ = _mask(jnp.asarray(x, jnp.float32), ids, jax.random.key(9))
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
  a, _ = _mask(x, ids, jax.random.key(0))
  b, _ = _mask(x, ids, jax.random.key(1))
  assert np.mean(np.asarray(a) == np.asarray(b)) < 0.01


def test_secure_sum_and_encoding_roundtrip():
  x, ids = _cohort(4, 50, seed=5)
  key = jax.random.key(1)
  survivors = jnp.array([True, False, True, True])
  got, clipped = jax.jit(secagg.secure_sum)(x, ids, key, survivors=survivors)
  np.testing.assert_array_equal(got, _quantized_sum(x, survivors))
  assert int(clipped) == 0
  v = jnp.array([[0.0, 1.0, -1.0, 2.0 ** -16, -3.5, 1e9, -1e9, jnp.nan]])
  encoded, clipped = secagg.encode(v, jnp.array([True]))
  back = secagg.dequantize(encoded)[0]
  np.testing.assert_array_equal(back[:5], v[0, :5])
  assert back[5] > 30_000 and back[6] < -30_000 and back[7] == 0
  assert clipped.tolist() == [3]


def test_no_retrace_with_new_data_and_keys():

  @jax.jit
  @chex.assert_max_traces(n=1)
  def round_trip(x, ids, survivors, key):
    m, _ = secagg.mask_updates(x, ids, key)
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


# --- The fixed-point range: clipped before masking, never wrapped. ---------


def _overflowing_cohort(k=10, dim=DIM):
  """k clients with 4000 in coordinate 0 (k * 4000 * 2^16 > 2^31, which
  wrapped to -25536 before the range bound) and in-range noise elsewhere."""
  x, ids = _cohort(k, dim, seed=6)
  return x.at[:, 0].set(4000.0), ids


@pytest.mark.parametrize("dropped", [[], [3], [0, 4, 9]])
def test_out_of_range_values_are_clipped_not_wrapped(dropped):
  x, ids = _overflowing_cohort()
  survivors = np.ones(10, bool)
  survivors[dropped] = False
  got, clipped = jax.jit(secagg.secure_sum)(x, ids, jax.random.key(2),
                                            survivors=survivors)
  bound = (2 ** 31 - 1) // 10
  assert int(secagg.range_bound(10)) == bound
  ref = _fixed_point(x)
  assert np.all(ref[:, 0] == bound)
  want = (ref[survivors].sum(0) / SCALE).astype(np.float32)
  np.testing.assert_array_equal(got, want)
  assert 0 < got[0] <= 32768 and np.all(np.isfinite(got))
  # One clipped coordinate per surviving client.
  assert int(clipped) == survivors.sum()
  # In-range coordinates are the plain (unclipped) quantized sum.
  plain = np.round(np.asarray(x) * np.float32(SCALE)).astype(np.int64)
  np.testing.assert_array_equal(
      got[1:], (plain[survivors, 1:].sum(0) / SCALE).astype(np.float32))


def test_in_range_encoding_is_plain_rounding():
  x, _ = _cohort(6, DIM, seed=7)
  x = x * 1000.0  # large, but within floor((2^31 - 1) / 6) / 2^16 = 5461
  encoded, clipped = secagg.encode(x, jnp.ones(6, bool))
  plain = np.round(np.asarray(x) * np.float32(SCALE)).astype(np.int32)
  np.testing.assert_array_equal(
      jax.lax.bitcast_convert_type(encoded, jnp.int32), plain)
  np.testing.assert_array_equal(clipped, 0)
  # Padding rows neither count nor narrow the bound of the participants.
  part = jnp.array([True, True, True, False, False, False])
  big = x.at[:, 0].set(20_000.0)
  _, clipped = secagg.encode(big, part)
  assert clipped.tolist() == [1, 1, 1, 0, 0, 0]


# --- Client ids: duplicates among participants are rejected. ---------------


@pytest.mark.parametrize("survivors", [None, [True, True, False, True]])
def test_duplicate_participant_ids_give_nan(survivors):
  x, _ = _cohort(4, DIM, seed=8)
  ids = jnp.array([5, 9, 5, 2], jnp.int32)
  got, _ = jax.jit(secagg.secure_sum)(x, ids, jax.random.key(4),
                                      survivors=survivors)
  assert np.all(np.isnan(got))
  # A padding row may share an id: it takes no part.
  part = jnp.array([True, True, False, True])
  got, _ = jax.jit(secagg.secure_sum)(x, ids, jax.random.key(4), part,
                                      survivors=survivors)
  keep = np.asarray(part) if survivors is None else np.asarray(
      part) & survivors
  np.testing.assert_array_equal(got, _quantized_sum(x, keep, part))


# --- Through the server: merge stage, then the privacy stage. --------------

# A raw buffer of 7 rows (capacity 9): client 5 three times, client 9
# twice, clients 2 and 11 once; 2 padding rows.
_RAW_IDS = [5, 9, 2, 5, 11, 9, 5]
_CLIENTS = [5, 9, 2, 11]  # in order of first appearance (the merged rows)


def _raw_buffer(seed=0, dim=DIM):
  """(Rows, numpy [4, D] merged updates). Dyadic values with unit weights,
  so the merge's float mean is exact and the reference is independent."""
  rng = np.random.default_rng(seed)
  n, cap = len(_RAW_IDS), len(_RAW_IDS) + 2
  flat = np.zeros((cap, dim), np.float32)
  flat[:n] = rng.integers(-2 ** 10, 2 ** 10, (n, dim)) / 2.0 ** 6
  ids = np.concatenate([_RAW_IDS, PAD_ID + np.arange(n, cap)]).astype(
      np.int32)
  rows = Rows(flat=jnp.asarray(flat), weight=jnp.ones(cap, jnp.float32),
              scale=jnp.ones(cap, jnp.float32),
              mask=jnp.arange(cap) < n, ids=jnp.asarray(ids),
              malicious=jnp.zeros(cap, bool),
              aggregate=jnp.zeros(dim, jnp.float32))
  merged = np.stack([flat[:n][np.asarray(_RAW_IDS) == c].mean(0)
                     for c in _CLIENTS])
  return rows, merged


_merge = jax.jit(stages.merge_client_rows().apply)


def _merged_survivors(rows, alive_clients):
  """[K] survivors: the merged row of each client in `alive_clients`."""
  first = np.asarray(rows.mask)
  return first & np.isin(np.asarray(rows.ids), alive_clients)


@pytest.mark.parametrize("alive", [_CLIENTS, [9, 2, 11], [5, 2, 11],
                                   [5, 9, 2], [2], [], [9, 11]])
def test_merged_buffer_sums_exactly_under_any_dropout(alive):
  rows, merged = _raw_buffer()
  # The raw buffer repeats ids among participants: rejected, not wrong.
  raw, _ = jax.jit(secagg.secure_sum)(rows.flat, rows.ids, jax.random.key(0),
                                      rows.mask)
  assert np.all(np.isnan(raw))
  rows, _ = _merge(rows, ())
  surv = _merged_survivors(rows, alive)
  got, clipped = jax.jit(secagg.secure_sum)(rows.flat, rows.ids,
                                            jax.random.key(0), rows.mask, surv)
  ref = _fixed_point(merged)[np.isin(_CLIENTS, alive)].sum(0)
  np.testing.assert_array_equal(got, (ref / SCALE).astype(np.float32))
  assert int(clipped) == 0


def _secagg_config(drop):
  c = base_config().secagg
  c.enabled, c.drop_after_masking = True, drop
  return c


def test_privacy_stage_after_merge_is_a_survivor_mean():
  rows, merged = _raw_buffer(seed=1)
  chain = stages.chain(stages.merge_client_rows(), private.private_mean(
      jax.random.key(3), secagg=_secagg_config(0.0)))
  out, state = jax.jit(chain.apply)(rows, chain.init(rows))
  want = _fixed_point(merged).sum(0) / SCALE / len(_CLIENTS)
  np.testing.assert_array_equal(out.aggregate, want.astype(np.float32))
  assert int(state[1][1]) == 0
  # With dropouts each aggregate is the mean over some subset of clients
  # (the division by 3 may round differently under XLA: 1e-6 relative).
  chain = stages.chain(stages.merge_client_rows(), private.private_mean(
      jax.random.key(3), secagg=_secagg_config(0.5)))
  apply, state = jax.jit(chain.apply), chain.init(rows)
  q = _fixed_point(merged)
  subsets = [np.asarray(m, bool) for m in np.ndindex(*[2] * len(_CLIENTS))]
  means = [(q[m].sum(0) / SCALE).astype(np.float32)
           / np.float32(max(m.sum(), 1)) for m in subsets]
  seen = set()
  for _ in range(8):
    out, state = apply(rows, state)
    hits = [i for i, m in enumerate(means)
            if np.allclose(out.aggregate, m, rtol=1e-6, atol=0)]
    assert hits, "aggregate is no subset's mean"
    seen.add(hits[0])
  assert len(seen) > 1  # the drops do vary


# Also under server DP, where secure_sum runs inside dp.server_noised_mean
# (a clip norm too large to bind).
@pytest.mark.parametrize("dp_clip", [None, 1e9])
def test_clip_count_accumulates_in_the_stage_state(dp_clip):
  rows, _ = _raw_buffer(seed=2)
  rows = rows.replace(flat=rows.flat.at[:, 0].set(30_000.0))
  stage = private.private_mean(jax.random.key(0), dp_clip=dp_clip,
                               secagg=_secagg_config(0.0))
  state = stage.init(rows)
  rows, _ = _merge(rows, ())
  for _ in range(2):
    _, state = jax.jit(stage.apply)(rows, state)
  # 4 clients clip coordinate 0 in each of the 2 aggregations.
  assert int(state[1]) == 8


def test_server_step_with_a_client_twice_and_clipping():
  c = base_config()
  c.secagg.enabled = True
  c.server.update(mode="fedbuff", buffer_size=4, optimizer="sgd", lr=1.0,
                  weight_by_examples=False, staleness_fn="constant")
  params = {"w": jnp.zeros(3, jnp.float32)}
  server, _ = server_build.build(build_config(c), params, jax.random.key(0))
  # Client 1 arrives twice (rows 0 and 2).
  buffer = [(1, [1.0, 2.0, 2e4]), (2, [0.5, -1.0, 2e4]),
            (1, [3.0, 0.0, 2e4]), (3, [-0.25, 0.75, 2e4])]
  arrivals = [Arrival({"w": jnp.asarray(d)}, 0, i, 1, False)
              for i, d in buffer]
  server.aggregate(arrivals)
  # Merge, then 3 participants: 2e4 * 2^16 is clipped to (2^31 - 1) // 3.
  merged = np.stack([np.mean([d for j, d in buffer if j == i], 0)
                     for i in (1, 2, 3)])
  want = _fixed_point(merged).sum(0) / SCALE / 3
  np.testing.assert_allclose(server.params["w"], want, rtol=1e-6, atol=0)
  assert server.secagg_clipped() == 3
  server.aggregate(arrivals)
  assert server.secagg_clipped() == 6
