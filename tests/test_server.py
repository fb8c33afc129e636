"""Server modes and staleness functions against closed forms."""
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from afl import aggregators
from afl.config import ServerConfig
from afl.server import Server, staleness_weight


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


def test_fedasync_mixing():
  cfg = ServerConfig(mode="fedasync", mixing_alpha=0.5,
                     staleness_fn="polynomial", staleness_a=1.0)
  server = Server(cfg, _params(1.0), aggregators.get("mean"), capacity=1)
  start = _params(0.0)
  delta = _params(4.0)  # client model x_c = 0 + 4 = 4
  server.fedasync_apply(start, delta, staleness=1)
  a = 0.5 * (1 + 1) ** -1.0
  chex.assert_trees_all_close(server.params, _params((1 - a) * 1.0 + a * 4.0))


@pytest.mark.parametrize("mode", ["fedbuff", "sync"])
def test_buffered_step_is_weighted_mean_of_scaled_deltas(mode):
  cfg = ServerConfig(mode=mode, buffer_size=4, optimizer="sgd", lr=1.0,
                     staleness_fn="polynomial", staleness_a=0.5,
                     weight_by_examples=True)
  server = Server(cfg, _params(1.0), aggregators.get("mean"), capacity=4)
  deltas = [_params(v) for v in (1.0, 2.0, 3.0)]  # 3 of 4 rows: padding
  stale = [0, 3, 8]
  n = [10, 20, 30]
  server.buffered_apply(deltas, stale, n)
  s = np.ones(3) if mode == "sync" else 1 / np.sqrt(1 + np.array(stale))
  expected = 1.0 + np.sum(np.array(n) * s * np.array([1.0, 2.0, 3.0])) / 60
  chex.assert_trees_all_close(server.params, _params(expected), rtol=1e-6)


def test_server_optimizer_momentum_applies():
  cfg = ServerConfig(mode="fedbuff", buffer_size=1, optimizer="sgd", lr=0.5,
                     optimizer_kwargs={"momentum": 0.9},
                     weight_by_examples=False, staleness_fn="constant")
  server = Server(cfg, _params(0.0), aggregators.get("mean"), capacity=1)
  server.buffered_apply([_params(1.0)], [0], [1])
  server.buffered_apply([_params(1.0)], [0], [1])
  # SGD momentum: v1 = g, v2 = 0.9 v1 + g; x -= lr * v (g = -delta).
  chex.assert_trees_all_close(server.params, _params(0.5 * (1 + 1.9)))
