"""Trust scores, soft quarantine with hysteresis, and a sign-flip simulation."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.aggregators import hybrid, trust

CFG = trust.TrustConfig(ema=0.8, threshold=0.4, release_threshold=0.6,
                        quarantine_scale=0.1)


@pytest.mark.parametrize("field,kw", [
    ("ema", {"ema": 1.0}), ("ema", {"ema": -0.1}),
    ("threshold", {"threshold": 0.0}),
    ("release_threshold", {"threshold": 0.5, "release_threshold": 0.5}),
    ("release_threshold", {"release_threshold": 1.5}),
    ("quarantine_scale", {"quarantine_scale": 0.0}),
    ("quarantine_scale", {"quarantine_scale": 2.0}),
])
def test_config_validation_names_field(field, kw):
  with pytest.raises(ValueError, match=field):
    trust.TrustConfig(**kw)


def test_init():
  st = trust.trust_init(5)
  chex.assert_trees_all_equal(st.score, jnp.ones(5, jnp.float32))
  chex.assert_trees_all_equal(st.quarantined, jnp.zeros(5, bool))


def test_score_closed_forms():
  a = jnp.array([1.0, 0.0])
  x = jnp.array([[1.0, 0.0],     # at the aggregate: cos 1, d 0 -> 1
                 [-1.0, 0.0],    # sign flip: cos -1 -> 0
                 [0.0, 1.0],     # orthogonal: cos 0, d = sqrt2
                 [1.0, 1.0],     # cos 1/sqrt2, d = 1
                 [1.0, 0.0]])    # duplicate of row 0 (invalid below)
  valid = jnp.array([True, True, True, True, False])
  score, cos, dnorm = trust.agreement_scores(x, valid, a)
  med = np.median([0.0, 2.0, math.sqrt(2), 1.0])  # distances of valid rows
  c3 = 1 / math.sqrt(2)
  expect = [1.0, 0.0,
            0.5 * math.exp(-max(0, math.sqrt(2) / med - 1)),
            0.5 * (1 + c3) * math.exp(-max(0, 1 / med - 1)), 0.0]
  chex.assert_trees_all_close(score, jnp.array(expect), atol=1e-6)
  chex.assert_trees_all_close(cos, jnp.array([1, -1, 0, c3, 0]), atol=1e-6)
  chex.assert_trees_all_close(dnorm[:4], jnp.array([0, 2, math.sqrt(2), 1])
                              / med, atol=1e-6)


def test_zero_aggregate_and_zero_median_distance():
  # Aggregate 0: cos defined as 1 (nothing to disagree with).
  score, cos, _ = trust.agreement_scores(jnp.ones((3, 2)), jnp.ones(3, bool),
                                         jnp.zeros(2))
  chex.assert_trees_all_close(cos, jnp.ones(3))
  chex.assert_trees_all_close(score, jnp.ones(3))
  # Most rows sit at the aggregate: median distance 0, the off one scores 0.
  x = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.5]])
  score, _, _ = trust.agreement_scores(x, jnp.ones(3, bool),
                                       jnp.array([1.0, 0.0]))
  chex.assert_trees_all_close(score, jnp.array([1.0, 1.0, 0.0]))


def test_ema_and_invalid_rows_untouched():
  st = trust.trust_init(4)
  a = jnp.array([1.0, 0.0])
  x = jnp.array([[1.0, 0.0], [-1.0, 0.0], [jnp.nan, 0.0], [-1.0, 0.0],
                 [-1.0, 0.0]])
  ids = jnp.array([0, 1, 2, 3, 7])  # row 4: id out of range
  valid = jnp.array([True, True, True, False, True])
  st, info = trust.trust_update(st, ids, x, valid, a, CFG)
  # Client 1 (score 0): 0.8; others untouched (NaN row, mask False, bad id).
  chex.assert_trees_all_close(st.score, jnp.array([1.0, 0.8, 1.0, 1.0]))
  chex.assert_trees_all_equal(info.row_valid,
                              jnp.array([True, True, False, False, False]))


def test_duplicate_ids_apply_sequentially_in_row_order():
  rng = np.random.default_rng(0)
  n, k = 5, 12
  ids = np.array([0, 1, 0, 2, 0, 1, 3, 3, 4, 0, 2, 1])
  x = rng.standard_normal((k, 6)).astype(np.float32)
  a = rng.standard_normal(6).astype(np.float32)
  valid = np.ones(k, bool)
  valid[5] = False
  st0 = trust.TrustState(score=jnp.asarray(rng.uniform(0.3, 1, n), jnp.float32),
                         quarantined=jnp.zeros(n, bool))
  st, info = trust.trust_update(st0, jnp.asarray(ids), jnp.asarray(x),
                                jnp.asarray(valid), jnp.asarray(a), CFG)
  # Reference: one row at a time, in order, with the batch's row scores.
  ref = np.asarray(st0.score, np.float64).copy()
  for i in range(k):
    if valid[i]:
      ref[ids[i]] = CFG.ema * ref[ids[i]] + (1 - CFG.ema) * info.row_score[i]
  chex.assert_trees_all_close(st.score, ref, atol=1e-6)
  # Deterministic: same inputs, bitwise same output.
  st2, _ = trust.trust_update(st0, jnp.asarray(ids), jnp.asarray(x),
                              jnp.asarray(valid), jnp.asarray(a), CFG)
  chex.assert_trees_all_equal(st.score, st2.score)


def test_hysteresis_and_weights():
  # Trust between the thresholds keeps the current status either way.
  st = trust.TrustState(score=jnp.array([0.5, 0.5, 0.3, 0.7, 0.9]),
                        quarantined=jnp.array([True, False, False, True,
                                               False]))
  # Empty batch (all rows invalid): only the transition rule acts.
  new, info = trust.trust_update(st, jnp.zeros(2, jnp.int32),
                                 jnp.zeros((2, 3)), jnp.zeros(2, bool),
                                 jnp.ones(3), CFG)
  chex.assert_trees_all_equal(new.quarantined,
                              jnp.array([True, False, True, False, False]))
  chex.assert_trees_all_equal(info.entered,
                              jnp.array([False, False, True, False, False]))
  chex.assert_trees_all_equal(info.exited,
                              jnp.array([False, False, False, True, False]))
  assert int(info.num_quarantined) == 2
  w = trust.trust_weights(new, jnp.array([0, 1, 2, 3, 4, 2]), CFG)
  chex.assert_trees_all_close(w, jnp.array([0.05, 1, 0.03, 1, 1, 0.03]))


def test_update_compiles_once():
  st = trust.trust_init(6)
  args = lambda s: (jnp.arange(4) + s, jnp.full((4, 3), float(s)),
                    jnp.ones(4, bool), jnp.ones(3))
  st, _ = trust.trust_update(st, *args(0), CFG)
  size = trust.trust_update._cache_size()
  for s in (1, 2):
    st, _ = trust.trust_update(st, *args(s), CFG)
  assert trust.trust_update._cache_size() == size


def test_sign_flip_client_quarantined_then_released():
  """Many rounds of hybrid aggregation + trust; client 0 attacks, then not.

  Bounds: the attacker scores ~0, so its trust is <= ema^j after j arrivals
  (plus a small score term) and drops below 0.4 by j = 5; we allow 6. Once
  honest it scores >~ 0.75, so trust > 0.6 needs 0.8^j < 0.2, j ~ 8; we
  allow 12.
  """
  n_clients, k, dim = 12, 6, 32
  rng = np.random.default_rng(0)
  mu = rng.standard_normal(dim)
  mu /= np.linalg.norm(mu)
  noise = 0.5 / math.sqrt(dim)  # honest noise norm ~0.5 vs |mu| = 1
  agg = hybrid.hybrid(clip_multiplier=2.0, beta=0.2, min_trusted=3,
                      weight_threshold=0.5)

  @jax.jit
  def round_fn(st, ids, x, mask):
    w = trust.trust_weights(st, ids, CFG)
    out, _ = agg.apply({"u": x}, w, mask, agg.init({"u": x}))
    return trust.trust_update(st, ids, x, mask, out["u"], CFG)

  st = trust.trust_init(n_clients)
  arrivals, attacking = 0, True
  quarantined_at = released_at = None
  for _ in range(400):
    ids = rng.choice(n_clients, size=k, replace=False)
    x = mu + noise * rng.standard_normal((k, dim))
    if 0 in ids:
      arrivals += 1
      row = int(np.flatnonzero(ids == 0)[0])
      if attacking:
        honest_mean = x[ids != 0].mean(axis=0)
        x[row] = -honest_mean + noise * rng.standard_normal(dim)
    st, info = round_fn(st, jnp.asarray(ids), jnp.asarray(x, jnp.float32),
                        jnp.ones(k, bool))
    q = np.asarray(st.quarantined)
    assert not q[1:].any(), "an honest client was quarantined"
    if attacking and q[0]:
      quarantined_at = arrivals
      assert bool(info.entered[0])
      w0 = float(trust.trust_weights(st, jnp.array([0]), CFG)[0])
      assert w0 == pytest.approx(0.1 * float(st.score[0]))
      attacking, arrivals = False, 0  # from now on client 0 behaves
    elif not attacking and not q[0]:
      released_at = arrivals
      assert bool(info.exited[0])
      break
  assert quarantined_at is not None and quarantined_at <= 6, quarantined_at
  assert released_at is not None and released_at <= 12, released_at
  assert np.all(np.asarray(st.score[1:]) > CFG.release_threshold)
