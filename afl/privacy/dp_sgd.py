"""Client-level (example-level) DP-SGD: per-example gradients, their clipped
sum, and the noised DP-SGD gradient.

Everything here is a pure function of arrays (plus static Python numbers such
as `microbatch_size`), so it runs under `jax.jit` and under an outer
`jax.vmap` over clients, each client with its own PRNG key.

Clipping returns the clipped *sum* together with its sensitivity, and the
noise (`afl.privacy.dp.add_gaussian_noise`) is a separate step calibrated to
that sensitivity; the division by the batch size comes after the noise, as
post-processing:

  g = (sum_b clip_C(grad_b) + N(0, (sigma C)^2 I)) / B

References:
  Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from afl.privacy.dp import PyTree, add_gaussian_noise


# --------------------------------------------------------------------------
# Per-example gradients.
# --------------------------------------------------------------------------


def _batch_size(batch: PyTree) -> int:
  leaves = jax.tree_util.tree_leaves(batch)
  if not leaves:
    raise ValueError("batch has no array leaves")
  return leaves[0].shape[0]


def _chunk(batch: PyTree, mask: jax.Array, microbatch_size: int):
  """Pads the batch to a multiple of `microbatch_size` and splits it.

  Padding rows get mask False, so they contribute exactly zero wherever the
  mask is honoured; their content (zeros) only has to be a valid input.

  Returns:
    (chunked batch with leaves [n, m, ...], chunked mask [n, m]).
  """
  size = _batch_size(batch)
  m = int(microbatch_size)
  if m <= 0:
    raise ValueError(f"microbatch_size must be positive, got {m}")
  n = -(-size // m)
  pad = n * m - size

  def split(x):
    if pad:
      x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], 0)
    return x.reshape((n, m) + x.shape[1:])

  return jax.tree_util.tree_map(split, batch), split(mask.astype(bool))


def _masked_losses_and_grads(loss_fn, params, batch, mask):
  """([B] per-example losses, [B, ...] gradients), padded rows exact zeros."""
  losses, grads = jax.vmap(jax.value_and_grad(loss_fn),
                           in_axes=(None, 0))(params, batch)
  # `where`, not a multiply: a padded example may have a NaN gradient (it is
  # garbage input), and 0 * NaN would leak it into the sum.
  grads = jax.tree_util.tree_map(
      lambda g: jnp.where(_bcast(mask, g), g, jnp.zeros((), g.dtype)), grads)
  return jnp.where(mask, losses.astype(jnp.float32), 0.0), grads


def _masked_grads(loss_fn, params, batch, mask):
  return _masked_losses_and_grads(loss_fn, params, batch, mask)[1]


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
  """[B] -> [B, 1, ..., 1] to broadcast against a [B, ...] leaf."""
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def per_example_grads(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batch: PyTree,
    mask: jax.Array,
    microbatch_size: Optional[int] = None,
) -> PyTree:
  """Gradients of `loss_fn` for every example of the batch.

  Args:
    loss_fn: `loss_fn(params, example) -> scalar` for ONE example (a pytree
      of arrays without the batch axis). Models that need a batch axis can
      add it inside (`x[None]`).
    params: Parameters, shared by all examples (not batched).
    batch: Pytree of arrays with a leading batch axis B.
    mask: [B] bool, False for padding examples, whose gradient is set to
      exactly zero.
    microbatch_size: If set, gradients are computed `microbatch_size`
      examples at a time with `lax.map` over chunks, which bounds the peak
      memory of the backward pass; the result is the same (up to float
      rounding in XLA's fusion choices).

  Returns:
    Pytree like `params` with a leading axis B on every leaf.

  >>> import jax.numpy as jnp
  >>> loss = lambda w, ex: 0.5 * jnp.sum((w * ex["x"]) ** 2)
  >>> g = per_example_grads(loss, jnp.ones(2), {"x": jnp.array([[1., 2.],
  ...     [3., 4.]])}, jnp.array([True, False]))
  >>> g.tolist()
  [[1.0, 4.0], [0.0, 0.0]]
  """
  mask = jnp.asarray(mask, bool)
  if microbatch_size is None:
    return _masked_grads(loss_fn, params, batch, mask)
  size = _batch_size(batch)
  chunks, cmask = _chunk(batch, mask, microbatch_size)
  out = lax.map(lambda c: _masked_grads(loss_fn, params, c[0], c[1]),
                (chunks, cmask))
  return jax.tree_util.tree_map(
      lambda g: g.reshape((-1,) + g.shape[2:])[:size], out)


# --------------------------------------------------------------------------
# Clipping.
# --------------------------------------------------------------------------


def per_example_global_norms(per_example_grads: PyTree) -> jax.Array:
  """[B, ...] pytree -> [B] L2 norms over all leaves of each example (f32)."""
  leaves = jax.tree_util.tree_leaves(per_example_grads)
  sq = [jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1),
                axis=1) for x in leaves]
  return jnp.sqrt(sum(sq))


def _clip_scales(norms: jax.Array, clip_norm) -> jax.Array:
  # min(1, C / norm) with `tiny` guarding norm == 0 (scale 1, and C/tiny may
  # overflow to inf, which the min absorbs).
  tiny = jnp.finfo(jnp.float32).tiny
  return jnp.minimum(1.0, jnp.asarray(clip_norm, jnp.float32) / (norms + tiny))


def _clip_and_sum(masked_grads, mask, clip_norm):
  """Clipped sum plus the per-example norms (for metrics).

  `masked_grads` must hold exact zeros in padded rows (`_masked_grads`).
  The sum is one contraction of the batch axis with the clip scales
  (`tensordot`, a matrix-vector product), not a scale-then-reduce over the
  [B, ...] leaves, which XLA:CPU ran 3x slower for a 784-100-10 MLP
  (benchmarks/NOTES.md).
  """
  mask = jnp.asarray(mask, bool)
  norms = per_example_global_norms(masked_grads)
  scales = jnp.where(mask, _clip_scales(norms, clip_norm), 0.0)
  total = jax.tree_util.tree_map(
      lambda g: jnp.tensordot(scales.astype(g.dtype), g, axes=(0, 0)),
      masked_grads)
  return total, norms


def clipped_sum(
    per_example_grads: PyTree,
    mask: jax.Array,
    clip_norm,
) -> tuple[PyTree, jax.Array, jax.Array]:
  """Sum of per-example gradients, each clipped to global L2 norm `clip_norm`.

  Each example's gradient g_b is scaled by min(1, C / ||g_b||) (the norm taken
  over the whole pytree), so examples already inside the ball pass unchanged.
  Padding examples (mask False) contribute exactly zero and are not counted.

  Args:
    per_example_grads: Pytree whose leaves have a leading batch axis B.
    mask: [B] bool, False for padding.
    clip_norm: The clip norm C (Python float or scalar array).

  Returns:
    (clipped sum, a pytree without the batch axis; number of valid examples,
    int32 scalar; L2 sensitivity of the sum under adding/removing one example,
    which is C).

  References:
    Abadi et al. 2016, "Deep Learning with Differential Privacy", Alg. 1.

  >>> import jax.numpy as jnp
  >>> s, n, c = clipped_sum(jnp.array([[3., 4.], [0.3, 0.4], [9., 9.]]),
  ...                       jnp.array([True, True, False]), 1.0)
  >>> [round(v, 4) for v in s.tolist()], int(n), float(c)
  ([0.9, 1.2], 2, 1.0)
  """
  mask = jnp.asarray(mask, bool)
  # `where`, not a multiply: padded rows may hold NaN (see _masked_grads).
  masked = jax.tree_util.tree_map(
      lambda g: jnp.where(_bcast(mask, g), g, jnp.zeros((), g.dtype)),
      per_example_grads)
  total, _ = _clip_and_sum(masked, mask, clip_norm)
  num_valid = jnp.sum(mask.astype(jnp.int32))
  return total, num_valid, jnp.asarray(clip_norm, jnp.float32)


# --------------------------------------------------------------------------
# DP-SGD gradient.
# --------------------------------------------------------------------------


def _clipped_sums(loss_fn, params, batch, mask, clip_norm, microbatch_size):
  """(clipped sum, clipped count, sum of norms, sum of losses) of a batch,
  in one pass or in chunks of `microbatch_size` (`lax.scan`)."""
  if microbatch_size is None:
    losses, grads = _masked_losses_and_grads(loss_fn, params, batch, mask)
    total, norms = _clip_and_sum(grads, mask, clip_norm)
    return (total, jnp.sum(mask & (norms > clip_norm)),
            jnp.sum(jnp.where(mask, norms, 0.0)), jnp.sum(losses))
  chunks, cmask = _chunk(batch, mask, microbatch_size)

  def body(carry, chunk):
    out = _clipped_sums(loss_fn, params, *chunk, clip_norm, None)
    return jax.tree_util.tree_map(jnp.add, carry, out), None

  zero = jnp.zeros((), jnp.float32)
  init = (jax.tree_util.tree_map(jnp.zeros_like, params),
          jnp.zeros((), jnp.int32), zero, zero)
  return lax.scan(body, init, (chunks, cmask))[0]


def dp_sgd_gradient(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batch: PyTree,
    mask: jax.Array,
    key: jax.Array,
    clip_norm,
    noise_multiplier,
    microbatch_size: Optional[int] = None,
    denominator: Optional[int] = None,
    packed: bool = False,
) -> tuple[PyTree, dict]:
  """One DP-SGD gradient: clip per example, sum, add noise, divide by B.

  g = (sum_b clip_C(grad_b) + N(0, (sigma C)^2 I)) / B.

  The divisor B is `denominator` (Poisson sampling: the expected batch
  size) or else the padded batch size (a static shape), never the number of
  valid examples: B is public and data-independent, so dividing by it is
  post-processing of the Gaussian mechanism, whereas dividing by the count
  would make the scale depend on whether a record is present.

  Works under `jax.jit` and under an outer `jax.vmap` over clients (batch,
  mask, key — and params, if clients start from different versions — mapped
  on axis 0).

  Args:
    loss_fn: `loss_fn(params, example) -> scalar` for one example.
    params: Model parameters.
    batch: Pytree of [B, ...] arrays.
    mask: [B] bool, False for padding examples.
    key: PRNG key for the noise (one per client and step).
    clip_norm: Per-example clip norm C.
    noise_multiplier: sigma; the noise stddev on the sum is sigma * C.
    microbatch_size: If set, the batch is processed in chunks of this many
      examples with `lax.scan`, accumulating the clipped sum, so only one
      chunk's per-example gradients are alive at a time.
    denominator: The public divisor B (default: the padded batch size).
    packed: The valid examples come first (Poisson batches, padded beyond
      their expected size `denominator`): the slots past `denominator` are
      computed only when they hold a valid example (`lax.cond`).

  Returns:
    (noised mean gradient, a pytree like params; aux dict with
    `clipped_fraction` (share of valid examples whose norm exceeded C),
    `grad_norm` (mean pre-clip norm over valid examples), `loss` (mean
    loss over valid examples, from the same forward pass) and
    `num_valid`).

  References:
    Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS.

  >>> import jax, jax.numpy as jnp
  >>> loss = lambda w, ex: jnp.sum(w * ex)
  >>> g, aux = dp_sgd_gradient(loss, jnp.zeros(2), jnp.array([[3., 4.],
  ...     [0., .5]]), jnp.array([True, True]), jax.random.key(0), 1.0, 0.0)
  >>> [round(v, 4) for v in g.tolist()], float(aux["clipped_fraction"])
  ([0.3, 0.65], 0.5)
  """
  mask = jnp.asarray(mask, bool)
  size = _batch_size(batch)
  sums = lambda b, m: _clipped_sums(loss_fn, params, b, m, clip_norm,
                                    microbatch_size)
  split = min(size, denominator or size)
  if packed and split < size:
    # The first B slots always (a Poisson batch rarely has fewer than B
    # valid examples), the rest only when it holds any.
    head = jax.tree_util.tree_map(lambda a: a[:split], batch)
    tail = jax.tree_util.tree_map(lambda a: a[split:], batch)
    first = sums(head, mask[:split])
    tail_mask = mask[split:]
    rest = lax.cond(jnp.any(tail_mask), lambda: sums(tail, tail_mask),
                    lambda: jax.tree_util.tree_map(jnp.zeros_like, first))
    total, n_clipped, norm_sum, loss_sum = jax.tree_util.tree_map(
        jnp.add, first, rest)
  else:
    total, n_clipped, norm_sum, loss_sum = sums(batch, mask)

  num_valid = jnp.sum(mask.astype(jnp.int32))
  stddev = (jnp.asarray(noise_multiplier, jnp.float32)
            * jnp.asarray(clip_norm, jnp.float32))
  noised = add_gaussian_noise(total, key, stddev)
  divisor = size if denominator is None else denominator
  grad = jax.tree_util.tree_map(lambda x: x / jnp.asarray(divisor, x.dtype),
                                noised)
  denom = jnp.maximum(num_valid, 1).astype(jnp.float32)
  aux = {
      "clipped_fraction": n_clipped.astype(jnp.float32) / denom,
      "grad_norm": norm_sum / denom,
      "loss": loss_sum / denom,
      "num_valid": num_valid,
  }
  return grad, aux
