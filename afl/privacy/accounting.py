"""Privacy accounting with the `dp_accounting` package (RDP and PLD).

Host-side Python (not jitted). Every mechanism afl runs is a Gaussian
mechanism on a sum of clipped contributions, sampled and repeated; it is
described as a `dp_accounting` event and an RDP or PLD accountant turns the
event into epsilon at a given delta:

  * Poisson sampling (client DP-SGD with `client.sampling=poisson`, and
    server DP with `dp.participation=poisson`):
    `SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)),
    steps)`.
  * No amplification (client `shuffle`: each example touched once per
    epoch; server DP with `dp.participation=none`: a client is in an
    aggregation or not): the same event with q = 1, i.e. `steps` Gaussian
    mechanisms.
  * Sampling with replacement (client `with_replacement`): one draw of B
    repeats an example k ~ Bin(B, 1 / N) times, so a step is the mixture of
    Gaussian mechanisms of sensitivities k:
    `SelfComposedDpEvent(MixtureOfGaussiansDpEvent(sigma, [0..B],
    Bin(B, 1/N) pmf), steps)` (PLD only; dp_accounting has no RDP for it).

Which of these applies to a run, and for which neighbouring relation, is
decided in `afl.privacy.ledger`.

References:
  Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS.
  Mironov 2017, "Renyi Differential Privacy", CSF.
  McMahan et al. 2018, "Learning Differentially Private Recurrent Language
    Models", ICLR.
  Chua et al. 2024, "How Private are DP-SGD Implementations?", ICML
    (mixtures of Gaussians for sampling with replacement and shuffling).
"""
import dp_accounting
import numpy as np
from dp_accounting import dp_event
from dp_accounting import pld
from dp_accounting import rdp
from scipy import stats

_ACCOUNTANTS = ("rdp", "pld")

# dp_accounting's default discretization for PLD; coarser is faster but
# looser (epsilon only ever errs upwards).
DEFAULT_PLD_DISCRETIZATION = 1e-4


def _check_args(noise_multiplier, sampling_prob, steps):
  if noise_multiplier < 0:
    raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
  if not 0.0 <= sampling_prob <= 1.0:
    raise ValueError(f"sampling_prob must be in [0, 1], got {sampling_prob}")
  if steps < 0 or int(steps) != steps:
    raise ValueError(f"steps must be a non-negative integer, got {steps}")


def make_accountant(
    accountant: str = "rdp",
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> dp_accounting.PrivacyAccountant:
  """A fresh `dp_accounting` accountant by name ("rdp" or "pld")."""
  if accountant == "rdp":
    return rdp.RdpAccountant()
  if accountant == "pld":
    return pld.PLDAccountant(value_discretization_interval=pld_discretization)
  raise ValueError(f"accountant must be one of {_ACCOUNTANTS}, "
                   f"got {accountant!r}")


def subsampled_gaussian_event(
    noise_multiplier: float, sampling_prob: float, steps: int
) -> dp_accounting.DpEvent:
  """`steps` compositions of a Poisson-subsampled Gaussian mechanism.

  Args:
    noise_multiplier: sigma, the noise stddev divided by the L2 sensitivity.
    sampling_prob: q, the probability that a record takes part in one step.
    steps: Number of compositions.

  Returns:
    `SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)),
    steps)`, or `NoOpDpEvent()` when steps is 0 (dp_accounting rejects a
    count of 0; nothing happened, so epsilon is 0).
  """
  _check_args(noise_multiplier, sampling_prob, steps)
  if steps == 0:
    return dp_accounting.NoOpDpEvent()
  return dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          float(sampling_prob),
          dp_accounting.GaussianDpEvent(float(noise_multiplier))),
      int(steps))


# A coarser PLD grid for the mixture event, whose support is wide (1.4 s
# instead of 60 s for B = 32, N = 186, 50 steps, epsilon 12.1474 instead
# of 12.1465): PLD's estimate is pessimistic, so coarser only errs upwards.
MIXTURE_PLD_DISCRETIZATION = 1e-2


def repeated_draws_event(noise_multiplier: float, batch_size: int,
                         shard_size: int, steps: int
                         ) -> dp_accounting.DpEvent:
  """`steps` DP-SGD steps on batches of B draws with replacement from N.

  An example is drawn k ~ Bin(B, 1 / N) times, so its clipped gradient
  enters the sum k times: sensitivity k C. The event is the mixture of
  Gaussian mechanisms of sensitivities 0..B with those probabilities (noise
  stddev sigma in units of C), self-composed `steps` times.
  """
  _check_args(noise_multiplier, 0.0, steps)
  if steps == 0:
    return dp_accounting.NoOpDpEvent()
  k = np.arange(batch_size + 1)
  pmf = stats.binom.pmf(k, batch_size, 1.0 / shard_size)
  keep = pmf > 0
  return dp_accounting.SelfComposedDpEvent(
      dp_event.MixtureOfGaussiansDpEvent(
          float(noise_multiplier), [float(v) for v in k[keep]],
          [float(v) for v in pmf[keep] / pmf[keep].sum()]),
      int(steps))


def epsilon(event, delta: float, accountant: str = "rdp",
            pld_discretization: float = DEFAULT_PLD_DISCRETIZATION) -> float:
  """Epsilon of `event` at `delta` (inf for a non-private event)."""
  return _epsilon(event, delta, accountant, pld_discretization)


def _epsilon(event, delta, accountant, pld_discretization):
  if not 0.0 < delta < 1.0:
    raise ValueError(f"delta must be in (0, 1), got {delta}")
  acc = make_accountant(accountant, pld_discretization)
  acc.compose(event)
  return float(acc.get_epsilon(delta))


def client_dpsgd_epsilon(noise_multiplier: float, sampling_prob: float,
                         steps: int, delta: float, accountant: str = "rdp",
                         pld_discretization: float = DEFAULT_PLD_DISCRETIZATION
                         ) -> float:
  """Example-level epsilon of Poisson-sampled DP-SGD on one shard.

  Args:
    noise_multiplier: sigma (noise stddev / clip norm).
    sampling_prob: q, each example's probability of joining a batch (B / N).
    steps: Total local DP-SGD steps that touched this client's shard.
    delta: Target delta.
    accountant: "rdp" or "pld".
    pld_discretization: Value discretization interval of the PLD accountant.

  Returns:
    epsilon (inf if sigma is 0 and steps > 0).

  >>> round(client_dpsgd_epsilon(1.1, 0.01, 1000, 1e-5), 2) > 0
  True
  """
  event = subsampled_gaussian_event(noise_multiplier, sampling_prob, steps)
  return _epsilon(event, delta, accountant, pld_discretization)


def server_dp_epsilon(noise_multiplier: float, participation_prob: float,
                      rounds: int, delta: float, accountant: str = "rdp",
                      pld_discretization: float = DEFAULT_PLD_DISCRETIZATION
                      ) -> float:
  """User-level epsilon of DP-FedAvg after `rounds` aggregations with
  Poisson participation of probability q (q = 1: every round counted as a
  Gaussian mechanism on this user, no amplification).

  References:
    McMahan et al. 2018, "Learning Differentially Private Recurrent Language
      Models", ICLR.
  """
  event = subsampled_gaussian_event(noise_multiplier, participation_prob,
                                    rounds)
  return _epsilon(event, delta, accountant, pld_discretization)


def calibrate(target_epsilon: float, make_event, delta: float,
              accountant: str = "rdp",
              pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
              rtol: float = 2e-3, upper: float | None = None) -> float:
  """Smallest noise multiplier sigma with epsilon(make_event(sigma)) at most
  `target_epsilon`.

  Uses `dp_accounting.calibrate_dp_mechanism` (Brent's method over sigma),
  which returns a sigma whose epsilon never exceeds the target; its
  tolerance in sigma is tightened until that epsilon is also within `rtol`
  (relative) below the target.

  Args:
    target_epsilon: Desired epsilon (> 0).
    make_event: sigma -> `DpEvent`.
    delta: Target delta.
    accountant: "rdp" or "pld".
    pld_discretization: Value discretization interval of the PLD accountant.
    rtol: Accepted relative shortfall of epsilon below the target.
    upper: A sigma known to meet the target (PLD: keeps the search away
      from small sigmas, where PLD is slow).

  Returns:
    sigma.
  """
  if target_epsilon <= 0:
    raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
  eps_of = lambda sigma: _epsilon(make_event(sigma), delta, accountant,
                                  pld_discretization)
  fresh = lambda: make_accountant(accountant, pld_discretization)
  if upper is not None:
    hi, lo = upper, 0.7 * upper
    while eps_of(lo) <= target_epsilon:
      hi, lo = lo, 0.5 * lo
    bracket = dp_accounting.ExplicitBracketInterval(lo, hi)
  else:
    # sigma = 0 is the non-private mechanism (epsilon = inf) and gives
    # Brent nothing to use; start the search at a small positive sigma.
    bracket = dp_accounting.LowerEndpointAndGuess(0.05, 1.0)
  tol = 1e-3
  for _ in range(5):
    sigma = dp_accounting.calibrate_dp_mechanism(
        fresh, make_event, target_epsilon, delta, bracket, tol=tol)
    if eps_of(sigma) >= target_epsilon * (1.0 - rtol):
      break
    tol *= 0.1
  return float(sigma)


def calibrate_noise_multiplier(
    target_epsilon: float, sampling_prob: float, steps: int, delta: float,
    accountant: str = "rdp",
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    rtol: float = 2e-3) -> float:
  """`calibrate` for `steps` Poisson-subsampled Gaussian mechanisms.

  PLD: RDP is an upper bound on PLD's epsilon, so RDP's sigma is an upper
  end of PLD's bracket.

  >>> s = calibrate_noise_multiplier(2.0, 0.01, 500, 1e-5)
  >>> 0.99 * 2.0 <= client_dpsgd_epsilon(s, 0.01, 500, 1e-5) <= 2.0
  True
  """
  _check_args(0.0, sampling_prob, steps)
  make_event = lambda sigma: subsampled_gaussian_event(sigma, sampling_prob,
                                                       steps)
  upper = None
  if accountant == "pld":
    upper = calibrate_noise_multiplier(target_epsilon, sampling_prob, steps,
                                       delta, "rdp", rtol=rtol)
  return calibrate(target_epsilon, make_event, delta, accountant,
                   pld_discretization, rtol, upper)
