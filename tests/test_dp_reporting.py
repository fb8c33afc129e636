"""Epsilon as a run reports it, recomputed with dp_accounting alone from the
fields the run reports (and from counts the test makes itself)."""
import dp_accounting
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting import pld
from dp_accounting import rdp
from scipy import stats

from afl.config import ConfigError, build_config
from afl.server import server as server_lib
from afl.simulation import Simulation
from configs import tiny

FIELDS = ("epsilon", "dp_sampling", "dp_sampling_rate", "dp_steps",
          "dp_noise_multiplier", "dp_delta", "dp_accountant")
CLIENT_FIELDS = ("dp_batch_size", "dp_min_shard_size")


def _config(**sections):
  c = tiny.get_config()
  c.data.min_shard_size = 8  # >= client.batch_size: poisson needs B <= N
  for section, values in sections.items():
    c[section].update(**values)
  return build_config(c)


def _run(**sections):
  sim = Simulation(_config(**sections), None, log=lambda m: None)
  return sim, sim.run()


def _accountant(name, discretization=1e-4):
  return (rdp.RdpAccountant() if name == "rdp" else
          pld.PLDAccountant(value_discretization_interval=discretization))


def _poisson_epsilon(s):
  """Any Poisson/Gaussian scheme, from the reported fields only."""
  acc = _accountant(s["dp_accountant"])
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          s["dp_sampling_rate"],
          dp_accounting.GaussianDpEvent(s["dp_noise_multiplier"])),
      s["dp_steps"]))
  return acc.get_epsilon(s["dp_delta"])


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_client_epsilon_recomputed_from_reported_fields(sampling, accountant):
  sim, s = _run(client=dict(sampling=sampling),
                dp=dict(mode="client", noise_multiplier=1.1,
                        accountant=accountant))
  for key in FIELDS + CLIENT_FIELDS:
    assert key in s, key
  assert s["dp_sampling"] == sampling
  assert s["dp_min_shard_size"] == int(sim.c.num_examples.min())
  # Steps counted here: every arrival spent its client's local steps (3).
  per_client = np.zeros(16, np.int64)
  for cid in np.flatnonzero(sim.c.privacy.counts):
    per_client[cid] = sim.c.privacy.counts[cid]
  if sampling == "poisson":
    assert s["dp_sampling_rate"] == 8 / s["dp_min_shard_size"]
    assert per_client.sum() == 3 * s["client_updates"]
  else:  # a task of 3 steps of 8 touches each example of a shard >= 24
    assert s["dp_sampling_rate"] == 1.0  # at most once: no amplification
    touches = -(-3 // -(-sim.c.num_examples // 8))
    assert per_client.sum() <= touches.max() * s["client_updates"]
  assert s["dp_steps"] == per_client.max()
  assert s["epsilon"] == pytest.approx(_poisson_epsilon(s), rel=1e-9)
  # Every metrics line with DP carries the same fields.
  for record in sim.history.records:
    assert set(FIELDS + CLIENT_FIELDS) <= set(record)


def test_with_replacement_epsilon_is_the_mixture_bound():
  sim, s = _run(client=dict(sampling="with_replacement"),
                dp=dict(mode="client", noise_multiplier=1.5,
                        accountant="pld"))
  b, n = s["dp_batch_size"], s["dp_min_shard_size"]
  assert s["dp_sampling_rate"] == 1 / n
  k = np.arange(b + 1)
  pmf = stats.binom.pmf(k, b, 1 / n)
  acc = _accountant("pld", 1e-2)
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_event.MixtureOfGaussiansDpEvent(1.5, list(map(float, k)),
                                         list(map(float, pmf / pmf.sum()))),
      s["dp_steps"]))
  assert s["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
  # The Poisson figure afl used to report for this sampling is lower.
  poisson = _accountant("pld")
  poisson.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          min(1.0, b / n), dp_accounting.GaussianDpEvent(1.5)),
      s["dp_steps"]))
  assert s["epsilon"] > poisson.get_epsilon(1e-5)


def test_with_replacement_and_rdp_is_refused():
  with pytest.raises(ConfigError, match="config.dp.accountant: "):
    _config(client=dict(sampling="with_replacement"),
            dp=dict(mode="client", accountant="rdp"))


def test_batch_larger_than_smallest_shard_is_a_config_error():
  c = tiny.get_config()
  c.client.batch_size = 64
  c.dp.mode = "client"
  with pytest.raises(ConfigError, match="config.client.batch_size: 64 "
                     "exceeds the smallest shard"):
    Simulation(build_config(c), None, log=lambda m: None)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_server_epsilon_composes_each_clients_aggregations(monkeypatch,
                                                           accountant):
  buffers = []
  aggregate = server_lib.Server.aggregate

  def spy(self, arrivals, stalenesses=None):
    buffers.append([a.client_id for a in arrivals])
    return aggregate(self, arrivals, stalenesses)
  monkeypatch.setattr(server_lib.Server, "aggregate", spy)
  _, s = _run(server=dict(weight_by_examples=False),
              dp=dict(mode="server", noise_multiplier=2.0, clip_norm=0.5,
                      accountant=accountant))
  assert len(buffers) == s["num_server_versions"]
  # Counted here: aggregations each client took part in (a client twice in
  # one buffer is merged into one row: one mechanism).
  per_client = np.zeros(16, np.int64)
  for ids in buffers:
    per_client[list(set(ids))] += 1
  assert s["dp_sampling"] == "none" and s["dp_sampling_rate"] == 1.0
  assert s["dp_steps"] == per_client.max() < len(buffers)
  acc = _accountant(accountant)
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.GaussianDpEvent(2.0), int(per_client.max())))
  # (PLD of PoissonSampled(1, .) vs Gaussian: the same up to 1e-8)
  assert s["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_server_poisson_participation_is_labelled_an_assumption():
  logs = []
  sim = Simulation(_config(server=dict(weight_by_examples=False),
                           dp=dict(mode="server", participation="poisson")),
                   None, log=logs.append)
  s = sim.run()
  assert s["dp_sampling_rate"] == 3 / 16
  assert s["dp_steps"] == s["num_server_versions"]
  assert "assumption" in s["dp_assumption"].lower()
  assert any("ASSUMPTION" in m for m in logs)
  assert s["epsilon"] == pytest.approx(_poisson_epsilon(s), rel=1e-9)
