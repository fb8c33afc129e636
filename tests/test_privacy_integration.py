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
  plain, _ = _run()
  dp, s = _run(dp=dict(mode="client", noise_multiplier=0.0, clip_norm=1e6))
  chex.assert_trees_all_close(plain.server.params, dp.server.params,
                              rtol=1e-4, atol=1e-6)
  assert s["epsilon"] == float("inf")


def test_client_dp_epsilon_matches_accounting():
  sim, s = _run(dp=dict(mode="client", noise_multiplier=1.1, clip_norm=1.0))
  steps = int(sim.c.privacy.client_steps.max())
  q = min(1.0, 8 / int(sim.c.num_examples.min()))
  assert s["epsilon"] == pytest.approx(accounting.client_dpsgd_epsilon(
      1.1, q, steps, 1e-5))
  # Every arrival spent its client's local steps.
  assert sim.c.privacy.client_steps.sum() == 3 * s["client_updates"]


def test_server_dp_without_noise_equals_clipped_mean():
  base = dict(weight_by_examples=False)
  plain, _ = _run(server=base)
  dp, s = _run(server=base,
               dp=dict(mode="server", noise_multiplier=0.0, clip_norm=1e6))
  chex.assert_trees_all_close(plain.server.params, dp.server.params,
                              rtol=1e-5, atol=1e-6)
  noisy, s = _run(server=base,
                  dp=dict(mode="server", noise_multiplier=1.0, clip_norm=0.5))
  assert s["epsilon"] == pytest.approx(accounting.server_dp_epsilon(
      1.0, 3 / 16, s["num_server_versions"], 1e-5))


def test_target_epsilon_calibrates_server_noise():
  _, s = _run(server=dict(weight_by_examples=False),
              dp=dict(mode="server", target_epsilon=5.0, clip_norm=1.0))
  # The run made exactly stop.max_versions aggregations: epsilon on target.
  assert s["epsilon"] == pytest.approx(5.0, rel=0.01)
  assert s["epsilon"] <= 5.0 * 1.0001


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
