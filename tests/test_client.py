"""Client backends agree, keys are position-free, shapes don't retrace."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afl import client as client_lib
from afl import models


def _setup(model_name="mlp", local_steps=3, optimizer=None):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 6, 6, 1)).astype(np.float32)
  y = rng.integers(0, 3, 200).astype(np.int32)
  sizes = np.array([50, 30, 70, 50])
  data = client_lib.ClientData(
      x=jnp.asarray(x), y=jnp.asarray(y),
      indices=jnp.asarray(rng.permutation(200).astype(np.int32)),
      offsets=jnp.asarray(np.concatenate([[0], np.cumsum(sizes)]),
                          jnp.int32))
  model = models.make_model(model_name, 3, 8)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 6, 6, 1)))
  fns = client_lib.make_client_fns(
      client_lib.cross_entropy_loss(models.plain_apply(model)),
      optimizer or optax.sgd(0.1, momentum=0.9), batch_size=8,
      local_steps=local_steps)
  return fns, params, data


def _shift(params, v):
  return jax.tree_util.tree_map(lambda p: p + v, params)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_backends_agree(model_name):
  fns, params, data = _setup(model_name)
  starts = [params, _shift(params, 0.01), params]
  ids, tasks = [0, 2, 3], [0, 5, 1]
  root = jax.random.PRNGKey(7)
  out = {k: client_lib.Backend(fns, k)(starts, ids, tasks, root, data)
         for k in ("vmap", "loop", "debug")}
  for k in ("vmap", "debug"):
    for (d1, l1), (d2, l2) in zip(out["loop"], out[k]):
      chex.assert_trees_all_close(d1, d2, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(l1, l2, rtol=1e-5)


def test_debug_loop_matches_hand_written_sgd():
  """One task of plain SGD written out by hand, sampling included."""
  fns, params, data = _setup(optimizer=optax.sgd(0.1), local_steps=2)
  cid, tidx = 2, 4
  root = jax.random.PRNGKey(3)
  [(delta, _)] = client_lib.Backend(fns, "debug")([params], [cid], [tidx],
                                                   root, data)
  model = models.make_model("mlp", 3, 8)
  key = jax.random.fold_in(jax.random.fold_in(root, cid), tidx)
  p = params
  start, size = 80, 70
  for _ in range(2):
    key, sub = jax.random.split(key)
    idx = np.asarray(data.indices)[start + np.asarray(
        jax.random.randint(sub, (8,), 0, size))]
    g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(q, data.x[idx]), data.y[idx]).mean())(p)
    p = jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p, g)
  chex.assert_trees_all_close(
      delta, jax.tree_util.tree_map(jnp.subtract, p, params), rtol=1e-5,
      atol=1e-7)


def test_results_do_not_depend_on_cohort_position():
  fns, params, data = _setup()
  backend = client_lib.Backend(fns, "vmap")
  root = jax.random.PRNGKey(0)
  ab = backend([params, params], [1, 2], [0, 0], root, data)
  ba = backend([params, params], [2, 1], [0, 0], root, data)
  alone = backend([params], [2], [0], root, data)
  chex.assert_trees_all_close(ab[1][0], ba[0][0], alone[0][0], rtol=1e-5,
                              atol=1e-7)


def test_vmap_pads_to_buckets_without_retracing():
  fns, params, data = _setup()
  traced = []

  def counting_step(state, d, cid):
    traced.append(1)
    return fns.step(state, d, cid)

  backend = client_lib.Backend(
      client_lib.ClientFns(fns.init, counting_step, fns.final,
                           fns.local_steps), "vmap")
  root = jax.random.PRNGKey(0)
  backend([params] * 3, [0, 1, 2], [0, 0, 0], root, data)  # bucket 4
  n = len(traced)
  backend([params] * 4, [0, 1, 2, 3], [1, 1, 1, 1], root, data)  # bucket 4
  backend([params] * 3, [3, 1, 2], [2, 2, 2], root, data)
  assert len(traced) == n  # no retrace for the same bucket
  assert [client_lib.bucket_size(n) for n in (1, 2, 3, 5, 64, 65)] == [
      1, 2, 4, 8, 64, 128]


def test_loop_step_compiles_once():
  fns, params, data = _setup()
  step = jax.jit(chex.assert_max_traces(fns.step, n=1))
  state = fns.init(params, jax.random.PRNGKey(0), 0, 0)
  for cid in (0, 1, 2, 3):
    state = step(state, data, np.int32(cid))


def test_auto_backend():
  assert client_lib.resolve_backend("auto", "cpu") == "loop"
  assert client_lib.resolve_backend("auto", "cpu", has_conv=False) == "vmap"
  assert client_lib.resolve_backend("auto", "gpu") == "vmap"
  assert client_lib.resolve_backend("vmap", "cpu") == "vmap"
