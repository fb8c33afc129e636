"""Trust: leave-one-out scores, per-client evidence, relative quarantine."""
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.aggregators import trust
from afl.aggregators import trust_scores
from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny

# The terms other than the duplicate penalty, on hand-built rows that are
# often exact copies (the duplicate term has its own tests below).
CFG = trust.TrustConfig(duplicate_penalty=0.0)


@pytest.mark.parametrize("field,kw", [
    ("decay", {"decay": 0.0}), ("decay", {"decay": 1.5}),
    ("prior_count", {"prior_count": -1.0}),
    ("min_count", {"min_count": 0}),
    ("z_enter", {"z_enter": 0.0}),
    ("z_release", {"z_release": -0.5}),
    ("z_release", {"z_enter": 1.0, "z_release": 1.0}),
    ("agreement_floor", {"agreement_floor": -1.0}),
    ("agreement_floor", {"agreement_floor": 1.5}),
    ("norm_tolerance", {"norm_tolerance": 0.5}),
    ("norm_penalty", {"norm_penalty": -0.1}),
    ("quarantine_scale", {"quarantine_scale": 0.0}),
    ("quarantine_scale", {"quarantine_scale": 2.0}),
])
def test_config_validation_names_field(field, kw):
  with pytest.raises(ValueError, match=rf"^config\.trust\.{field}: "):
    trust.TrustConfig(**kw)


def test_config_section_builds_the_trust_config():
  c = tiny.get_config()
  c.trust.update(enabled=True, z_enter=3.0, min_count=5)
  cfg = build_config(c).trust.trust_config()
  assert (cfg.z_enter, cfg.min_count, cfg.decay) == (3.0, 5, CFG.decay)
  c.trust.z_release = 3.0
  with pytest.raises(ValueError, match=r"config\.trust\.z_release: must be <"):
    build_config(c)


def test_init():
  st = trust.trust_init(5)
  chex.assert_trees_all_equal(st.score, jnp.ones(5, jnp.float32))
  chex.assert_trees_all_equal(st.quarantined, jnp.zeros(5, bool))
  chex.assert_trees_all_equal(st.arrivals, jnp.zeros(5, jnp.int32))
  assert float(jnp.sum(st.total) + jnp.sum(st.count)) == 0.0


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 9])
def test_leave_one_out_median_matches_numpy(k):
  rng = np.random.default_rng(k)
  for trial in range(6):
    # Odd trials: small integers, so columns are full of ties.
    x = (rng.integers(-2, 3, (k, 41)) if trial % 2
         else rng.standard_normal((k, 41))).astype(np.float32)
    valid = rng.random(k) < 0.8
    got = np.asarray(trust_scores.leave_one_out_median(jnp.asarray(x),
                                                jnp.asarray(valid)))
    for i in range(k):
      others = valid & (np.arange(k) != i)
      want = (np.median(x[others], axis=0) if valid[i] and valid.sum() >= 2
              else np.zeros(41))
      np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_leave_one_out_median_over_column_blocks():
  # D above one sorting block: blocks must join without seams.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 20000)).astype(np.float32)
  got = np.asarray(trust_scores.leave_one_out_median(jnp.asarray(x),
                                              jnp.ones(6, bool)))
  for i in range(6):
    np.testing.assert_allclose(got[i], np.median(np.delete(x, i, 0), 0),
                               atol=1e-6)


def test_row_scores_closed_forms():
  x = jnp.array([[1.0, 2.0, 0.5, 1.0],     # agrees everywhere
                 [1.0, 1.0, 1.0, -1.0],    # 3 of 4 signs agree: 1/2
                 [2.0, 1.0, 1.0, 1.0],
                 [1.0, 1.0, 2.0, 1.0],
                 [-1.0, -1.0, -1.0, -1.0],  # flipped: -1
                 [10.0, 10.0, 10.0, 10.0],  # agrees, 20/2 = 10x too long
                 [9.0, 9.0, 9.0, 9.0]])     # invalid below
  valid = jnp.array([True] * 6 + [False])
  score, agree, rho, _ = trust_scores.row_scores(x, valid, CFG)
  chex.assert_trees_all_close(agree, jnp.array([1, 0.5, 1, 1, -1, 1, 0]),
                              atol=1e-6)
  norms = np.linalg.norm(np.asarray(x)[:6], axis=1)
  typical = [np.median(np.delete(norms, i)) for i in range(6)]
  chex.assert_trees_all_close(rho[:6], norms / typical, atol=1e-5)
  assert float(rho[5]) == pytest.approx(8.0)  # 20 / median(2, 2, 2.5, ..)
  excess = [CFG.norm_penalty * max(0.0, math.log(r / CFG.norm_tolerance))
            for r in norms / typical]
  want = np.array([1, 0.5, 1, 1, -1, 1]) - np.array(excess)
  chex.assert_trees_all_close(score, jnp.array(list(want) + [0.0]),
                              atol=1e-5)
  assert excess[5] > 0 and not any(excess[:5])
  # Zero rows have no signs (agreement 0, no penalty); one valid row alone
  # has no reference.
  z = trust_scores.row_scores(jnp.zeros((3, 4)), jnp.ones(3, bool), CFG)
  chex.assert_trees_all_equal(z[0], jnp.zeros(3))
  one = trust_scores.row_scores(x[:2], jnp.array([True, False]), CFG)
  chex.assert_trees_all_equal(one[0], jnp.zeros(2))


def test_row_scores_against_a_reference():
  """With a reference g every row is compared with g itself: the sign
  cosine and |x| / |g| in numpy; one valid row suffices; an unusable g
  (zero, non-finite) scores nothing."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(5, 12)).astype(np.float32)
  x[3] *= 9.0
  g = rng.normal(size=12).astype(np.float32)
  valid = np.array([True, True, False, True, True])
  score, agree, rho, ok = trust_scores.row_scores(jnp.asarray(x), jnp.asarray(valid),
                                           CFG, jnp.asarray(g))
  want_agree = np.sign(x) @ np.sign(g) / 12.0
  want_rho = np.linalg.norm(x, axis=1) / np.linalg.norm(g)
  pen = CFG.norm_penalty * np.maximum(0, np.log(want_rho / CFG.norm_tolerance))
  want = np.where(valid, np.clip(want_agree - pen, -1, 1), 0.0)
  np.testing.assert_allclose(np.asarray(agree), np.where(valid, want_agree, 0),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(score), want, atol=1e-5)
  assert pen[3] > 0 and np.asarray(ok).tolist() == valid.tolist()
  alone = trust_scores.row_scores(jnp.asarray(x), jnp.asarray(valid & (np.arange(5)
                                                                == 0)),
                           CFG, jnp.asarray(g))
  assert float(alone[0][0]) == pytest.approx(float(want[0]), abs=1e-5)
  for bad in (np.zeros(12), np.full(12, np.nan)):
    out = trust_scores.row_scores(jnp.asarray(x), jnp.asarray(valid), CFG,
                           jnp.asarray(bad, jnp.float32))
    assert not np.asarray(out[3]).any() and not np.asarray(out[0]).any()


def _pattern(flipped_row: int, k: int = 4):
  """k identical rows except one sign-flipped: scores 1 and -1 exactly."""
  x = np.ones((k, 4), np.float32)
  if flipped_row >= 0:
    x[flipped_row] = -1.0
  return jnp.asarray(x)


def test_huge_finite_rows_score_finite():
  x = _pattern(-1, 5).at[4].set(1e30)  # squares overflow float32
  st, info = trust.trust_update(trust.trust_init(5), jnp.arange(5), x,
                                jnp.ones(5, bool), CFG)
  assert float(info.row_score[4]) == -1.0  # agrees, but endlessly long
  assert np.all(np.isfinite(np.asarray(st.total)))
  assert np.all(np.isfinite(np.asarray(info.z)))


def test_evidence_accumulates_by_hand():
  cfg = trust.TrustConfig(decay=0.5, prior_count=1.0, min_count=1,
                          duplicate_penalty=0.0)
  st = trust.trust_init(4)
  # A: client 3 flipped. B: clients 0-2 only. C: client 0 flipped.
  st, _ = trust.trust_update(st, jnp.array([0, 1, 2, 3]), _pattern(3),
                             jnp.ones(4, bool), cfg)
  st, _ = trust.trust_update(st, jnp.array([0, 1, 2, 7]), _pattern(-1),
                             jnp.array([True, True, True, False]), cfg)
  st, info = trust.trust_update(st, jnp.array([1, 2, 3, 0]), _pattern(3),
                                jnp.ones(4, bool), cfg)
  # total <- 0.5 total + score, count <- 0.5 count + 1.
  total = [0.5 * (0.5 * 1 + 1) - 1, 1.75, 1.75, 0.5 * -1 + 1]
  count = [1.75, 1.75, 1.75, 1.5]
  chex.assert_trees_all_close(st.total, jnp.array(total), atol=1e-6)
  chex.assert_trees_all_close(st.count, jnp.array(count), atol=1e-6)
  chex.assert_trees_all_equal(st.arrivals, jnp.array([3, 3, 3, 2]))
  # Means -1/7, 1, 1, 1/3; median 2/3; deviations shrunk by count/(count+1)
  # are -17/33, 7/33, 7/33, -1/5, so MAD = 7/33 (the two middle ones).
  dev = np.array([-17 / 33, 7 / 33, 7 / 33, -1 / 5])
  z = dev / (1.4826 * 7 / 33)
  chex.assert_trees_all_close(info.z, jnp.asarray(z), atol=1e-5)
  chex.assert_trees_all_close(
      st.score, jnp.clip(1 + np.minimum(z, 0) / (2 * cfg.z_enter), 0, 1),
      atol=1e-5)
  assert not st.quarantined.any()  # z0 = -1.64 > -z_enter = -3


def test_invalid_rows_are_neither_references_nor_scored():
  x = _pattern(3, 6).at[4].set(jnp.nan).at[5].set(-7.0)
  ids = jnp.array([0, 1, 2, 3, 4, 9])  # row 5: id out of range
  st, info = trust.trust_update(trust.trust_init(6), ids, x,
                                jnp.ones(6, bool), CFG)
  chex.assert_trees_all_equal(info.row_valid,
                              jnp.array([True] * 4 + [False] * 2))
  chex.assert_trees_all_close(info.row_score, jnp.array([1, 1, 1, -1, 0, 0]))
  chex.assert_trees_all_equal(st.arrivals, jnp.array([1, 1, 1, 1, 0, 0]))


def test_scored_subset_keeps_the_others_as_references():
  st, info = trust.trust_update(trust.trust_init(4), jnp.arange(4),
                                _pattern(3), jnp.ones(4, bool), CFG,
                                scored=jnp.array([False, False, False, True]))
  assert float(info.row_score[3]) == -1.0  # against the 3 others
  chex.assert_trees_all_equal(st.arrivals, jnp.array([0, 0, 0, 1]))


def test_duplicate_ids_apply_sequentially_in_row_order():
  rng = np.random.default_rng(0)
  n, k = 5, 12
  ids = np.array([0, 1, 0, 2, 0, 1, 3, 3, 4, 0, 2, 1])
  x = rng.standard_normal((k, 6)).astype(np.float32)
  valid = np.ones(k, bool)
  valid[5] = False
  st0 = trust.trust_init(n).replace(
      total=jnp.asarray(rng.uniform(-1, 1, n), jnp.float32),
      count=jnp.asarray(rng.uniform(1, 3, n), jnp.float32),
      arrivals=jnp.full(n, 2, jnp.int32))
  st, info = trust.trust_update(st0, jnp.asarray(ids), jnp.asarray(x),
                                jnp.asarray(valid), CFG)
  # Reference: one row at a time, in order, with the batch's row scores.
  total = np.asarray(st0.total, np.float64).copy()
  count = np.asarray(st0.count, np.float64).copy()
  for i in np.flatnonzero(valid):
    total[ids[i]] = CFG.decay * total[ids[i]] + info.row_score[i]
    count[ids[i]] = CFG.decay * count[ids[i]] + 1
  chex.assert_trees_all_close(st.total, total, atol=1e-6)
  chex.assert_trees_all_close(st.count, count, atol=1e-6)
  chex.assert_trees_all_equal(st.arrivals, 2 + np.bincount(ids[valid],
                                                           minlength=n))
  st2, _ = trust.trust_update(st0, jnp.asarray(ids), jnp.asarray(x),
                              jnp.asarray(valid), CFG)
  chex.assert_trees_all_equal(st.total, st2.total)  # deterministic


def test_transitions_hysteresis_and_weights():
  cfg = trust.TrustConfig(prior_count=0.0)
  # Means (count 1). Clients 9 and 10 are quarantined, so the statistics
  # are those of 0-8: median 0.5, 1.4826 MAD 0.148.
  mean = jnp.array([0.4, 0.5, 0.5, 0.5, 0.6, 0.5, -0.5, -0.5, 0.05, 0.45,
                    0.15])
  arrivals = jnp.array([3] * 7 + [2] + [3] * 3)
  q = jnp.zeros(11, bool).at[9].set(True).at[10].set(True)
  st = trust.trust_init(11).replace(total=mean, count=jnp.ones(11),
                                    arrivals=arrivals, quarantined=q)
  # Empty batch: the evidence stays, only the transition rule acts.
  new, info = trust.trust_update(st, jnp.zeros(2, jnp.int32),
                                 jnp.zeros((2, 3)), jnp.zeros(2, bool), cfg)
  m = np.asarray(mean)
  z = (m - 0.5) / (1.4826 * np.median(np.abs(m[:9] - 0.5)))
  chex.assert_trees_all_close(info.z, z, atol=1e-4)
  # 6: z -6.7, mean < 0, 3 arrivals -> enters. 7: too few arrivals.
  # 8: z -3.04 but mean 0.05 >= floor. 9: z -0.34 -> leaves. 10: z -2.36,
  # inside the hysteresis band (-z_enter, -z_release] -> stays.
  want = np.zeros(11, bool)
  want[[6, 10]] = True
  chex.assert_trees_all_equal(new.quarantined, want)
  chex.assert_trees_all_equal(info.entered, np.arange(11) == 6)
  chex.assert_trees_all_equal(info.exited, np.arange(11) == 9)
  assert int(info.num_quarantined) == 2
  w = trust.trust_weights(new, jnp.array([0, 6, 10, 6]), cfg)
  chex.assert_trees_all_close(w, jnp.array([1.0, 0.1, 0.1, 0.1]))


def test_leave_one_out_median_outside_rows_get_the_whole_median():
  rng = np.random.default_rng(5)
  for k in (3, 4, 6, 7):
    x = rng.standard_normal((k, 9)).astype(np.float32)
    valid = np.arange(k) < k - 2
    outside = ~valid
    outside[-1] = False  # neither: 0
    got = np.asarray(trust_scores.leave_one_out_median(
        jnp.asarray(x), jnp.asarray(valid), jnp.asarray(outside)))
    np.testing.assert_allclose(got[k - 2], np.median(x[valid], axis=0),
                               atol=1e-6)
    np.testing.assert_array_equal(got[k - 1], np.zeros(9))
    for i in np.flatnonzero(valid):
      want = (np.median(x[valid & (np.arange(k) != i)], axis=0)
              if valid.sum() >= 2 else np.zeros(9))  # k = 3: one valid row
      np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_max_cosine_with_others_matches_numpy():
  rng = np.random.default_rng(6)
  x = rng.standard_normal((7, 30)).astype(np.float32)
  x[2] = 3.0 * x[5]  # a scaled copy: cosine 1
  x[4] = 0.0  # no direction
  valid = np.array([True, True, True, True, True, True, False])
  got = np.asarray(trust_scores.max_cosine_with_others(jnp.asarray(x),
                                                jnp.asarray(valid)))
  u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
  for k in range(7):
    others = [j for j in range(7) if j != k and valid[j] and j != 4]
    want = (max(u[k] @ u[j] for j in others) if valid[k] and k != 4
            else -1.0)
    assert got[k] == pytest.approx(want, abs=1e-5), k
  assert got[2] == pytest.approx(1.0, abs=1e-6)
  # Entries up to float32 max (squares overflow) still give cosines.
  huge = np.stack([x[0], x[0], x[1]]) * np.float32(1e37)
  out = np.asarray(trust_scores.max_cosine_with_others(jnp.asarray(huge),
                                                jnp.ones(3, bool)))
  assert np.all(np.isfinite(out)) and out[0] == pytest.approx(1.0, abs=1e-5)


def test_duplicate_penalty_closed_form():
  """score = agreement - norm term - duplicate_penalty * max(0, (c - tol) /
  (1 - tol)), c the largest cosine with another valid row."""
  rng = np.random.default_rng(7)
  x = rng.standard_normal((6, 40)).astype(np.float32) + 0.5
  x[4] = x[3]  # an exact copy
  x[5] = x[3] + 0.05 * rng.standard_normal(40).astype(np.float32)
  valid = jnp.ones(6, bool)
  cfg = trust.TrustConfig(duplicate_tolerance=0.9, duplicate_penalty=0.7)
  off = trust.TrustConfig(duplicate_tolerance=0.9, duplicate_penalty=0.0)
  score, agree, _, _ = trust_scores.row_scores(jnp.asarray(x), valid, cfg)
  base, agree0, _, _ = trust_scores.row_scores(jnp.asarray(x), valid, off)
  chex.assert_trees_all_equal(agree, agree0)
  c = np.asarray(trust_scores.max_cosine_with_others(jnp.asarray(x), valid))
  want = np.clip(np.asarray(base) - 0.7 * np.maximum(0, (c - 0.9) / 0.1),
                 -1, 1)
  np.testing.assert_allclose(np.asarray(score), want, atol=1e-5)
  assert c[3] > 0.99 and c[0] < 0.9  # copies penalized, the others not
  assert float(score[3]) < float(base[3]) - 0.6


def test_quarantined_rows_are_scored_but_not_references():
  rng = np.random.default_rng(8)
  x = rng.standard_normal((6, 25)).astype(np.float32)
  q = jnp.zeros(6, bool).at[1].set(True).at[4].set(True)
  st = trust.trust_init(6).replace(quarantined=q)
  _, info = trust.trust_update(st, jnp.arange(6), jnp.asarray(x),
                               jnp.ones(6, bool), CFG)
  free = ~np.asarray(q)
  for k in range(6):
    others = free & (np.arange(6) != k)
    r = np.median(x[others], axis=0)
    want = np.sign(x[k]) @ np.sign(r) / np.sqrt(
        np.count_nonzero(x[k]) * np.count_nonzero(r))
    assert float(info.row_agreement[k]) == pytest.approx(want, abs=1e-5), k
  assert np.asarray(info.row_valid).all()
  # With fewer than two clients in good standing, every valid row is one.
  st = trust.trust_init(6).replace(quarantined=jnp.arange(6) > 0)
  _, info = trust.trust_update(st, jnp.arange(6), jnp.asarray(x),
                               jnp.ones(6, bool), CFG)
  _, want = trust.trust_update(trust.trust_init(6), jnp.arange(6),
                               jnp.asarray(x), jnp.ones(6, bool), CFG)
  chex.assert_trees_all_close(info.row_agreement, want.row_agreement)


def _colluding_buffers(cfg, num_batches=30, seed=0):
  """Buffers of 10 non-IID-like honest rows (a shared mean under noise four
  times its size, as on the demo) from clients 0-13, three of them from
  attackers 14-19 sending one shared vector, -0.1 x the honest mean (IPM);
  returns the final state."""
  rng = np.random.default_rng(seed)
  mu = rng.standard_normal(200).astype(np.float32)
  st = trust.trust_init(20)
  for _ in range(num_batches):
    ids = np.concatenate([rng.choice(14, 7, replace=False),
                          rng.choice(np.arange(14, 20), 3, replace=False)])
    honest = mu + 4.0 * rng.standard_normal((7, 200)).astype(np.float32)
    evil = np.repeat(-0.1 * honest.mean(0, keepdims=True), 3, axis=0)
    st, _ = trust.trust_update(st, jnp.asarray(ids),
                               jnp.asarray(np.concatenate([honest, evil])),
                               jnp.ones(10, bool), cfg)
  return np.asarray(st.quarantined)


def test_colluding_copies_caught_only_with_the_duplicate_term():
  """The bloc drags the leave-one-out median its way, so sign agreement
  alone misses it; the duplicate term catches all six, no honest one."""
  q = _colluding_buffers(trust.TrustConfig())
  assert q[14:].all() and not q[:14].any(), q
  assert not _colluding_buffers(CFG)[14:].any()


def test_update_compiles_once():
  st = trust.trust_init(6)
  args = lambda s: (jnp.arange(4) + s, jnp.full((4, 3), float(s)),
                    jnp.ones(4, bool))
  st, _ = trust.trust_update(st, *args(0), CFG)
  size = trust.trust_update._cache_size()
  for s in (1, 2):
    st, _ = trust.trust_update(st, *args(s), CFG)
  assert trust.trust_update._cache_size() == size


def _tiny_run(attack: bool, versions: int = 30, reform: bool = False,
              reference: str = "median", kind: str = "sign_flip"):
  """Tiny FedBuff (20 clients, buffers of 8, hybrid + trust against
  `reference`; root: 64 held-out examples), optionally 25% attackers of
  `kind`.
  Returns (simulation, summary, transition log); each entry
  is (event, client, version, its scored arrivals, malicious then). With
  `reform`, a client stops attacking once it is quarantined."""
  c = tiny.get_config()
  c.num_clients, c.concurrency, c.server.buffer_size = 20, 8, 8
  c.data.update(synthetic_train=1024, synthetic_test=256)
  if attack:
    c.attack.update(kind=kind, fraction=0.25)
  c.aggregator.name = "hybrid"
  c.trust.update(enabled=True, reference=reference, root_examples=64)
  c.stop.max_versions = versions
  c.eval.every_versions = 5
  events, sims = [], []

  def log(msg):
    hit = re.match(r"trust: client (\d+) (quarantined|released)", msg)
    if hit:
      sim, cid = sims[0], int(hit.group(1))
      events.append((hit.group(2), cid, sim.loop.version,
                     int(sim.server.trust.arrivals[cid]),
                     bool(sim.c.malicious[cid])))
      if reform and hit.group(2) == "quarantined":
        sim.c.malicious[cid] = False  # its next updates are honest
  sims.append(Simulation(build_config(c), None, log=log))
  return sims[0], sims[0].run(), events


@pytest.mark.parametrize("reference,kind", [
    ("median", "sign_flip"), ("root", "sign_flip"), ("median", "ipm")])
def test_tiny_attackers_quarantined_honest_never(reference, kind):
  sim, s, events = _tiny_run(attack=True, reference=reference, kind=kind)
  bad = set(np.flatnonzero(sim.c.malicious).tolist())
  assert len(bad) == 5
  assert all(mal for _, _, _, _, mal in events), events  # no honest one
  first = {cid: n for ev, cid, _, n, _ in events if ev == "quarantined"}
  assert set(first) == bad
  # Observed 3-5 arrivals (seeds 0-3); min_count is 3.
  assert max(first.values()) <= 6, first
  assert s["quarantined_malicious"] == 5 and s["quarantined_honest"] == 0
  assert s["mean_trust_malicious"] < 0.5 < s["mean_trust_honest"]


@pytest.mark.parametrize("reference", ["median", "root"])
def test_tiny_without_attack_nobody_quarantined_trust_stationary(reference):
  sim, s, events = _tiny_run(attack=False, reference=reference)
  assert not events and s["num_quarantined"] == 0
  # The reported trust is relative to the population: no drift.
  means = [r["mean_trust_honest"] for r in sim.history.records[1:]]
  assert min(means) > 0.8, means


def test_tiny_reformed_clients_released():
  _, _, events = _tiny_run(attack=True, versions=40, reform=True)
  entered = {cid: n for ev, cid, _, n, _ in events if ev == "quarantined"}
  left = {cid: n for ev, cid, _, n, _ in events if ev == "released"}
  assert len(entered) == 5 and set(left) == set(entered), events
  # Observed 2-11 honest arrivals to recover: decay 0.9 forgets the attack
  # (its rows weigh 0.9^j after j honest ones).
  assert max(left[c] - entered[c] for c in left) <= 15, events
