"""Client backends agree, keys are position-free, shapes don't retrace."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afl import backend as backend_lib
from afl import client as client_lib
from afl import models


def _setup(model_name="mlp", local_steps=3, optimizer=None,
           grad_microbatch=0):
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
      local_steps=local_steps, grad_microbatch=grad_microbatch)
  return fns, params, data


def _shift(params, v):
  return jax.tree_util.tree_map(lambda p: p + v, params)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_backends_agree(model_name):
  fns, params, data = _setup(model_name)
  starts = [params, _shift(params, 0.01), params]
  ids, tasks = [0, 2, 3], [0, 5, 1]
  root = jax.random.PRNGKey(7)
  out = {k: backend_lib.Backend(fns, k)(starts, ids, tasks, root, data)
         for k in ("vmap", "loop", "debug")}
  for k in ("vmap", "debug"):
    for (d1, l1), (d2, l2) in zip(out["loop"], out[k]):
      chex.assert_trees_all_close(d1, client_lib.as_tree(d2), rtol=1e-5,
                                  atol=1e-6)
      np.testing.assert_allclose(l1, l2, rtol=1e-5)


@pytest.mark.parametrize("kind,chunk", [("loop", 0), ("vmap", 0),
                                        ("vmap", 2)])
def test_worker_threads_and_chunks_change_no_result(kind, chunk):
  """Worker threads split the cohort; lax.map chunks split the vmap: the
  deltas equal one single-threaded vmap/loop over the cohort."""
  fns, params, data = _setup("cnn", local_steps=2)
  starts = [params, _shift(params, 0.01), params, params, _shift(params, 1)]
  ids, tasks = [0, 2, 3, 1, 2], [0, 5, 1, 2, 2]
  root = jax.random.PRNGKey(7)
  ref = backend_lib.Backend(fns, kind)(starts, ids, tasks, root, data)
  got = backend_lib.Backend(fns, kind, workers=2, chunk=chunk)(
      starts, ids, tasks, root, data)
  assert len(got) == len(ref)
  for (d1, l1), (d2, l2) in zip(ref, got):
    d1, d2 = client_lib.as_tree(d1), client_lib.as_tree(d2)
    if kind == "loop":  # the same programs on the same inputs: bitwise
      chex.assert_trees_all_equal(d1, d2)
    else:
      chex.assert_trees_all_close(d1, d2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)


def test_stack_rows_gathers_in_order():
  tree = {"a": jnp.arange(12.).reshape(4, 3), "b": jnp.arange(4.)}
  rows = [client_lib.Row(tree, i) for i in (2, 0, 2)]
  got = client_lib.stack_rows(rows)
  np.testing.assert_array_equal(got["a"], np.asarray(tree["a"])[[2, 0, 2]])
  np.testing.assert_array_equal(got["b"], [2., 0., 2.])
  other = {"a": -jnp.ones((1, 3)), "b": -jnp.ones(1)}
  mixed = client_lib.stack_rows([rows[0], client_lib.Row(other, 0),
                                 {"a": jnp.zeros(3), "b": jnp.zeros(())}])
  np.testing.assert_array_equal(mixed["b"], [2., -1., 0.])
  np.testing.assert_array_equal(client_lib.as_tree(rows[1])["a"], [0, 1, 2])
  items = [rows[0], client_lib.Row(other, 0), rows[1],
           {"a": jnp.zeros(3), "b": jnp.zeros(())}, rows[2]]
  # Reference: each row sliced on its own and stacked in one program.
  want = jax.tree_util.tree_leaves(client_lib.stack_trees(
      *[client_lib.as_tree(r) for r in items]))
  got = client_lib.host_rows(items)  # the checkpoint's host-side stack
  assert all(isinstance(g, np.ndarray) for g in got)
  stacked = jax.tree_util.tree_leaves(client_lib.stack_rows(items))
  for g, s, w in zip(got, stacked, want):
    np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(s, w)
    assert s.dtype == w.dtype and s.shape == w.shape


def test_workers_and_chunk_resolve():
  assert backend_lib.resolve_workers(3, "cpu") == 3
  assert backend_lib.resolve_workers(0, "gpu") == 1
  assert backend_lib.resolve_workers(0, "cpu") >= 1
  assert backend_lib.resolve_chunk(0, "cpu") == 8
  assert backend_lib.resolve_chunk(0, "gpu") == 0
  assert backend_lib.resolve_chunk(5, "gpu") == 5
  with pytest.raises(ValueError, match="workers"):
    backend_lib.Backend(None, "loop", workers=0)


def test_grad_microbatch_equals_whole_batch_gradient():
  """Micro-batched gradients are the whole-batch gradient (mean losses over
  equal chunks), so trained deltas and losses agree up to rounding."""
  ref_fns, params, data = _setup("cnn", local_steps=2)
  fns, _, _ = _setup("cnn", local_steps=2, grad_microbatch=2)
  args = ([params, _shift(params, 0.01)], [0, 2], [0, 5],
          jax.random.PRNGKey(7), data)
  ref = backend_lib.Backend(ref_fns, "loop")(*args)
  got = backend_lib.Backend(fns, "loop")(*args)
  for (d1, l1), (d2, l2) in zip(ref, got):
    chex.assert_trees_all_close(d1, d2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)


def test_grad_microbatch_splits_the_batch():
  """A loss that reads its batch size exposes the split: d/dw (w * m) = m
  for micro-batches of m examples (closed form), 8 for the whole batch."""
  _, _, data = _setup()
  loss_fn = lambda p, x, y, frozen=None: p["w"] * x.shape[0]
  for micro, want in ((0, 8.0), (2, 2.0), (4, 4.0)):
    fns = client_lib.make_client_fns(loss_fn, optax.sgd(1.0), batch_size=8,
                                     local_steps=1, grad_microbatch=micro)
    (delta, loss), = backend_lib.Backend(fns, "debug")(
        [{"w": jnp.zeros(())}], [0], [0], jax.random.PRNGKey(0), data)
    assert float(delta["w"]) == -want and float(loss) == 0.0


def test_grad_microbatch_must_divide_batch():
  with pytest.raises(ValueError, match="grad_microbatch=3 must divide "
                     "batch_size=8"):
    _setup("cnn", grad_microbatch=3)


def test_grad_microbatch_resolves():
  r = backend_lib.resolve_grad_microbatch
  assert r(0, 32, "cpu") == 16
  assert r(0, 16, "cpu") == 0  # no smaller micro-batch
  assert r(0, 24, "cpu") == 0  # 16 does not divide 24
  assert r(0, 32, "cpu", image_conv=False) == 0
  assert r(0, 32, "gpu") == 0
  assert r(4, 32, "gpu") == 4


def test_debug_loop_matches_hand_written_sgd():
  """One task of plain SGD written out by hand, sampling included."""
  fns, params, data = _setup(optimizer=optax.sgd(0.1), local_steps=2)
  cid, tidx = 2, 4
  root = jax.random.PRNGKey(3)
  [(delta, _)] = backend_lib.Backend(fns, "debug")([params], [cid], [tidx],
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
  backend = backend_lib.Backend(fns, "vmap")
  root = jax.random.PRNGKey(0)
  ab = backend([params, params], [1, 2], [0, 0], root, data)
  ba = backend([params, params], [2, 1], [0, 0], root, data)
  alone = backend([params], [2], [0], root, data)
  chex.assert_trees_all_close(
      *[client_lib.as_tree(d) for d in (ab[1][0], ba[0][0], alone[0][0])],
      rtol=1e-5, atol=1e-7)


def test_vmap_pads_to_buckets_without_retracing():
  fns, params, data = _setup()
  traced = []

  def counting_step(state, d, cid):
    traced.append(1)
    return fns.step(state, d, cid)

  backend = backend_lib.Backend(
      client_lib.ClientFns(fns.init, counting_step, fns.final,
                           fns.local_steps), "vmap")
  root = jax.random.PRNGKey(0)
  backend([params] * 3, [0, 1, 2], [0, 0, 0], root, data)  # bucket 4
  n = len(traced)
  backend([params] * 4, [0, 1, 2, 3], [1, 1, 1, 1], root, data)  # bucket 4
  backend([params] * 3, [3, 1, 2], [2, 2, 2], root, data)
  assert len(traced) == n  # no retrace for the same bucket
  assert [backend_lib.bucket_size(n) for n in (1, 2, 3, 5, 64, 65)] == [
      1, 2, 4, 8, 64, 128]


def test_loop_step_compiles_once():
  fns, params, data = _setup()
  step = jax.jit(chex.assert_max_traces(fns.step, n=1))
  state = fns.init(params, jax.random.PRNGKey(0), 0, 0)
  for cid in (0, 1, 2, 3):
    state = step(state, data, np.int32(cid))


def test_auto_backend():
  assert backend_lib.resolve_backend("auto", "cpu") == "loop"
  assert backend_lib.resolve_backend("auto", "cpu", has_conv=False) == "vmap"
  assert backend_lib.resolve_backend("auto", "gpu") == "vmap"
  assert backend_lib.resolve_backend("vmap", "cpu") == "vmap"


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 0), (2, 1))])
def test_patch_conv_matches_lax_conv(padding):
  """im2col conv = lax.conv_general_dilated: values and both gradients."""
  from afl.models import cnn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
  dn = ("NHWC", "HWIO", "NHWC")
  ref = lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), padding, dimension_numbers=dn)
  got = lambda a, b: cnn.patch_conv(a, b, (1, 1), padding,
                                    dimension_numbers=dn)
  np.testing.assert_allclose(got(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(2), ref(x, k).shape)
  g_ref = jax.grad(lambda a, b: (ref(a, b) * w).sum(), (0, 1))(x, k)
  g_got = jax.grad(lambda a, b: (got(a, b) * w).sum(), (0, 1))(x, k)
  for a, b in zip(g_got, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # Strided and channels-first convs are handed to lax.
  np.testing.assert_allclose(
      cnn.patch_conv(x, k, (2, 2), padding, dimension_numbers=dn),
      jax.lax.conv_general_dilated(x, k, (2, 2), padding,
                                   dimension_numbers=dn), rtol=1e-6)
  nchw = ("NCHW", "OIHW", "NCHW")
  xc, kc = x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1)
  np.testing.assert_allclose(
      cnn.patch_conv(xc, kc, (1, 1), padding, dimension_numbers=nchw),
      jax.lax.conv_general_dilated(xc, kc, (1, 1), padding,
                                   dimension_numbers=nchw), rtol=1e-6)


def test_max_pool_2x2_matches_reduce_window():
  """Values equal flax's reduce_window pool (odd edges dropped); gradients
  equal where the window maximum is unique (random inputs)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from afl.models import cnn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
  ref = lambda a: nn.max_pool(a, (2, 2), (2, 2))
  np.testing.assert_array_equal(cnn.max_pool_2x2(x), ref(x))
  w = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 3))
  g1 = jax.grad(lambda a: (cnn.max_pool_2x2(a) * w).sum())(x)
  g2 = jax.grad(lambda a: (ref(a) * w).sum())(x)
  np.testing.assert_array_equal(g1, g2)
