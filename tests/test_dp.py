"""Tests for afl.privacy.dp_sgd (per-example clipping, DP-SGD) and
afl.privacy.dp (noise, server DP)."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from afl import aggregators
from afl.config import base_config, build_config
from afl.privacy import dp
from afl.privacy import dp_sgd

# Two-sided false-alarm probability of each statistical check.
ALPHA = 1e-6

# Shared jitted entry points: tests that use the same (cached) loss function
# and shapes reuse one compilation instead of each compiling its own.
_per_example = jax.jit(dp_sgd.per_example_grads, static_argnums=(0, 4))
_dp_sgd = jax.jit(dp_sgd.dp_sgd_gradient, static_argnums=(0, 7))


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(3)(x)


class TinyConv(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(3)(x)


@functools.lru_cache(maxsize=None)
def _setup(kind, batch_size=6):
  """Model params, a one-example loss and a batch with two padded rows."""
  rng = np.random.default_rng(0)
  if kind == "mlp":
    model, shape = MLP(), (5,)
  else:
    model, shape = TinyConv(), (6, 6, 1)
  x = rng.normal(size=(batch_size,) + shape).astype(np.float32)
  # Spread the example scales so that some gradients fall below the clip
  # norm and some above it.
  x *= np.geomspace(0.05, 5.0, batch_size).reshape((-1,) + (1,) * len(shape))
  mask = np.ones(batch_size, bool)
  mask[[2, batch_size - 1]] = False
  # Padded rows hold garbage: NaN must not leak into the sum.
  x[~mask] = np.nan
  y = rng.integers(0, 3, size=batch_size).astype(np.int32)
  params = model.init(jax.random.key(1), jnp.zeros((1,) + shape))

  def loss_fn(p, ex):
    logits = model.apply(p, ex["x"][None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ex["y"])

  batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
  return loss_fn, params, batch, jnp.asarray(mask)


def _global_norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(l, np.float64)))
                           for l in jax.tree_util.tree_leaves(tree))))


@functools.lru_cache(maxsize=None)
def _naive_grads(kind):
  """Python loop over single examples: the gradient of each valid one."""
  loss_fn, params, batch, mask = _setup(kind)
  grad_fn = jax.jit(jax.grad(loss_fn))  # one compile, then a loop of calls
  out = []
  for b in range(len(mask)):
    if mask[b]:
      ex = jax.tree_util.tree_map(lambda v: v[b], batch)
      out.append(jax.tree_util.tree_map(lambda g: np.asarray(g, np.float64),
                                        grad_fn(params, ex)))
  return out


def _naive(kind, clip_norm):
  """Clip each valid example's gradient, sum; also return the norms."""
  grads = _naive_grads(kind)
  norms = np.array([_global_norm(g) for g in grads])
  total = jax.tree_util.tree_map(np.zeros_like, grads[0])
  for g, n in zip(grads, norms):
    s = min(1.0, clip_norm / n)
    total = jax.tree_util.tree_map(lambda t, gg: t + s * gg, total, g)
  return total, norms


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_clipped_sum_matches_naive_loop(kind):
  loss_fn, params, batch, mask = _setup(kind)
  _, norms = _naive(kind, 1e9)
  clip = float(np.median(norms))  # half the examples below, half above
  assert np.sum(norms < clip) >= 1 and np.sum(norms > clip) >= 1
  want, _ = _naive(kind, clip)

  grads = _per_example(loss_fn, params, batch, mask, None)
  got, n, sens = jax.jit(dp_sgd.clipped_sum)(grads, mask, clip)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  assert int(n) == int(np.sum(mask))
  assert float(sens) == pytest.approx(clip)
  # Padded examples' gradients are exact zeros (despite NaN inputs).
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.asarray(leaf)[~np.asarray(mask)] == 0)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_dp_sgd_gradient_noiseless_and_aux(kind):
  loss_fn, params, batch, mask = _setup(kind)
  _, norms = _naive(kind, 1e9)
  clip = float(np.median(norms))
  want, _ = _naive(kind, clip)
  size = len(mask)
  got, aux = _dp_sgd(loss_fn, params, batch, mask, jax.random.key(0), clip, 0.0,
                None)
  # Divided by the fixed padded batch size B, not by the valid count.
  chex.assert_trees_all_close(
      got, jax.tree_util.tree_map(lambda w: w / size, want),
      rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux["clipped_fraction"], np.mean(norms > clip),
                             rtol=1e-6)
  np.testing.assert_allclose(aux["grad_norm"], np.mean(norms), rtol=1e-5)
  assert int(aux["num_valid"]) == int(np.sum(mask))
  # The mean loss over valid examples, from the same per-example pass.
  losses = [float(loss_fn(params, jax.tree_util.tree_map(lambda v: v[i],
                                                          batch)))
            for i in np.flatnonzero(np.asarray(mask))]
  np.testing.assert_allclose(aux["loss"], np.mean(losses), rtol=1e-5)


@pytest.mark.parametrize("microbatch_size", [4])
def test_microbatched_equals_full(microbatch_size):
  loss_fn, params, batch, mask = _setup("conv")
  pe = _per_example
  full = pe(loss_fn, params, batch, mask, None)
  micro = pe(loss_fn, params, batch, mask, microbatch_size)
  chex.assert_trees_all_close(micro, full, rtol=1e-6, atol=1e-7)
  key = jax.random.key(3)
  step = _dp_sgd
  g_full, a_full = step(loss_fn, params, batch, mask, key, 0.5, 1.3, None)
  g_micro, a_micro = step(loss_fn, params, batch, mask, key, 0.5, 1.3,
                          microbatch_size)
  chex.assert_trees_all_close(g_micro, g_full, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(a_micro, a_full, rtol=1e-5)


def test_outer_vmap_over_clients_equals_per_client_calls():
  loss_fn, params, batch, mask = _setup("mlp")
  rng = np.random.default_rng(5)
  n_clients = 3
  batches = {
      "x": jnp.asarray(rng.normal(size=(n_clients,) + batch["x"].shape),
                       jnp.float32),
      "y": jnp.asarray(rng.integers(0, 3, (n_clients,) + batch["y"].shape),
                       jnp.int32),
  }
  masks = jnp.asarray([[True] * 6, [True] * 4 + [False] * 2,
                       [False] + [True] * 5])
  keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.key(9), c))(
      jnp.arange(n_clients))
  # Clients may start from different versions: params batched too.
  client_params = jax.tree_util.tree_map(
      lambda p: jnp.stack([p, 1.1 * p, 0.9 * p]), params)

  def one(p, b, m, k):
    return dp_sgd.dp_sgd_gradient(loss_fn, p, b, m, k, 0.7, 1.1,
                                  microbatch_size=4)

  vmapped = jax.jit(jax.vmap(one))(client_params, batches, masks, keys)
  one_jit = jax.jit(one)
  for c in range(n_clients):
    take = lambda t: jax.tree_util.tree_map(lambda v: v[c], t)
    single = one_jit(take(client_params), take(batches), masks[c], keys[c])
    chex.assert_trees_all_close(take(vmapped), single, rtol=1e-5, atol=1e-6)


def test_sigma_zero_huge_clip_is_plain_sgd():
  loss_fn, params, batch, _ = _setup("mlp")
  mask = jnp.ones(6, bool)
  batch = {"x": jnp.nan_to_num(batch["x"], nan=0.3), "y": batch["y"]}
  got, aux = _dp_sgd(loss_fn, params, batch, mask, jax.random.key(0), 1e9,
                     0.0, None)
  mean_loss = lambda p: jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(p,
                                                                       batch))
  want = jax.jit(jax.grad(mean_loss))(params)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
  assert float(aux["clipped_fraction"]) == 0.0


def _assert_normal(samples, stddev):
  """Known-mean-0 sample: chi-square bound on variance, z bound on mean."""
  x = np.asarray(samples, np.float64).ravel()
  n = x.size
  stat = np.sum(x ** 2) / stddev ** 2
  lo, hi = stats.chi2.ppf(ALPHA / 2, n), stats.chi2.isf(ALPHA / 2, n)
  assert lo <= stat <= hi, (stat / n, lo / n, hi / n)
  z = stats.norm.isf(ALPHA / 2)
  assert abs(np.mean(x)) <= z * stddev / np.sqrt(n)


def test_add_gaussian_noise_statistics_and_independence():
  tree = {"a": jnp.zeros((200_000,)), "b": jnp.zeros((400, 500))}
  out = jax.jit(dp.add_gaussian_noise)(tree, jax.random.key(0), 0.37)
  _assert_normal(out["a"], 0.37)
  _assert_normal(out["b"], 0.37)
  # Leaves of equal size get independent draws.
  a, b = np.asarray(out["a"]), np.asarray(out["b"]).ravel()
  corr = np.corrcoef(a, b)[0, 1]
  assert abs(corr) < stats.norm.isf(ALPHA / 2) / np.sqrt(a.size)


def test_add_gaussian_noise_zero_stddev_is_identity():
  tree = {"a": jnp.arange(5.0)}
  out = dp.add_gaussian_noise(tree, jax.random.key(0), 0.0)
  np.testing.assert_array_equal(out["a"], tree["a"])


def test_dp_sgd_noise_is_sigma_c_over_batch():
  # Linear loss: every per-example gradient is the example itself.
  dim, size = 50_000, 4
  loss_fn = lambda w, ex: jnp.dot(w, ex)
  batch = jax.random.normal(jax.random.key(1), (size, dim))
  mask = jnp.array([True, True, True, False])
  params = jnp.zeros(dim)
  sigma, clip = 1.7, 0.8
  key = jax.random.key(2)
  noisy, _ = _dp_sgd(loss_fn, params, batch, mask, key, clip, sigma, None)
  clean, _ = _dp_sgd(loss_fn, params, batch, mask, key, clip, 0.0, None)
  _assert_normal(noisy - clean, sigma * clip / size)


def test_zero_gradient_and_all_padding():
  loss_fn = lambda w, ex: jnp.dot(w, ex)
  batch = jnp.zeros((3, 4))
  g, aux = dp_sgd.dp_sgd_gradient(loss_fn, jnp.ones(4), batch,
                                  jnp.array([True, True, False]),
                                  jax.random.key(0), 1.0, 0.0)
  np.testing.assert_array_equal(g, np.zeros(4))
  assert float(aux["grad_norm"]) == 0.0
  s, n, _ = dp_sgd.clipped_sum(jnp.full((3, 4), jnp.nan), jnp.zeros(3, bool),
                               1.0)
  np.testing.assert_array_equal(s, np.zeros(4))
  assert int(n) == 0


def test_no_retrace_on_second_call():
  loss_fn, params, batch, mask = _setup("mlp")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, b, m, k):
    return dp_sgd.dp_sgd_gradient(loss_fn, p, b, m, k, 1.0, 1.0)

  step(params, batch, mask, jax.random.key(0))
  step(params, batch, ~mask, jax.random.key(1))


# ----------------------------------------------------------------- server DP


class ServerDPTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_noiseless_clipped_sum(self):
    """Rows clipped to 1; NaN, masked-out rows count as zeros."""
    flat = jnp.array([[3.0, 4.0], [0.3, 0.4], [jnp.nan, 1.0], [6.0, 8.0],
                      [0.0, 0.0]])
    valid = jnp.array([True, True, True, False, True])
    fn = self.variant(dp.server_noised_mean)
    out = fn(flat, valid, 1.0, 0.0, jax.random.key(0), 1.0)
    np.testing.assert_allclose(out, [0.6 + 0.3, 0.8 + 0.4], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_noiseless_mean_and_expected_count(self):
    flat = jnp.array([[3.0, 4.0], [1.0, 0.0], [9.0, 9.0]])
    valid = jnp.array([True, True, False])
    key = jax.random.key(0)
    fn = self.variant(dp.server_noised_mean)
    np.testing.assert_allclose(fn(flat, valid, 1.0, 0.0, key), [0.8, 0.4],
                               rtol=1e-6)
    np.testing.assert_allclose(fn(flat, valid, 1.0, 0.0, key, 4.0),
                               [0.4, 0.2], rtol=1e-6)


def test_server_noise_statistics():
  k, dim = 5, 100_000
  flat = jax.random.normal(jax.random.key(1), (k, dim))
  valid = jnp.array([True, True, False, True, True])
  sigma, clip = 0.9, 2.0
  out = jax.jit(dp.server_noised_mean)(flat, valid, clip, sigma,
                                       jax.random.key(2))
  x = np.where(np.asarray(valid)[:, None], np.asarray(flat, np.float64), 0)
  norms = np.linalg.norm(x, axis=1)
  clipped = x * np.minimum(1, clip / np.maximum(norms, 1e-30))[:, None]
  noise = np.asarray(out) * 4 - clipped.sum(axis=0)
  _assert_normal(noise, sigma * clip)


def test_server_dp_needs_a_linear_aggregator():
  """The property lives on the aggregator; config names the key."""
  assert aggregators.REGISTRY.where("linear") == ["mean"]
  for name in ["median", "trimmed_mean", "krum", "hybrid"]:
    c = base_config()
    c.dp.mode = "server"
    c.server.weight_by_examples = False
    c.aggregator.name = name
    with pytest.raises(ValueError, match="config.dp.mode: server DP "
                       "calibrates noise") as err:
      build_config(c)
    assert "\n" not in str(err.value)
