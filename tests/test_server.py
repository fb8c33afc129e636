"""Server modes, stages and the per-client merge against closed forms."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from afl import aggregators
from afl.aggregators import base as agg_base
from afl.config import base_config, build_config
from afl.server import Arrival, build as server_build, stages, staleness_weight
from afl.simulation import Simulation
from afl.validate import in_range
from configs import tiny


def test_staleness_functions_closed_form():
  tau = np.arange(10)
  np.testing.assert_allclose(staleness_weight(tau, "constant"), 1.0)
  np.testing.assert_allclose(staleness_weight(tau, "polynomial", a=0.5),
                             1 / np.sqrt(1 + tau))
  h = staleness_weight(tau, "hinge", a=2.0, b=3.0)
  np.testing.assert_allclose(h[:4], 1.0)
  np.testing.assert_allclose(h[4:], 1 / (2.0 * (tau[4:] - 3.0) + 1))
  assert np.all(np.diff(staleness_weight(tau, "polynomial")) < 0)


def _params(v):
  return {"w": jnp.full((3,), v, jnp.float32), "b": jnp.array([v], jnp.float32)}


def _server(params, **server):
  c = base_config()
  c.server.update(server)
  return server_build.build(build_config(c), params, jax.random.PRNGKey(0))


def _arrivals(deltas, stale, n, ids=None):
  ids = range(len(deltas)) if ids is None else ids
  return [Arrival(d, s, i, k, False) for d, s, k, i in zip(deltas, stale, n,
                                                           ids)]


def test_fedasync_mixing():
  server, mode = _server(_params(1.0), mode="fedasync", mixing_alpha=0.5,
                         staleness_fn="polynomial", staleness_a=1.0)
  start = _params(0.0)
  delta = _params(4.0)  # client model x_c = 0 + 4 = 4
  assert mode.on_arrival(Arrival(delta, 1, 0, 1, False), start)
  a = 0.5 * (1 + 1) ** -1.0
  chex.assert_trees_all_close(server.params, _params((1 - a) * 1.0 + a * 4.0))


@pytest.mark.parametrize("mode", ["fedbuff", "sync"])
def test_buffered_step_is_weighted_mean_of_scaled_deltas(mode):
  server, _ = _server(_params(1.0), mode=mode, buffer_size=4, optimizer="sgd",
                      lr=1.0, staleness_fn="polynomial", staleness_a=0.5,
                      weight_by_examples=True)
  deltas = [_params(v) for v in (1.0, 2.0, 3.0)]  # 3 of 4 rows: padding
  stale = [0, 3, 8]
  n = [10, 20, 30]
  server.aggregate(_arrivals(deltas, stale, n),
                   np.zeros(3) if mode == "sync" else None)
  s = np.ones(3) if mode == "sync" else 1 / np.sqrt(1 + np.array(stale))
  expected = 1.0 + np.sum(np.array(n) * s * np.array([1.0, 2.0, 3.0])) / 60
  chex.assert_trees_all_close(server.params, _params(expected), rtol=1e-6)


def test_server_optimizer_momentum_applies():
  server, _ = _server(_params(0.0), mode="fedbuff", buffer_size=1,
                      optimizer="sgd", lr=0.5,
                      optimizer_kwargs={"momentum": 0.9},
                      weight_by_examples=False, staleness_fn="constant")
  server.aggregate(_arrivals([_params(1.0)], [0], [1]))
  server.aggregate(_arrivals([_params(1.0)], [0], [1]))
  # SGD momentum: v1 = g, v2 = 0.9 v1 + g; x -= lr * v (g = -delta).
  chex.assert_trees_all_close(server.params, _params(0.5 * (1 + 1.9)))


def _hand_rows(flat, weight, scale, ids, mask):
  from afl.server.rows import Rows  # the stage input, built by hand
  flat = jnp.asarray(flat, jnp.float32)
  return Rows(flat=flat, weight=jnp.asarray(weight, jnp.float32),
              scale=jnp.asarray(scale, jnp.float32), mask=jnp.asarray(mask),
              ids=jnp.asarray(ids, jnp.int32),
              malicious=jnp.zeros(len(ids), bool),
              aggregate=jnp.zeros(flat.shape[1], jnp.float32))


def test_merge_client_rows_against_numpy():
  """Client 7 twice, client 3 once, a padding row: the merged row is the
  weighted mean, with the summed weight and the weighted-mean staleness
  weight; the second row of client 7 leaves the mask."""
  rng = np.random.default_rng(0)
  flat = rng.normal(size=(4, 5)).astype(np.float32)
  w = np.array([0.5, 1.2, 2.0, 1.0], np.float32)
  s = np.array([1.0, 0.8, 0.5, 1.0], np.float32)
  ids = [7, 3, 7, 99]
  mask = np.array([True, True, True, False])
  stage = stages.merge_client_rows()
  out, _ = jax.jit(stage.apply)(_hand_rows(flat, w, s, ids, mask),
                                stage.init(None))
  expect = (w[0] * flat[0] + w[2] * flat[2]) / (w[0] + w[2])
  np.testing.assert_allclose(out.flat[0], expect, rtol=1e-6)
  assert float(out.weight[0]) == pytest.approx(w[0] + w[2])
  assert float(out.scale[0]) == pytest.approx(
      (w[0] * s[0] + w[2] * s[2]) / (w[0] + w[2]))
  np.testing.assert_array_equal(out.flat[1], flat[1])  # alone: bit for bit
  assert out.weight[1] == w[1] and out.scale[1] == s[1]
  assert out.mask.tolist() == [True, True, False, False]
  np.testing.assert_array_equal(out.flat[2], 0.0)


def test_merge_makes_one_client_count_once_in_a_trimmed_mean():
  """One attacker thrice in a buffer of 8 with beta 0.3: per row, the
  trimmed mean keeps one of its rows; merged, it is trimmed away."""
  honest = [_params(v) for v in (1.0, 1.1, 0.9, 1.05, 0.95)]
  bad = [_params(50.0)] * 3
  deltas = honest + bad
  ids = [0, 1, 2, 3, 4, 9, 9, 9]
  finals = {}
  for merge in (False, True):
    server, _ = _server(_params(0.0), mode="fedbuff", buffer_size=8,
                        staleness_fn="constant", weight_by_examples=False,
                        merge_client_rows=merge)
    server.aggregate(_arrivals(deltas, [0] * 8, [1] * 8, ids))
    finals[merge] = float(server.params["b"][0])
  # Mean aggregator: the merge leaves a mean unchanged.
  assert finals[True] == pytest.approx(finals[False], rel=1e-6)
  for merge in (False, True):
    c = base_config()
    c.server.update(mode="fedbuff", buffer_size=8, staleness_fn="constant",
                    weight_by_examples=False, merge_client_rows=merge)
    c.aggregator.update(name="trimmed_mean", beta=0.3)
    server, _ = server_build.build(build_config(c), _params(0.0),
                                   jax.random.PRNGKey(0))
    server.aggregate(_arrivals(deltas, [0] * 8, [1] * 8, ids))
    finals[merge] = float(server.params["b"][0])
  assert finals[False] > 5.0  # 8 rows, 2 trimmed per side: one 50 stays
  merged = [1.0, 1.1, 0.9, 1.05, 0.95, 50.0]  # 6 rows, 1 trimmed per side
  assert finals[True] == pytest.approx(scipy.stats.trim_mean(merged, 0.3),
                                       rel=1e-6)


# A new aggregator and a new pre-aggregation stage, defined and registered
# here, with no edit under afl/.


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ShrinkParams:
  shrink_factor: float = 0.5

  def validate(self, p):
    in_range(f"{p}.shrink_factor", self.shrink_factor, 0, 1)


def _shrunk_mean(shrink_factor):
  """The weighted mean times `shrink_factor`."""
  def kernel(flat, weights, valid):
    w = jnp.where(valid, weights, 0.0)
    return shrink_factor * (w @ flat) / jnp.maximum(jnp.sum(w), 1e-12)
  return agg_base.from_kernel(kernel)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _OffsetParams:
  offset: float = 0.0

  def validate(self, p):
    in_range(f"{p}.offset", self.offset, 0)


def _offset_stage(offset, key):
  """Adds `offset` to every valid row; counts its calls in its state (and
  is traced once per buffer shape: chex.assert_max_traces)."""
  del key

  @chex.assert_max_traces(n=1)
  def apply(rows, calls):
    flat = jnp.where(rows.mask[:, None], rows.flat + offset, rows.flat)
    return rows.replace(flat=flat), calls + 1
  return stages.Stage(lambda example_rows: jnp.zeros((), jnp.int32), apply)


@pytest.fixture
def custom_components():
  aggregators.register("shrunk_mean", params=_ShrinkParams)(_shrunk_mean)
  stages.register("offset", params=_OffsetParams)(_offset_stage)
  chex.clear_trace_counter()
  yield
  del aggregators.REGISTRY["shrunk_mean"]
  del stages.REGISTRY["offset"]


def test_custom_aggregator_and_stage_from_config(custom_components):
  del custom_components
  c = tiny.get_config()
  c.server.update(mode="fedbuff", buffer_size=3, staleness_fn="constant",
                  weight_by_examples=False)
  c.aggregator.update(name="shrunk_mean", shrink_factor=0.25,
                      stages=("offset",))
  c.stage.offset.offset = 0.01
  c.stop.max_versions = 5
  c.scheduler.dropout_prob = 0.3  # buffers of varying content
  cfg = build_config(c)
  assert cfg.aggregator.params.shrink_factor == 0.25
  sim = Simulation(cfg, None, log=lambda m: None)
  summary = sim.run()
  assert summary["num_server_versions"] == 5
  # The stage ran once per version and was traced once (assert_max_traces).
  assert int(sim.server.state.stages[1][0]) == 5

  # One aggregation by hand: x <- x + 0.25 * mean(delta + 0.01).
  server, _ = server_build.build(cfg, _params(0.0), jax.random.PRNGKey(0))
  server.aggregate(_arrivals([_params(v) for v in (1.0, 2.0, 6.0)],
                             [0, 0, 0], [1, 1, 1]))
  chex.assert_trees_all_close(server.params, _params(0.25 * (3.0 + 0.01)),
                              rtol=1e-6)
  c.aggregator.shrink_factor = 2.0
  with pytest.raises(ValueError,
                     match=r"config\.aggregator\.shrink_factor: must be <= 1"):
    build_config(c)


def test_server_step_compiles_once_per_buffer_shape():
  server, _ = _server(_params(0.0), mode="fedbuff", buffer_size=4,
                      staleness_fn="polynomial")
  from afl.server import step as step_lib
  before = step_lib.aggregate_step._cache_size()
  for n in (1, 2, 4, 3):
    server.aggregate(_arrivals([_params(float(i)) for i in range(n)],
                               list(range(n)), [1] * n))
  assert step_lib.aggregate_step._cache_size() == before + 1


def test_fedasync_window_scores_the_newest_client_after_a_merge():
  """Client 0 arrives twice within the window: the merge puts its row at
  its first position, and trust still scores that client on its arrival."""
  c = base_config()
  c.server.update(mode="fedasync", staleness_fn="constant")
  c.aggregator.window = 4
  c.trust.enabled = True
  server, mode = server_build.build(build_config(c), _params(0.0),
                                    jax.random.PRNGKey(0))
  assert server.spec.window == 4
  start = _params(0.0)
  arrivals = [({"w": jnp.array([1.0, 0, 0]), "b": jnp.array([0.0])}, 0),
              ({"w": jnp.array([0.0, 1, 0]), "b": jnp.array([0.0])}, 1)]
  seen = []
  for delta, cid in arrivals + [arrivals[0]]:
    mode.on_arrival(Arrival(delta, 0, cid, 1, False), start)
    seen.append(np.asarray(server.trust.arrivals[:2]).tolist())
  # A lone first row has no reference; the second scores client 1; the
  # third scores client 0 (merged with its first row), not client 1 again.
  assert seen == [[0, 0], [0, 1], [1, 1]]
