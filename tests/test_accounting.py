"""Tests for afl.privacy.accounting against dp_accounting used directly."""
import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from dp_accounting import dp_event
from dp_accounting import rdp
from scipy import stats

from afl.privacy import accounting

DELTA = 1e-5
# Coarser than dp_accounting's default 1e-4 to keep PLD tests fast; the same
# value is used on both sides of each comparison.
PLD_DISC = 1e-3


def _direct(sigma, q, steps, accountant):
  """epsilon from an event built here, without going through afl."""
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q,
                                          dp_accounting.GaussianDpEvent(sigma)),
      steps)
  if accountant == "rdp":
    acc = rdp.RdpAccountant()
  else:
    acc = pld.PLDAccountant(value_discretization_interval=PLD_DISC)
  acc.compose(event)
  return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("sigma,q,steps", [(1.1, 0.01, 1000), (2.0, 0.1, 50),
                                            (5.0, 1.0, 10)])
def test_client_and_server_epsilon_match_direct_event(accountant, sigma, q,
                                                      steps):
  want = _direct(sigma, q, steps, accountant)
  got = accounting.client_dpsgd_epsilon(sigma, q, steps, DELTA, accountant,
                                        PLD_DISC)
  assert got == pytest.approx(want, rel=1e-12)
  got = accounting.server_dp_epsilon(sigma, q, steps, DELTA, accountant,
                                     PLD_DISC)
  assert got == pytest.approx(want, rel=1e-12)


def test_pld_is_tighter_than_rdp():
  e_rdp = accounting.client_dpsgd_epsilon(1.0, 0.01, 500, DELTA, "rdp")
  e_pld = accounting.client_dpsgd_epsilon(1.0, 0.01, 500, DELTA, "pld",
                                          PLD_DISC)
  assert 0.5 * e_rdp < e_pld < e_rdp


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_falls_as_noise_rises(accountant):
  eps = [accounting.client_dpsgd_epsilon(s, 0.02, 200, DELTA, accountant,
                                         PLD_DISC)
         for s in (0.8, 1.0, 1.5, 3.0)]
  assert all(a > b for a, b in zip(eps, eps[1:])), eps


def test_epsilon_grows_with_steps_and_q():
  e = lambda q, n: accounting.client_dpsgd_epsilon(1.0, q, n, DELTA)
  assert e(0.01, 100) < e(0.01, 1000) < e(0.02, 1000)
  assert accounting.client_dpsgd_epsilon(1.0, 0.01, 0, DELTA) == 0.0


@pytest.mark.parametrize("accountant,target,q,steps", [
    ("rdp", 1.0, 0.01, 1000),
    ("rdp", 8.0, 0.05, 100),
    ("pld", 2.0, 0.1, 50),
])
def test_calibration_hits_target(accountant, target, q, steps):
  sigma = accounting.calibrate_noise_multiplier(target, q, steps, DELTA,
                                                accountant, PLD_DISC)
  eps = _direct(sigma, q, steps, accountant)
  assert eps <= target * (1 + 1e-9)
  assert eps >= 0.99 * target


def test_repeated_draws_event_is_the_mixture_of_gaussians():
  # The case: B = 32 draws with replacement from N = 186, sigma 1,
  # 50 steps. Built here from scipy's binomial pmf, not afl's code.
  k = np.arange(33)
  pmf = stats.binom.pmf(k, 32, 1 / 186)
  direct = pld.PLDAccountant(
      value_discretization_interval=accounting.MIXTURE_PLD_DISCRETIZATION)
  direct.compose(dp_accounting.SelfComposedDpEvent(
      dp_event.MixtureOfGaussiansDpEvent(1.0, list(map(float, k)),
                                         list(map(float, pmf / pmf.sum()))),
      50))
  got = accounting.epsilon(accounting.repeated_draws_event(1.0, 32, 186, 50),
                           DELTA, "pld", accounting.MIXTURE_PLD_DISCRETIZATION)
  assert got == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
  # At least the lower bound 12.15 (dp_accounting's default grid gives
  # 12.1465; the coarser grid errs upwards), far above the 9.80 that Poisson
  # accounting with q = B / N claimed for this sampling.
  assert got >= 12.146
  assert accounting.client_dpsgd_epsilon(1.0, 32 / 186, 50, DELTA) < 9.81


def test_calibrate_meets_target_for_any_event():
  make = lambda s: accounting.subsampled_gaussian_event(s, 1.0, 20)
  sigma = accounting.calibrate(4.0, make, DELTA)
  eps = _direct(sigma, 1.0, 20, "rdp")
  assert 0.99 * 4.0 <= eps <= 4.0 * (1 + 1e-9)


@pytest.mark.parametrize("kwargs", [
    dict(noise_multiplier=-1.0, sampling_prob=0.1, steps=1, delta=DELTA),
    dict(noise_multiplier=1.0, sampling_prob=1.5, steps=1, delta=DELTA),
    dict(noise_multiplier=1.0, sampling_prob=0.1, steps=1, delta=0.0),
    dict(noise_multiplier=1.0, sampling_prob=0.1, steps=1, delta=DELTA,
         accountant="gdp"),
])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    accounting.client_dpsgd_epsilon(**kwargs)
