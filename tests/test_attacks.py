"""Attacks against their definitions on small hand-made cohorts and batches."""
import dataclasses
import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from absl.testing import parameterized

from afl import attacks
from afl import config
from afl import config_tree
from afl.simulation import Simulation
from configs import tiny

K, D = 6, 5


def cohort(seed=0, k=K, d=D):
  """[K, D] updates; rows 0, 1 malicious, row 4 padding, row 5 has a NaN."""
  rng = np.random.default_rng(seed)
  flat = rng.standard_normal((k, d)).astype(np.float32)
  malicious = np.zeros(k, bool)
  malicious[[0, 1]] = True
  valid = np.ones(k, bool)
  valid[4] = False
  flat[4] = 1e9  # padding garbage must never leak into honest statistics
  flat[5, 2] = np.nan  # a valid-masked but non-finite honest row
  return flat, malicious, valid


def honest_ref(flat, malicious, valid):
  honest = valid & ~malicious & np.all(np.isfinite(flat), axis=1)
  h = flat[honest].astype(np.float64)
  return h.mean(0), h.std(0, ddof=0)


def assert_untouched(out, flat, malicious, valid):
  keep = ~(malicious & valid)
  np.testing.assert_array_equal(np.asarray(out)[keep], flat[keep])


class UpdateAttackTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1.0, 2.5)
  def test_sign_flip(self, scale):
    flat, mal, ok = cohort()
    fn = self.variant(lambda f, m, v: attacks.sign_flip(f, m, v, scale))
    out = np.asarray(fn(flat, mal, ok))
    np.testing.assert_array_equal(out[:2], -scale * flat[:2])
    assert_untouched(out, flat, mal, ok)

  @chex.variants(with_jit=True, without_jit=True)
  def test_scaling(self):
    flat, mal, ok = cohort()
    out = np.asarray(self.variant(
        lambda f, m, v: attacks.scaling(f, m, v, 10.0))(flat, mal, ok))
    np.testing.assert_array_equal(out[:2], 10.0 * flat[:2])
    assert_untouched(out, flat, mal, ok)

  def test_malicious_padding_row_untouched(self):
    flat, mal, ok = cohort()
    mal[4] = True  # malicious but padding: must stay as it was
    for fn in (lambda: attacks.sign_flip(flat, mal, ok),
               lambda: attacks.ipm(flat, mal, ok, 0.5),
               lambda: attacks.alie(flat, mal, ok),
               lambda: attacks.mimic(flat, mal, ok),
               lambda: attacks.min_max(flat, mal, ok),
               lambda: attacks.min_sum(flat, mal, ok, "std"),
               lambda: attacks.gaussian_noise(flat, mal, ok,
                                              jax.random.key(0), 1.0)):
      np.testing.assert_array_equal(np.asarray(fn())[4], flat[4])

  def test_gaussian_statistics(self):
    k, d, std = 8, 20000, 3.0
    flat = np.full((k, d), 7.0, np.float32)
    mal = np.arange(k) < 3
    ok = np.ones(k, bool)
    out = np.asarray(jax.jit(
        lambda f, m, v, key: attacks.gaussian_noise(f, m, v, key, std))(
            flat, mal, ok, jax.random.key(1)))
    assert_untouched(out, flat, mal, ok)
    noise = out[:3]
    # Replaced, not added: mean 0 (not 7), std 3; rows independent.
    assert abs(noise.mean()) < 0.05
    assert abs(noise.std() - std) < 0.05
    assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 0.03
    ks = scipy.stats.kstest(noise.ravel() / std, "norm")
    assert ks.pvalue > 1e-3

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.5, 1.5, None)
  def test_alie(self, z):
    flat, mal, ok = cohort()
    out = np.asarray(self.variant(
        lambda f, m, v: attacks.alie(f, m, v, z))(flat, mal, ok))
    mu, sigma = honest_ref(flat, mal, ok)
    if z is None:
      n, m = ok.sum(), (ok & mal).sum()  # n = 5 valid, m = 2
      s = np.floor(n / 2 + 1) - m
      z = scipy.stats.norm.ppf((n - s) / n)
    for i in (0, 1):
      np.testing.assert_allclose(out[i], mu - z * sigma, rtol=1e-5,
                                 atol=1e-6)
    assert_untouched(out, flat, mal, ok)

  @parameterized.parameters((10, 1), (50, 12), (100, 20), (25, 5), (7, 3))
  def test_alie_z_max_vs_scipy(self, n, m):
    s = np.floor(n / 2 + 1) - m
    want = scipy.stats.norm.ppf((n - s) / n)
    got = float(attacks.alie_z_max(n, m))
    np.testing.assert_allclose(got, want, rtol=1e-5)

  def test_alie_z_max_edge_cases(self):
    # Malicious majority: s <= 0 is clamped to s = 1 (finite z).
    np.testing.assert_allclose(float(attacks.alie_z_max(4, 3)),
                               scipy.stats.norm.ppf(3 / 4), rtol=1e-5)
    assert float(attacks.alie_z_max(1, 1)) == 0.0
    assert float(attacks.alie_z_max(0, 0)) == 0.0

  def test_alie_all_malicious_is_finite(self):
    flat = np.ones((3, 4), np.float32)
    out = attacks.alie(flat, np.ones(3, bool), np.ones(3, bool))
    np.testing.assert_array_equal(np.asarray(out), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.1, 0.5, 100.0)
  def test_ipm(self, eps):
    flat, mal, ok = cohort()
    out = np.asarray(self.variant(
        lambda f, m, v: attacks.ipm(f, m, v, eps))(flat, mal, ok))
    mu, _ = honest_ref(flat, mal, ok)
    for i in (0, 1):
      np.testing.assert_allclose(out[i], -eps * mu, rtol=1e-5, atol=1e-6)
    assert_untouched(out, flat, mal, ok)

  @parameterized.parameters(*attacks.REGISTRY.names())
  def test_make_update_attack(self, kind):
    flat, mal, ok = cohort()
    fn = jax.jit(attacks.make_update_attack(kind, std=1.0, scale=2.0,
                                            factor=3.0, z=1.0, epsilon=0.5))
    out = np.asarray(fn(flat, mal, ok, jax.random.key(0)))
    mu, sigma = honest_ref(flat, mal, ok)
    if attacks.REGISTRY[kind].prop("update"):
      want = {"sign_flip": -2.0 * flat[:2], "scaling": 3.0 * flat[:2],
              "alie": np.stack([mu - sigma] * 2),
              "ipm": np.stack([-0.5 * mu] * 2)}.get(kind)
      if want is not None:
        np.testing.assert_allclose(out[:2], want, rtol=1e-5, atol=1e-6)
      else:
        assert not np.allclose(out[:2], flat[:2])
      assert_untouched(out, flat, mal, ok)
    else:
      np.testing.assert_array_equal(out, flat)

  def test_make_update_attack_unknown(self):
    with pytest.raises(ValueError, match="unknown attack kind"):
      attacks.make_update_attack("bogus")


def honest_rows_ref(flat, malicious, valid):
  return flat[valid & ~malicious & np.all(np.isfinite(flat), axis=1)].astype(
      np.float64)


def direction_ref(h, perturbation):
  mu = h.mean(0)
  return {"unit_vec": -mu / np.linalg.norm(mu), "std": -h.std(0, ddof=0),
          "sign": -np.sign(mu)}[perturbation]


def objective_ref(h, p, objective):
  """(f, bound) of the paper's constraint f(gamma) <= bound, in float64."""
  mu = h.mean(0)
  pair = np.linalg.norm(h[:, None] - h[None], axis=-1)
  if objective == "minmax":
    return (lambda g: np.linalg.norm(mu + g * p - h, axis=1).max(),
            pair.max())
  return (lambda g: (np.linalg.norm(mu + g * p - h, axis=1) ** 2).sum(),
          (pair ** 2).sum(1).max())


def gamma_ref(f, bound):
  """The largest feasible gamma: float64 bisection, then a grid above it
  checks that no larger gamma is feasible."""
  lo, hi = 0.0, 1.0
  while f(hi) <= bound:
    lo, hi = hi, 2 * hi
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if f(mid) <= bound else (lo, mid)
  assert all(f(g) > bound for g in np.linspace(lo * (1 + 1e-9), 4 * hi, 2000))
  return lo


def search_tol(gamma_init):
  """After GAMMA_STEPS halvings the bracket of gamma* has this width."""
  return gamma_init * 2.0 ** (1 - attacks.omniscient.GAMMA_STEPS)


REL = 1e-5  # float32 evaluation of the constraint, relative
AGR_AGNOSTIC = {"minmax": attacks.min_max, "minsum": attacks.min_sum}


def spread_cohort(seed, k=12, d=9, scale=30.0):
  """`cohort` with a clear top principal direction v of the honest rows
  (2, 3, 6-11): row 7 is farthest along v, row 8 farther from the mean but
  along w _|_ v."""
  flat, mal, ok = cohort(seed, k, d)
  v, w = np.linalg.qr(np.random.default_rng(seed + 100).standard_normal(
      (d, 2)))[0].T
  t = np.zeros(k)
  t[[2, 3, 6, 7, 9, 10, 11]] = 1.0, -1.0, 0.8, 2.0, -0.8, 0.6, -0.6
  spread = scale * (t[:, None] * v + 2.2 * (np.arange(k) == 8)[:, None] * w)
  return (flat + spread).astype(np.float32), mal, ok


class OmniscientAttackTest(parameterized.TestCase):

  @parameterized.product(objective=("minmax", "minsum"),
                         perturbation=attacks.PERTURBATIONS, seed=(0, 1, 2))
  def test_gamma_is_largest_feasible(self, objective, perturbation, seed):
    flat, mal, ok = cohort(seed, k=10, d=7)
    gamma = float(jax.jit(lambda f, m, v: attacks.optimized_gamma(
        f, m, v, objective, perturbation, 10.0))(flat, mal, ok))
    h = honest_rows_ref(flat, mal, ok)
    f, bound = objective_ref(h, direction_ref(h, perturbation), objective)
    want = gamma_ref(f, bound)
    assert 0 < want < 20.0  # inside the search's bracket [0, 2 gamma_init]
    assert f(gamma) <= bound * (1 + REL)
    assert want - search_tol(10.0) - REL * want <= gamma <= want * (1 + REL)

  @parameterized.parameters("minmax", "minsum")
  def test_gamma_capped_below_twice_gamma_init(self, objective):
    flat, mal, ok = cohort(0, k=10, d=7)
    gamma = float(attacks.optimized_gamma(flat, mal, ok, objective,
                                          gamma_init=0.01))
    np.testing.assert_allclose(gamma, 0.02 - search_tol(0.01), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(objective=("minmax", "minsum"),
                         perturbation=attacks.PERTURBATIONS)
  def test_agr_agnostic_sends_mu_plus_gamma_p(self, objective, perturbation):
    flat, mal, ok = cohort(3, k=10, d=7)
    out = np.asarray(self.variant(lambda f, m, v: AGR_AGNOSTIC[objective](
        f, m, v, perturbation, 10.0))(flat, mal, ok))
    h = honest_rows_ref(flat, mal, ok)
    p = direction_ref(h, perturbation)
    want = h.mean(0) + gamma_ref(*objective_ref(h, p, objective)) * p
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_allclose(out[0], want, atol=1e-4)
    assert_untouched(out, flat, mal, ok)

  @parameterized.parameters("minmax", "minsum")
  def test_std_gamma_is_scale_free(self, objective):
    # p = -sigma scales with the updates, so gamma does not; squared
    # distances of 1e-20 updates would underflow float32 unscaled.
    flat, mal, ok = cohort(1, k=10, d=7)
    fn = jax.jit(lambda f: attacks.optimized_gamma(f, mal, ok, objective,
                                                   "std"))
    gamma = float(fn(flat))
    for scale in (1e-20, 1e18):
      scaled = flat.copy()
      scaled[ok] *= np.float32(scale)
      np.testing.assert_allclose(float(fn(scaled)), gamma, rtol=1e-4)

  def test_perturbation_direction_zero_mean(self):
    p = attacks.perturbation_direction(jnp.zeros(3), jnp.ones(3), "unit_vec")
    np.testing.assert_array_equal(np.asarray(p), 0.0)
    with pytest.raises(ValueError, match="perturbation"):
      attacks.perturbation_direction(jnp.zeros(3), jnp.ones(3), "bogus")

  def test_halving_search_is_bisection(self):
    for gamma_init, star in ((10.0, 3.0), (10.0, 0.1), (1.0, 1.9)):
      got = float(attacks.halving_search(lambda g: g <= star, gamma_init))
      assert star - search_tol(gamma_init) <= got <= star
    assert float(attacks.halving_search(lambda g: g < 0, 10.0)) == 0.0

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0, 1, 2, 3)
  def test_mimic_copies_the_top_principal_row(self, seed):
    flat, mal, ok = spread_cohort(seed)
    out = np.asarray(self.variant(attacks.mimic)(flat, mal, ok))
    honest = np.flatnonzero(ok & ~mal & np.all(np.isfinite(flat), axis=1))
    x = flat[honest].astype(np.float64)
    x -= x.mean(0)
    proj = np.abs(x @ np.linalg.svd(x)[2][0])
    first, second = np.sort(proj)[::-1][:2]
    assert first > 1.2 * second  # the row is unambiguous
    pick = honest[np.argmax(proj)]
    assert pick != honest[np.argmax(np.linalg.norm(x, axis=1))]
    for i in (0, 1):
      np.testing.assert_array_equal(out[i], flat[pick])
    assert_untouched(out, flat, mal, ok)

  @parameterized.parameters("mimic", "minmax", "minsum")
  def test_fewer_than_two_honest_send_mu(self, kind):
    flat, mal, ok = cohort()  # honest: rows 2 and 3
    fn = attacks.make_update_attack(kind)
    mal[2] = True
    out = np.asarray(fn(flat, mal, ok, jax.random.key(0)))
    for i in (0, 1, 2):
      np.testing.assert_array_equal(out[i], flat[3])
    assert_untouched(out, flat, mal, ok)
    mal[3] = mal[5] = True  # no honest row: mu = 0
    out = np.asarray(fn(flat, mal, ok, jax.random.key(0)))
    np.testing.assert_array_equal(out[mal & ok], 0.0)

  @parameterized.parameters(("mimic", "unit_vec"),
                            *[(k, p) for k in ("minmax", "minsum")
                              for p in attacks.PERTURBATIONS])
  def test_finite_for_extreme_finite_input(self, kind, perturbation):
    fn = jax.jit(attacks.make_update_attack(kind, perturbation=perturbation))
    for scale in (1e30, 1e-30):  # squared distances overflow / underflow
      flat, mal, ok = cohort(k=10, d=7)
      flat[ok] *= np.float32(scale)
      out = np.asarray(fn(flat, mal, ok, jax.random.key(0)))
      assert np.all(np.isfinite(out[mal & ok]))
      assert_untouched(out, flat, mal, ok)


def images(b=8, h=6, w=5, c=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 0.5, (b, h, w, c)).astype(np.float32)
  y = rng.integers(0, 10, b).astype(np.int32)
  return x, y


class DataAttackTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(2, 3, 10)
  def test_label_flip_permutation(self, c):
    y = jnp.arange(c, dtype=jnp.int32)
    fn = self.variant(lambda y, m: attacks.label_flip(y, m, c))
    np.testing.assert_array_equal(fn(y, True), c - 1 - np.arange(c))
    np.testing.assert_array_equal(fn(y, False), np.arange(c))
    # A permutation: flipping twice is the identity.
    np.testing.assert_array_equal(fn(fn(y, True), True), np.arange(c))

  @chex.variants(with_jit=True, without_jit=True)
  def test_label_flip_target(self):
    y = jnp.array([0, 3, 7, 9], jnp.int32)
    fn = self.variant(
        lambda y, m: attacks.label_flip(y, m, 10, "target", target=3))
    np.testing.assert_array_equal(fn(y, True), [3, 3, 3, 3])
    np.testing.assert_array_equal(fn(y, False), y)

  def test_stamp_trigger_exact_pixels(self):
    x, _ = images()
    out = np.asarray(attacks.stamp_trigger(x, 2, 9.0))
    want = x.copy()
    want[:, 4:6, 3:5, :] = 9.0
    np.testing.assert_array_equal(out, want)
    one = np.asarray(attacks.stamp_trigger(x[0], 2, 9.0))  # unbatched
    np.testing.assert_array_equal(one, want[0])
    with pytest.raises(ValueError, match="trigger_size"):
      attacks.stamp_trigger(x, 6, 1.0)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((0.5, 4), (0.25, 2), (1.0, 8), (0.3, 2),
                            (0.0625, 1), (0.0, 0))
  def test_backdoor(self, fraction, m):
    x, y = images()
    y[:] = np.arange(8) % 4 + 1  # no example is of the target class 0
    fn = self.variant(lambda x, y, key, mal: attacks.backdoor(
        x, y, key, mal, target=0, fraction=fraction, trigger_size=2,
        trigger_value=1.0))
    xo, yo = map(np.asarray, fn(x, y, jax.random.key(3), True))
    stamped = np.asarray(attacks.stamp_trigger(x, 2, 1.0))
    poisoned = np.array([not np.array_equal(xo[i], x[i]) for i in range(8)])
    assert poisoned.sum() == m
    np.testing.assert_array_equal(xo[poisoned], stamped[poisoned])
    np.testing.assert_array_equal(xo[~poisoned], x[~poisoned])
    np.testing.assert_array_equal(yo[poisoned], 0)
    np.testing.assert_array_equal(yo[~poisoned], y[~poisoned])
    # Honest: untouched.
    xh, yh = fn(x, y, jax.random.key(3), False)
    np.testing.assert_array_equal(xh, x)
    np.testing.assert_array_equal(yh, y)

  def test_backdoor_choice_depends_on_key(self):
    x, y = images(b=32)
    picks = []
    for s in range(4):
      xo, _ = attacks.backdoor(x, y, jax.random.key(s), True, target=0,
                               fraction=0.25, trigger_size=1,
                               trigger_value=1.0)
      picks.append(tuple(np.flatnonzero(np.asarray(xo)[:, -1, -1, 0] == 1)))
    assert len(set(picks)) > 1
    assert all(len(p) == 8 for p in picks)

  def test_attack_success_rate(self):
    # Targets 2; examples with true label 2 are excluded.
    y_true = jnp.array([0, 1, 2, 2, 3, 4])
    preds = jnp.array([2, 1, 2, 0, 2, 2])  # 3 of the 4 eligible hit
    np.testing.assert_allclose(attacks.attack_success_rate(preds, y_true, 2),
                               0.75)
    mask = jnp.array([True, True, True, True, True, False])
    np.testing.assert_allclose(
        attacks.attack_success_rate(preds, y_true, 2, mask), 2 / 3, rtol=1e-6)
    assert float(attacks.attack_success_rate(
        jnp.array([2, 2]), jnp.array([2, 2]), 2)) == 0.0
    np.testing.assert_allclose(jax.jit(
        attacks.attack_success_rate, static_argnums=2)(preds, y_true, 2), 0.75)

  @parameterized.parameters(*attacks.REGISTRY.names())
  def test_make_data_attack_vmap_over_clients(self, kind):
    n = 4
    x = np.stack([images(seed=i)[0] for i in range(n)])  # [N, B, H, W, C]
    y = np.stack([images(seed=i)[1] for i in range(n)])
    mal = np.array([True, False, True, False])
    keys = jax.random.split(jax.random.key(0), n)
    fn = attacks.make_data_attack(kind, 10, mode="permutation", target=0,
                                  fraction=0.5, trigger_size=2,
                                  trigger_value=1.0)
    xo, yo = jax.jit(jax.vmap(fn))(x, y, keys, mal)
    for i in range(n):  # each client against the single-client call
      xi, yi = fn(x[i], y[i], keys[i], mal[i])
      np.testing.assert_array_equal(xo[i], xi)
      np.testing.assert_array_equal(yo[i], yi)
      if not mal[i] or not attacks.REGISTRY[kind].prop("data"):
        np.testing.assert_array_equal(xo[i], x[i])
        np.testing.assert_array_equal(yo[i], y[i])
    if kind == "label_flip":
      np.testing.assert_array_equal(yo[0], 9 - y[0])
    if kind == "backdoor":
      assert int((np.asarray(yo[2]) == 0).sum()) >= 4

  def test_make_data_attack_errors(self):
    with pytest.raises(ValueError, match="trigger_value"):
      attacks.make_data_attack("backdoor", 10)
    with pytest.raises(ValueError, match="mode"):
      attacks.make_data_attack("label_flip", 10, mode="bogus")
    with pytest.raises(ValueError, match="unknown attack kind"):
      attacks.make_data_attack("bogus", 10)

  def test_update_wrapper_vmap_jit_no_retrace(self):
    fn = attacks.make_update_attack("sign_flip")
    traced = chex.assert_max_traces(fn, n=1)
    jitted = jax.jit(traced)
    flat, mal, ok = cohort()
    jitted(flat, mal, ok, jax.random.key(0))
    jitted(flat + 1, ~mal, ok, jax.random.key(1))


class SelectMaliciousTest(parameterized.TestCase):

  @parameterized.parameters((100, 0.2, 20), (10, 0.25, 3), (10, 0.15, 2),
                            (7, 0.0, 0), (7, 1.0, 7), (3, 0.5, 2))
  def test_count(self, n, fraction, m):
    mask = attacks.select_malicious(n, fraction, seed=5)
    assert mask.dtype == bool and mask.shape == (n,)
    assert mask.sum() == m

  def test_deterministic_and_seeded(self):
    a = attacks.select_malicious(1000, 0.1, seed=1)
    b = attacks.select_malicious(1000, 0.1, seed=1)
    c = attacks.select_malicious(1000, 0.1, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Does not consume or depend on global numpy state.
    np.random.seed(0)
    np.testing.assert_array_equal(a, attacks.select_malicious(1000, 0.1, 1))

  def test_ids(self):
    mask = attacks.select_malicious(10, 0.0, seed=0, ids=[1, 7])
    np.testing.assert_array_equal(np.flatnonzero(mask), [1, 7])

  @parameterized.parameters(
      (dict(fraction=1.5), "attack.fraction"),
      (dict(fraction=-0.1), "attack.fraction"),
      (dict(fraction=0.0, ids=[10]), "attack.ids"),
      (dict(fraction=0.0, ids=[-1]), "attack.ids"),
      (dict(fraction=0.0, ids=[1, 1]), "attack.ids"),
      (dict(fraction=0.2, ids=[1]), "attack.ids"))
  def test_errors(self, kwargs, key):
    with pytest.raises(ValueError, match=key):
      attacks.select_malicious(10, seed=0, **kwargs)


def _attack(**kwargs):
  """An `attack` section with every kind's parameters."""
  return config_tree.component_section(attacks.AttackConfig)(**kwargs)


def _validate(cfg):
  cfg.validate("attack")
  cfg.validate_params("attack")


class AttackConfigTest(parameterized.TestCase):

  def test_defaults_valid(self):
    _validate(_attack())
    _validate(_attack(kind="alie", fraction=0.2, alie_z=1.0))

  @parameterized.parameters(
      ("kind", "bogus"), ("fraction", 2.0), ("ids", (1, 1)), ("ids", (-2,)),
      ("label_flip_mode", "random"), ("target", -1), ("target", 1.5),
      ("backdoor_fraction", 0.0), ("trigger_size", 0),
      ("trigger_value", float("nan")), ("noise_std", -1.0), ("scale", 0.0),
      ("factor", float("inf")), ("alie_z", float("nan")),
      ("ipm_epsilon", 0.0), ("perturbation", "bogus"), ("gamma_init", 0.0),
      ("gamma_init", -1.0))
  def test_validate_names_key(self, key, value):
    cfg = _attack(**{key: value})
    with pytest.raises(ValueError, match=rf"^config\.attack\.{key}: ") as e:
      _validate(cfg)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, config.ConfigError)

  @parameterized.parameters(("mimic", {}), ("minmax", {}),
                            ("minsum", {"perturbation": "std",
                                        "gamma_init": 5.0}))
  def test_omniscient_kinds_build_and_run(self, kind, params):
    c = tiny.get_config()
    c.attack.update(kind=kind, fraction=0.25, **params)
    c.stop.max_versions = 4
    cfg = config.build_config(c)
    assert cfg.attack.kind == kind and cfg.attack.has_update_attack
    summary = Simulation(cfg, None, log=lambda m: None).run()
    assert summary["num_malicious"] == 4
    assert np.isfinite(summary["final_test_accuracy"])

  def test_builds_through_afl_config(self):
    cfg = config_tree.build(attacks.AttackConfig,
                        {"kind": "backdoor", "ids": [1, 2],
                         "trigger_value": 255}, "attack")
    assert cfg.ids == (1, 2) and cfg.resolved_trigger_value(1.0) == 255.0
    with pytest.raises(config.ConfigError, match=r"^config\.attack\.kind"):
      config_tree.build(attacks.AttackConfig, {"kind": "x"}, "attack")

  def test_ids_and_fraction_exclusive(self):
    with pytest.raises(ValueError, match=r"config\.attack\.ids"):
      _attack(fraction=0.1, ids=(1,)).validate("attack")

  def test_check_against(self):
    cfg = _attack(kind="backdoor", target=10)
    with pytest.raises(ValueError, match=r"config\.attack\.target"):
      cfg.check_against(num_clients=5, num_classes=10)
    cfg = _attack(kind="sign_flip", ids=(5,))
    with pytest.raises(ValueError, match=r"config\.attack\.ids"):
      cfg.check_against(num_clients=5, num_classes=10)

  def test_builders(self):
    cfg = _attack(kind="backdoor", fraction=0.5, target=1, trigger_size=2)
    assert cfg.resolved_trigger_value(255.0) == 255.0
    assert dataclasses.replace(cfg, trigger_value=0.5).resolved_trigger_value(
        255.0) == 0.5
    assert cfg.has_data_attack and not cfg.has_update_attack
    assert cfg.malicious_mask(10, seed=0).sum() == 5
    assert _attack().malicious_mask(10, 0).sum() == 0
    x, y = images()
    xo, yo = cfg.data_attack(10, 255.0)(x, y, jax.random.key(0), True)
    assert int((np.asarray(xo)[:, -1, -1, 0] == 255.0).sum()) == 4
    flat, mal, ok = cohort()
    out = _attack(kind="scaling", factor=2.0).update_attack()(
        flat, mal, ok, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out)[:2], 2 * flat[:2])


@pytest.mark.parametrize("module", [attacks, attacks.selection,
                                    attacks.data_attacks,
                                    attacks.update_attacks,
                                    attacks.omniscient])
def test_doctests(module):
  res = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert res.failed == 0 and res.attempted > 0
