"""Privacy accounting with the `dp_accounting` package (RDP and PLD).

Host-side Python (not jitted): every mechanism afl runs is a subsampled
Gaussian, repeated. We describe it as a `dp_accounting` event,

  SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), n),

and let an RDP or PLD accountant turn it into epsilon at a given delta.

Sampling assumptions (stated once here, repeated where they are used):
  * Client DP-SGD: afl draws fixed-size minibatches of B examples from a
    client's shard of N examples. Accounting treats each step as Poisson
    sampling with q = B / N, the usual approximation in DP-SGD practice; it
    is not a formal bound for fixed-size sampling.
  * Server DP (user-level DP-FedAvg): in asynchronous FL participation is
    decided by the scheduler, not by coin flips. Accounting treats each
    aggregation as Poisson sampling of users with q = the per-aggregation
    participation probability (e.g. buffer_size / num_clients), again an
    approximation.

References:
  Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS.
  Mironov 2017, "Renyi Differential Privacy", CSF.
  McMahan et al. 2018, "Learning Differentially Private Recurrent Language
    Models", ICLR.
"""
from typing import Optional

import dp_accounting
from dp_accounting import pld
from dp_accounting import rdp

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
  """Example-level epsilon of DP-SGD on one client's shard.

  The event is `SelfComposedDpEvent(PoissonSampledDpEvent(q,
  GaussianDpEvent(sigma)), steps)`. afl samples each minibatch as a fixed
  number B of examples from a shard of N (not Poisson sampling); treating
  each step as Poisson sampled with q = B / N is the usual approximation
  made in DP-SGD practice, and is what this function assumes.

  Args:
    noise_multiplier: sigma (noise stddev / clip norm).
    sampling_prob: q = batch_size / shard_size.
    steps: Total local DP-SGD steps that touched this client's shard.
    delta: Target delta.
    accountant: "rdp" or "pld".
    pld_discretization: Value discretization interval of the PLD accountant.

  Returns:
    epsilon (inf if sigma is 0 and steps > 0).

  References:
    Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS.

  >>> round(client_dpsgd_epsilon(1.1, 0.01, 1000, 1e-5), 2) > 0
  True
  """
  event = subsampled_gaussian_event(noise_multiplier, sampling_prob, steps)
  return _epsilon(event, delta, accountant, pld_discretization)


def server_dp_epsilon(noise_multiplier: float, participation_prob: float,
                      rounds: int, delta: float, accountant: str = "rdp",
                      pld_discretization: float = DEFAULT_PLD_DISCRETIZATION
                      ) -> float:
  """User-level epsilon of DP-FedAvg after `rounds` aggregations.

  Each aggregation is a Gaussian mechanism on the sum of clipped client
  updates (sensitivity S, noise sigma * S). Participation in asynchronous FL
  is set by the scheduler; it is approximated here by Poisson sampling of
  users with q = `participation_prob` per aggregation (e.g. buffer_size /
  num_clients for FedBuff, cohort / num_clients for synchronous rounds).

  Args:
    noise_multiplier: sigma (server noise stddev / user clip norm).
    participation_prob: q, the probability that a given user contributes to
      one aggregation.
    rounds: Number of noised aggregations.
    delta: Target delta.
    accountant: "rdp" or "pld".
    pld_discretization: Value discretization interval of the PLD accountant.

  Returns:
    epsilon.

  References:
    McMahan et al. 2018, "Learning Differentially Private Recurrent Language
      Models", ICLR.
  """
  event = subsampled_gaussian_event(noise_multiplier, participation_prob,
                                    rounds)
  return _epsilon(event, delta, accountant, pld_discretization)


def calibrate_noise_multiplier(
    target_epsilon: float, sampling_prob: float, steps: int, delta: float,
    accountant: str = "rdp",
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    rtol: float = 2e-3) -> float:
  """Smallest noise multiplier whose epsilon is at most `target_epsilon`.

  Uses `dp_accounting.calibrate_dp_mechanism` (Brent's method over sigma),
  which returns a sigma whose epsilon never exceeds the target; its
  tolerance in sigma is tightened until that epsilon is also within `rtol`
  (relative) below the target.

  Args:
    target_epsilon: Desired epsilon (> 0).
    sampling_prob: q per step / aggregation.
    steps: Number of steps / aggregations.
    delta: Target delta.
    accountant: "rdp" or "pld".
    pld_discretization: Value discretization interval of the PLD accountant.
    rtol: Accepted relative shortfall of epsilon below the target.

  Returns:
    sigma.

  >>> s = calibrate_noise_multiplier(2.0, 0.01, 500, 1e-5)
  >>> 0.99 * 2.0 <= client_dpsgd_epsilon(s, 0.01, 500, 1e-5) <= 2.0
  True
  """
  if target_epsilon <= 0:
    raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
  _check_args(0.0, sampling_prob, steps)
  make_event = lambda sigma: subsampled_gaussian_event(sigma, sampling_prob,
                                                       steps)
  eps_of = lambda sigma: _epsilon(make_event(sigma), delta, accountant,
                                  pld_discretization)
  fresh = lambda: make_accountant(accountant, pld_discretization)
  if accountant == "pld":
    # PLD is slow at small sigma (wide privacy loss distributions), so do not
    # let the bracket search wander there: RDP is an upper bound on PLD's
    # epsilon, hence its calibrated sigma is an upper end of PLD's bracket,
    # and halving from there finds a lower end in a step or two.
    hi = calibrate_noise_multiplier(target_epsilon, sampling_prob, steps,
                                    delta, "rdp", rtol=rtol)
    lo = 0.7 * hi
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


class Accountant:
  """Incremental privacy ledger: record steps, ask for epsilon at any time.

  Steps are kept as counts per (noise_multiplier, sampling_prob) pair, so a
  run of a million steps is one `SelfComposedDpEvent` with count 1e6, not a
  million events; `epsilon` recomposes that small event from scratch (RDP:
  cost independent of the count; PLD: self-composition by FFT) and caches
  the answer until the next `step`. The result equals the one-shot
  `client_dpsgd_epsilon` / `server_dp_epsilon` for the same total.

  Host-side, plain Python state; `state_dict` / `from_state_dict` round-trip
  it through a checkpoint.

  Args:
    noise_multiplier: Default sigma of a step.
    sampling_prob: Default q of a step.
    accountant: "rdp" or "pld".
    pld_discretization: Value discretization interval of the PLD accountant.

  >>> acc = Accountant(1.0, 0.01)
  >>> acc.step(100); acc.step(100)
  >>> acc.steps
  200
  >>> acc.epsilon(1e-5) == client_dpsgd_epsilon(1.0, 0.01, 200, 1e-5)
  True
  """

  def __init__(self, noise_multiplier: float, sampling_prob: float,
               accountant: str = "rdp",
               pld_discretization: float = DEFAULT_PLD_DISCRETIZATION):
    _check_args(noise_multiplier, sampling_prob, 0)
    make_accountant(accountant, pld_discretization)  # validates the name
    self.noise_multiplier = float(noise_multiplier)
    self.sampling_prob = float(sampling_prob)
    self.accountant = accountant
    self.pld_discretization = float(pld_discretization)
    self._counts: dict[tuple[float, float], int] = {}
    self._cache: dict[float, float] = {}

  @property
  def steps(self) -> int:
    """Total recorded steps, over all (sigma, q) pairs."""
    return sum(self._counts.values())

  def step(self, count: int = 1, noise_multiplier: Optional[float] = None,
           sampling_prob: Optional[float] = None) -> None:
    """Records `count` steps (defaults: the constructor's sigma and q)."""
    sigma = (self.noise_multiplier if noise_multiplier is None
             else float(noise_multiplier))
    q = self.sampling_prob if sampling_prob is None else float(sampling_prob)
    _check_args(sigma, q, count)
    if count == 0:
      return
    self._counts[(sigma, q)] = self._counts.get((sigma, q), 0) + int(count)
    self._cache.clear()

  def event(self) -> dp_accounting.DpEvent:
    """The composed `DpEvent` of everything recorded so far."""
    events = [subsampled_gaussian_event(s, q, n)
              for (s, q), n in sorted(self._counts.items())]
    if not events:
      return dp_accounting.NoOpDpEvent()
    if len(events) == 1:
      return events[0]
    return dp_accounting.ComposedDpEvent(events)

  def epsilon(self, delta: float) -> float:
    """Epsilon at `delta` for the steps recorded so far (cached)."""
    if delta not in self._cache:
      if not self._counts:
        if not 0.0 < delta < 1.0:
          raise ValueError(f"delta must be in (0, 1), got {delta}")
        self._cache[delta] = 0.0
      else:
        self._cache[delta] = _epsilon(self.event(), delta, self.accountant,
                                      self.pld_discretization)
    return self._cache[delta]

  def state_dict(self) -> dict:
    """Plain data for checkpoints."""
    return {
        "noise_multiplier": self.noise_multiplier,
        "sampling_prob": self.sampling_prob,
        "accountant": self.accountant,
        "pld_discretization": self.pld_discretization,
        "counts": [[s, q, n] for (s, q), n in sorted(self._counts.items())],
    }

  @classmethod
  def from_state_dict(cls, state: dict) -> "Accountant":
    acc = cls(state["noise_multiplier"], state["sampling_prob"],
              state["accountant"], state["pld_discretization"])
    for s, q, n in state["counts"]:
      acc.step(int(n), s, q)
    return acc
