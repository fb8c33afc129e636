"""Client momentum (afl.server.momentum) against its closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.config import ConfigError, build_config
from afl.server import momentum
from afl.server import rows as rows_lib
from configs import tiny


def _rows(flat, ids, k=4):
  n, d = flat.shape
  pad = k - n
  return rows_lib.Rows(
      flat=jnp.asarray(np.concatenate([flat, np.full((pad, d), 7.0)]),
                       jnp.float32),
      weight=jnp.ones(k, jnp.float32), scale=jnp.ones(k, jnp.float32),
      mask=jnp.asarray([True] * n + [False] * pad),
      ids=jnp.asarray(list(ids) + [rows_lib.PAD_ID + i for i in range(pad)],
                      jnp.int32),
      malicious=jnp.zeros(k, bool), aggregate=jnp.zeros(d, jnp.float32))


def test_momentum_over_a_sequence_of_arrivals_is_the_closed_form():
  beta, d = 0.75, 3
  stage = momentum.client_momentum(beta=beta, key=None, num_clients=5)
  rng = np.random.default_rng(0)
  buffers = [[0, 3], [3], [1, 0, 3], [4], [0]]
  deltas = [rng.normal(size=(len(b), d)) for b in buffers]
  state = stage.init(_rows(deltas[0], buffers[0]))
  apply = jax.jit(stage.apply)
  # Closed form: client i's k-th update (k = 0, 1, ...) of deltas g_0..g_k
  # gives beta^k g_0 + sum_{j=1..k} (1 - beta) beta^(k-j) g_j.
  history = {}
  for ids, flat in zip(buffers, deltas):
    out, state = apply(_rows(flat, ids), state)
    for row, (cid, g) in enumerate(zip(ids, flat)):
      history.setdefault(cid, []).append(g)
      gs = history[cid]
      k = len(gs) - 1
      want = beta ** k * gs[0] + sum((1 - beta) * beta ** (k - j) * gs[j]
                                     for j in range(1, k + 1))
      np.testing.assert_allclose(out.flat[row], want, rtol=1e-5, atol=1e-6)
    # Padding rows pass through, and never touch the state.
    np.testing.assert_array_equal(out.flat[len(ids):], 7.0)
  m, seen = state
  assert seen.tolist() == [True, True, False, True, True]
  np.testing.assert_array_equal(m[2], 0.0)


@pytest.mark.parametrize("overrides,key", [
    (dict(server=dict(merge_client_rows=False)), "server.merge_client_rows"),
    (dict(server=dict(mode="fedasync")), "aggregator.stages"),
])
def test_momentum_needs_merged_rows_and_a_buffer(overrides, key):
  c = tiny.get_config()
  c.aggregator.stages = ("client_momentum",)
  for section, values in overrides.items():
    c[section].update(**values)
  with pytest.raises(ConfigError, match=rf"^config\.{key}: "):
    build_config(c)


def test_momentum_must_come_first():
  c = tiny.get_config()
  c.aggregator.stages = ("bucketing", "client_momentum")
  with pytest.raises(ConfigError, match=r"^config\.aggregator\.stages: "
                     "client_momentum must be the first stage"):
    build_config(c)
