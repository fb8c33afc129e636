"""Server DP per user: a client's rows of one aggregation are merged, then
clipped, so its contribution has norm <= C; the noise has std sigma * C."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afl.server import private
from afl.server import rows as rows_lib
from afl.server import stages

C = 0.5


def _rows(flat, ids, weight):
  k = len(ids)
  return rows_lib.Rows(
      flat=jnp.asarray(flat, jnp.float32),
      weight=jnp.asarray(weight, jnp.float32),
      scale=jnp.ones(k, jnp.float32), mask=jnp.ones(k, bool),
      ids=jnp.asarray(ids, jnp.int32), malicious=jnp.zeros(k, bool),
      aggregate=jnp.zeros(flat.shape[1], jnp.float32))


def _server_dp(rows, sigma, key=0):
  chain = stages.chain(stages.merge_client_rows(),
                       private.private_mean(jax.random.key(key), dp_clip=C,
                                            dp_noise=sigma))
  out, _ = jax.jit(chain.apply)(rows, chain.init(rows))
  return out


def test_a_client_twice_contributes_one_clipped_row():
  rng = np.random.default_rng(0)
  flat = rng.normal(size=(4, 6)) * 3  # norms far above C
  ids, weight = [7, 2, 7, 4], [1.0, 2.0, 3.0, 1.0]
  out = _server_dp(_rows(flat, ids, weight), 0.0)
  # numpy: client 7's rows merged (weighted mean), then every client's row
  # clipped to C; the mean over the 3 clients.
  merged = {7: (1 * flat[0] + 3 * flat[2]) / 4, 2: flat[1], 4: flat[3]}
  clip = lambda v: v * min(1.0, C / np.linalg.norm(v))
  want = sum(clip(v) for v in merged.values()) / 3
  np.testing.assert_allclose(out.aggregate, want, rtol=1e-5, atol=1e-6)
  # Client 7's contribution to the sum: with and without it.
  without = _server_dp(_rows(flat[[1, 3]], [2, 4], [2.0, 1.0]), 0.0)
  contribution = 3 * np.asarray(out.aggregate) - 2 * np.asarray(
      without.aggregate)
  assert np.linalg.norm(contribution) <= C * (1 + 1e-5)
  # Clipped one by one (no merge), the two rows would add more than C.
  rows_apart = clip(flat[0]) + clip(flat[2])
  assert np.linalg.norm(rows_apart) > C


@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_noise_std_is_sigma_times_c(sigma):
  d, ids = 200_000, [3, 3, 9]
  out = _server_dp(_rows(np.zeros((3, d)), ids, [1.0, 1.0, 1.0]), sigma,
                   key=5)
  noise_on_sum = np.asarray(out.aggregate) * 2  # 2 clients after the merge
  # The sample std of 2e5 normals is within 1% of the true one (5 sd).
  assert np.std(noise_on_sum) == pytest.approx(sigma * C, rel=0.01)
  assert abs(np.mean(noise_on_sum)) < 5 * sigma * C / np.sqrt(d)
