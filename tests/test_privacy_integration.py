"""DP and secure aggregation wired into the simulation."""
import chex
import pytest

from afl.config import ConfigError, build_config
from afl.privacy import accounting
from afl.simulation import Simulation
from configs import tiny


def _run(**sections):
  c = tiny.get_config()
  for section, values in sections.items():
    if isinstance(values, dict):
      c[section].update(**values)
    else:
      c[section] = values
  sim = Simulation(build_config(c), None, log=lambda m: None)
  return sim, sim.run()


def test_client_dp_without_noise_and_clip_is_plain_sgd():
  # With replacement, so both runs draw the same batches (the DP run's
  # mixture accounting needs the pld accountant).
  same = dict(sampling="with_replacement")
  plain, _ = _run(client=same)
  dp, s = _run(client=same, dp=dict(mode="client", noise_multiplier=0.0,
                                    clip_norm=1e6, accountant="pld"))
  chex.assert_trees_all_close(plain.server.params, dp.server.params,
                              rtol=1e-4, atol=1e-6)
  assert s["epsilon"] == float("inf")


def test_server_dp_without_noise_equals_clipped_mean():
  base = dict(weight_by_examples=False)
  plain, _ = _run(server=base)
  dp, s = _run(server=base,
               dp=dict(mode="server", noise_multiplier=0.0, clip_norm=1e6))
  chex.assert_trees_all_close(plain.server.params, dp.server.params,
                              rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("participation", ["none", "poisson"])
def test_target_epsilon_calibrates_server_noise(participation):
  _, s = _run(server=dict(weight_by_examples=False),
              dp=dict(mode="server", target_epsilon=5.0, clip_norm=1.0,
                      participation=participation))
  assert s["epsilon"] <= 5.0 * 1.0001
  if participation == "poisson":
    # Exactly stop.max_versions aggregations were made: on target.
    assert s["epsilon"] == pytest.approx(5.0, rel=0.01)
  else:
    # Calibrated as if a client were in every aggregation; the worst one
    # was in fewer, and its epsilon is the Gaussian composition of those.
    assert s["dp_steps"] < s["num_server_versions"]
    assert s["epsilon"] == pytest.approx(accounting.server_dp_epsilon(
        s["dp_noise_multiplier"], 1.0, s["dp_steps"], 1e-5))


def test_secure_aggregation_equals_plain_mean():
  base = dict(weight_by_examples=False)
  plain, _ = _run(server=base)
  sec, _ = _run(server=base, secagg=dict(enabled=True))
  chex.assert_trees_all_close(plain.server.params, sec.server.params,
                              atol=1e-3)


def test_secure_aggregation_with_dropouts_runs():
  sim, s = _run(server=dict(weight_by_examples=False),
                secagg=dict(enabled=True, drop_after_masking=0.3))
  assert s["num_server_versions"] == 12


def test_secure_aggregation_with_dropouts_trains():
  sim, s = _run(server=dict(weight_by_examples=False),
                secagg=dict(enabled=True, drop_after_masking=0.1))
  # 4 classes: chance is 0.25; the run reaches ~1.0, the plain mean too.
  assert s["final_test_accuracy"] >= 0.25 + 0.5
  records = sim.history.records
  assert all(r["secagg_clipped"] == 0 for r in records)
  assert sim.server.secagg_clipped() == 0
  # Without secure aggregation there is no such metric.
  plain, _ = _run(server=dict(weight_by_examples=False))
  assert "secagg_clipped" not in plain.history.records[-1]


@pytest.mark.parametrize("sections,needle", [
    (dict(dp=dict(mode="server"), aggregator=dict(name="median")),
     "config.dp.mode"),
    (dict(dp=dict(mode="server"), server=dict(mode="fedasync",
                                               weight_by_examples=False)),
     "config.dp.mode"),
    (dict(dp=dict(mode="server")), "config.server.weight_by_examples"),
    (dict(secagg=dict(enabled=True), aggregator=dict(name="median"),
          server=dict(weight_by_examples=False)), "config.secagg.enabled"),
    (dict(secagg=dict(enabled=True), server=dict(mode="fedasync",
                                                 weight_by_examples=False)),
     "config.secagg.enabled"),
])
def test_incompatible_combinations(sections, needle):
  c = tiny.get_config()
  for section, values in sections.items():
    c[section].update(**values)
  with pytest.raises(ConfigError) as e:
    build_config(c)
  assert str(e.value).startswith(needle + ":")
