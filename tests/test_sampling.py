"""Client batch sampling (afl.sampling) against theory, at fixed seeds."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from afl import client as client_lib
from afl import sampling
from afl.privacy import dp_sgd

N, B, M = 186, 32, 300  # shard size, batch, largest shard of the run
DRAWS = 4000


def _draws(sampler, size, steps=DRAWS, seed=0):
  keys = jax.random.split(jax.random.key(seed), steps)
  fn = jax.jit(jax.vmap(lambda k, s: sampler.positions(
      k, size, s, jax.random.key(seed + 1)), in_axes=(0, 0)))
  pos, mask = fn(keys, jnp.arange(steps))
  return np.asarray(pos), np.asarray(mask)


def test_padded_size_bounds_truncation():
  p = sampling.poisson_padded_size(B, M)
  assert sampling.truncation_prob(p, [N, M], B) < sampling.TRUNCATION_PROB
  assert sampling.truncation_prob(p - 1, [M], B) >= sampling.TRUNCATION_PROB
  assert stats.binom.sf(p, M, B / M) < 1e-15 <= stats.binom.sf(p - 1, M,
                                                                 B / M)


def test_poisson_sizes_follow_the_binomial_and_inclusion_is_q():
  sampler = sampling.Sampler.make("poisson", B, [N, M])
  pos, mask = _draws(sampler, N)
  sizes = mask.sum(1)
  # Valid slots first, distinct examples of the shard.
  assert (mask == (np.arange(mask.shape[1]) < sizes[:, None])).all()
  for p, m in zip(pos[:200], mask[:200]):
    assert len(set(p[m])) == m.sum() and (p[m] < N).all()
  # Batch sizes ~ Bin(N, B / N): chi-square over bins of expected count
  # >= 20, p-value above 1e-3 (a fixed seed; the test fails for a wrong q).
  q = B / N
  edges = [0] + list(range(22, 43, 2)) + [N + 1]
  observed = np.histogram(sizes, edges)[0]
  expected = DRAWS * np.diff(stats.binom.cdf(np.array(edges) - 1, N, q))
  assert expected.min() >= 20
  assert stats.chisquare(observed, expected).pvalue > 1e-3
  # Each example's inclusion count ~ Bin(DRAWS, q): chi-square of the 186
  # counts against their common expectation, p-value above 1e-3.
  counts = np.bincount(pos[mask], minlength=N)
  assert counts.sum() == sizes.sum()
  assert stats.chisquare(counts).pvalue > 1e-3
  assert abs(counts.mean() / DRAWS - q) < 4 * np.sqrt(q * (1 - q) / (
      DRAWS * N))


def test_poisson_inclusion_never_exceeds_b_over_n():
  # The bit threshold is floor(q' 2^32) with q' <= B / N in float32.
  sampler = sampling.Sampler.make("poisson", 3, [7])
  _, mask = _draws(sampler, 7, steps=20000)
  rate = mask.sum() / (20000 * 7)
  assert abs(rate - 3 / 7) < 4 * np.sqrt((3 / 7) * (4 / 7) / (20000 * 7))


def test_shuffle_touches_every_example_once_per_epoch():
  size, b = 37, 8  # 5 batches per epoch, the last with 5 examples
  sampler = sampling.Sampler.make("shuffle", b, [size, 50])
  pos, mask = _draws(sampler, size, steps=15)
  per_epoch = 5
  assert (mask.sum(1) == [8, 8, 8, 8, 5] * 3).all()
  epochs = []
  for e in range(3):
    p, m = pos[e * per_epoch:(e + 1) * per_epoch], mask[e * per_epoch:(
        e + 1) * per_epoch]
    assert sorted(p[m].tolist()) == list(range(size))
    epochs.append(p[m].tolist())
  assert epochs[0] != epochs[1] != epochs[2]  # a new permutation per epoch


def test_with_replacement_is_the_original_draw():
  sampler = sampling.Sampler.make("with_replacement", B, [N])
  key = jax.random.key(3)
  pos, mask = sampler.positions(key, jnp.int32(N), 0, key)
  np.testing.assert_array_equal(
      pos, jax.random.randint(key, (B,), 0, N))
  assert mask.all()


def _linear_data(n=40, d=5, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
  return client_lib.ClientData(x=x, y=y, indices=jnp.arange(n, dtype=jnp.int32),
                               offsets=jnp.asarray([0, n], jnp.int32))


def _loss(params, x, y, frozen=None, weights=None):
  logits = x @ params["w"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return losses.mean() if weights is None else jnp.sum(losses * weights)


def test_poisson_dp_step_is_the_clipped_sum_over_b():
  # sigma = 0: the DP-SGD gradient is sum_i clip(g_i) / B over the
  # included examples, computed here example by example.
  data = _linear_data()
  params = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)),
                             jnp.float32)}
  sampler = sampling.Sampler.make("poisson", 8, [40])
  pos, mask = sampler.positions(jax.random.key(5), jnp.int32(40), 0, None)
  chosen = np.asarray(pos)[np.asarray(mask)]
  want = np.zeros((5, 3))
  grad = jax.jit(jax.grad(_loss))
  for i in chosen:
    g = np.asarray(grad(params, data.x[i][None], data.y[i][None])["w"])
    want += g * min(1.0, 0.5 / np.linalg.norm(g))
  want /= 8
  for micro in (None, 4):
    got, aux = jax.jit(lambda b, m: dp_sgd.dp_sgd_gradient(
        lambda p, ex: _loss(p, ex[0][None], ex[1][None]), params, b, m,
        jax.random.key(0), 0.5, 0.0, micro, denominator=8, packed=True))(
            (data.x[pos], data.y[pos]), mask)
    np.testing.assert_allclose(got["w"], want, rtol=1e-5, atol=1e-7)
    assert int(aux["num_valid"]) == len(chosen)


def test_local_epochs_run_each_clients_own_steps():
  data = _linear_data()
  sampler = sampling.Sampler.make("shuffle", 8, [40])
  params = {"w": jnp.zeros((5, 3))}
  epochs = client_lib.make_client_fns(_loss, optax.sgd(0.1), 8, 1,
                                      sampler=sampler, local_epochs=2)
  steps = client_lib.make_client_fns(_loss, optax.sgd(0.1), 8, 10,
                                     sampler=sampler)
  # Shard of 20 of the 40: 2 epochs of ceil(20 / 8) = 3 steps; the program
  # runs 2 * ceil(40 / 8) = 10, of which the last 4 are no-ops.
  half = data.replace(offsets=jnp.asarray([0, 20, 40], jnp.int32))
  assert epochs.local_steps == 10
  key = jax.random.key(0)

  def run(fns, n):
    state = fns.init(params, key, 0, 0)
    for _ in range(n):
      state = fns.step(state, half, 0)
    return fns.final(state, params), state
  (delta, loss), state = run(epochs, 10)
  assert int(state.step) == 6
  (want, want_loss), _ = run(steps, 6)
  np.testing.assert_array_equal(delta["w"], want["w"])
  assert float(loss) == pytest.approx(float(want_loss) * 10 / 6, rel=1e-6)


@pytest.mark.parametrize("dp", [None, client_lib.ClientDP(0.5, 1.0)])
def test_poisson_buckets_on_the_loop_backend_match_vmap(dp):
  # The loop backend runs each step in the smallest bucket that holds its
  # batch; vmap computes the whole padded batch. Same deltas.
  from afl import backend as backend_lib
  data = _linear_data(n=60).replace(
      offsets=jnp.asarray([0, 15, 60], jnp.int32))
  sampler = sampling.Sampler.make("poisson", 6, [15, 45])
  fns = client_lib.make_client_fns(_loss, optax.sgd(0.1), 6, 4, dp=dp,
                                   sampler=sampler)
  assert fns.buckets[0] == 6 and fns.buckets[-1] == sampler.padded_size
  params = {"w": jnp.zeros((5, 3))}
  root = jax.random.key(2)
  args = ([params] * 3, [0, 1, 1], [0, 0, 1], root, data)
  loop = backend_lib.Backend(fns, "loop")(*args)
  vmap = backend_lib.Backend(fns, "vmap")(*args)
  for (a, la), (b, lb) in zip(loop, vmap):
    np.testing.assert_allclose(client_lib.as_tree(a)["w"],
                               client_lib.as_tree(b)["w"], rtol=1e-5,
                               atol=1e-6)
    assert float(la) == pytest.approx(float(lb), rel=1e-5)
