"""Local client training: three pure functions, and the rows of their output.

`make_client_fns` builds `client_init`, `client_step` and `client_final`
(fedjax's for_each_client shape), which the backends of `afl.backend` run
over a cohort of tasks. A task's delta comes back as a pytree or as a `Row`
of its cohort's stacked output; `as_tree` and `stack_rows` take either.

Every task's randomness comes from `fold_in(fold_in(root, client_id),
task_index)`, never from its position in a cohort, so how tasks are grouped
into cohorts cannot change any result (docs/architecture.md, "exact lazy
batching").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from afl import aligned
from afl import sampling
from afl.privacy import dp_sgd


@flax.struct.dataclass
class ClientData:
  """Training data on device; clients own CSR slices of `indices`."""
  x: jax.Array  # [N, ...] examples
  y: jax.Array  # [N] int labels
  indices: jax.Array  # [total] int32, client shards back to back
  offsets: jax.Array  # [num_clients + 1] int32
  malicious: jax.Array | None = None  # [num_clients] bool: data attackers
  # Frozen model parameters (e.g. a LoRA model's base): passed unbatched to
  # every client (in_axes=None), never copied per client or per version.
  frozen: object = None


@flax.struct.dataclass
class ClientState:
  params: Any
  opt_state: Any
  key: jax.Array
  loss_sum: jax.Array
  step: jax.Array  # int32: local steps taken
  epoch_key: jax.Array  # `shuffle`: the key of the task's permutations


def task_key(root: jax.Array, client_id, task_index) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(root, client_id), task_index)


def cross_entropy_loss(apply_fn):
  """apply_fn(params, x, frozen) -> logits; frozen is ClientData.frozen.

  The loss is the batch mean, or with `weights` [B] the weighted sum (masked
  batches: weights = mask / count)."""
  def loss_fn(params, x, y, frozen=None, weights=None):
    logits = apply_fn(params, x, frozen)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses.mean() if weights is None else jnp.sum(losses * weights)
  return loss_fn


@dataclasses.dataclass(frozen=True)
class ClientFns:
  """The three pure client functions for one model/optimizer/config."""
  init: Callable[..., ClientState]
  step: Callable[..., ClientState]
  final: Callable[..., tuple[Any, jax.Array]]
  local_steps: int
  # Poisson batches: `count(state, data, client_id)` gives the batch sizes
  # of a task's local steps from its initial state, and `step(...,
  # bucket=b)` (b in `buckets`, at least that step's size) computes only
  # the first b slots. Host loops use them to skip the padding (XLA:CPU
  # runs a convolution inside `lax.cond` many times slower than outside
  # it); the result is the same.
  count: Callable[..., jax.Array] | None = None
  buckets: tuple = ()


@dataclasses.dataclass(frozen=True)
class ClientDP:
  """Client-level DP-SGD: per-example clip to `clip_norm`, sum, add
  N(0, (noise_multiplier * clip_norm)^2), divide by the batch size."""
  clip_norm: float
  noise_multiplier: float
  microbatch_size: int | None = None


def make_client_fns(loss_fn, optimizer: optax.GradientTransformation,
                    batch_size: int, local_steps: int,
                    dp: ClientDP | None = None,
                    data_attack=None, grad_microbatch: int = 0,
                    sampler: sampling.Sampler | None = None,
                    local_epochs: int = 0) -> ClientFns:
  """Builds client_init / client_step / client_final.

  Args:
    loss_fn: (params, x [B, ...], y [B], frozen, weights=None) -> scalar:
      the mean loss, or with weights [B] the weighted sum (masked batches).
    optimizer: the client's optax optimizer (fresh state every task).
    batch_size: examples per local step (expected, under `poisson`), drawn
      from the client's shard with the task's own key by `sampler`.
    local_steps: number of `step` calls per task (without `local_epochs`).
    sampler: an `afl.sampling.Sampler`; default with replacement.
    local_epochs: > 0 (shuffle): each task runs local_epochs * ceil(N / B)
      steps, N its client's shard size; the program runs the largest
      client's count and the steps past a client's own are no-ops.
    dp: when given, gradients are DP-SGD gradients (afl.privacy.dp_sgd), with
      noise drawn from the task's own key stream.
    data_attack: `afl.attacks` data attack fn(x, y, key, is_malicious);
      applied to every batch, a no-op for honest clients (a mask, not a
      Python branch, so it vmaps).
    grad_microbatch: non-DP steps: when > 0 and < batch_size, the batch
      gradient is the mean of the gradients of consecutive micro-batches of
      this many examples (it must divide batch_size), unrolled in one
      program. The same gradient up to float rounding (for mean losses), with
      activations small enough to stay in cache (benchmarks/NOTES.md).

  Returns:
    ClientFns whose `final(state, start_params)` gives (delta, mean loss),
    delta = trained params - start params.
  """
  if sampler is None:
    sampler = sampling.Sampler("with_replacement", batch_size)
  if local_epochs:
    per_epoch = -(-sampler.max_shard // batch_size)
    local_steps = local_epochs * per_epoch
  if grad_microbatch and grad_microbatch < batch_size:
    if batch_size % grad_microbatch:
      raise ValueError(f"grad_microbatch={grad_microbatch} must divide "
                       f"batch_size={batch_size}")
    parts = batch_size // grad_microbatch
  else:
    parts = 1

  def loss_and_grad(params, x, y, frozen, mask=None):
    """The batch mean, or with `mask` the mean over the valid examples (0
    for an empty batch: the loss weighted by mask / count)."""
    w = (None if mask is None else
         mask / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32))

    def value_and_grad(lo, hi):
      args = (x, y) if lo is None else (x[lo:hi], y[lo:hi])
      weights = () if w is None else ((w,) if lo is None else (w[lo:hi],))
      return jax.value_and_grad(loss_fn)(params, *args, frozen, *weights)
    if parts == 1:
      return value_and_grad(None, None)
    m = grad_microbatch
    out = [value_and_grad(i * m, (i + 1) * m) for i in range(parts)]
    # Means of equal parts average; weighted sums add up.
    return jax.tree_util.tree_map(
        lambda *a: sum(a) / parts if w is None else sum(a), *out)

  def init(params, root_key, client_id, task_index):
    key = task_key(root_key, client_id, task_index)
    return ClientState(params=params, opt_state=optimizer.init(params),
                       key=key, loss_sum=jnp.zeros((), jnp.float32),
                       step=jnp.zeros((), jnp.int32),
                       epoch_key=jax.random.fold_in(key, 3))

  def sample(state: ClientState, data: ClientData, client_id):
    key, sub = jax.random.split(state.key)
    start = data.offsets[client_id]
    size = data.offsets[client_id + 1] - start
    pos, mask = sampler.positions(sub, size, state.step, state.epoch_key)
    return key, sub, start, size, pos, mask

  def count(state: ClientState, data: ClientData, client_id):
    def one(st, _):
      key, *_, mask = sample(st, data, client_id)
      return st.replace(key=key, step=st.step + 1), jnp.sum(mask)
    return jax.lax.scan(one, state, None, length=local_steps)[1]

  def step(state: ClientState, data: ClientData, client_id, bucket=None):
    key, sub, start, size, pos, mask = sample(state, data, client_id)
    if bucket is not None:  # the caller knows the batch fits
      pos, mask = pos[:bucket], mask[:bucket]
    idx = data.indices[start + pos]
    x, y = data.x[idx], data.y[idx]
    if data_attack is not None:
      x, y = data_attack(x, y, jax.random.fold_in(sub, 2),
                         data.malicious[client_id])
    frozen = data.frozen
    if dp is not None:
      # A key off the sampling stream, so batches match the non-DP run.
      noise_key = jax.random.fold_in(sub, 1)
      grads, aux = dp_sgd.dp_sgd_gradient(
          lambda p, ex: loss_fn(p, ex[0][None], ex[1][None], frozen),
          state.params, (x, y), mask, noise_key, dp.clip_norm,
          dp.noise_multiplier, dp.microbatch_size, denominator=batch_size,
          packed=sampler.kind == "poisson" and bucket is None)
      loss = aux["loss"]  # the batch's mean loss, from the per-example pass
    else:
      loss, grads = loss_and_grad(state.params, x, y, frozen,
                                  mask if sampler.masked else None)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new = ClientState(params=optax.apply_updates(state.params, updates),
                      opt_state=opt_state, key=key,
                      loss_sum=state.loss_sum + loss, step=state.step + 1,
                      epoch_key=state.epoch_key)
    if not local_epochs:
      return new
    # Past this client's own local_epochs * ceil(N / B) steps: a no-op.
    active = state.step < local_epochs * ((size + batch_size - 1)
                                          // batch_size)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new,
                                  state)

  def final(state: ClientState, start_params):
    delta = jax.tree_util.tree_map(jnp.subtract, state.params, start_params)
    if local_epochs:
      return delta, state.loss_sum / jnp.maximum(state.step, 1)
    return delta, state.loss_sum / local_steps

  if sampler.kind != "poisson":
    return ClientFns(init, step, final, local_steps)
  p = sampler.padded_size
  buckets = tuple(sorted({min(p, b) for b in range(batch_size, p + 4, 4)}))
  return ClientFns(init, step, final, local_steps, count, buckets)


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
  """Row `index` of a cohort's stacked output pytree, sliced when used."""
  stacked: Any
  index: int


_take_row = jax.jit(lambda tree, i: jax.tree_util.tree_map(
    lambda a: a[i], tree))
_take_rows = jax.jit(lambda tree, idx: jax.tree_util.tree_map(
    lambda a: a[idx], tree))


def as_tree(x):
  """A task's delta as a pytree (a `Row` is sliced out of its cohort)."""
  if isinstance(x, Row):
    return _take_row(x.stacked, np.int32(x.index))
  return x


def stack_rows(items):
  """Stacks task deltas (pytrees or Rows) into one [n, ...] pytree; rows of
  one cohort are gathered in a single program."""
  first = items[0]
  if isinstance(first, Row) and all(
      isinstance(r, Row) and r.stacked is first.stacked for r in items):
    return _take_rows(first.stacked,
                      np.asarray([r.index for r in items], np.int32))
  if jax.default_backend() == "cpu":
    # Rows of several cohorts: gathered on the host, which holds the
    # device's memory here; one copy per leaf and nothing compiled, where
    # a jitted stack of a thousand rows takes a program per buffer size.
    treedef = jax.tree_util.tree_structure(
        first.stacked if isinstance(first, Row) else first)
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(x) for x in host_rows(items)])
  return stack_trees(*[as_tree(r) for r in items])


def regather(rows: list, size: int) -> list:
  """Rows of one cohort copied into a new [size, ...] array (`size` >=
  len(rows), padded with the first row) and returned as Rows of it."""
  idx = np.full(size, rows[0].index, np.int32)
  idx[:len(rows)] = [r.index for r in rows]
  stacked = rows[0].stacked
  if jax.default_backend() == "cpu":  # on the host, as in stack_rows
    stacked = jax.tree_util.tree_map(
        lambda a: jax.device_put(np.take(np.asarray(a), idx, axis=0)),
        stacked)
  else:
    stacked = _take_rows(stacked, idx)
  return [Row(stacked, i) for i in range(len(rows))]


def host_rows(items) -> list:
  """The leaves of `stack_rows(items)` as numpy arrays, built on the host:
  each cohort is copied off the device once and indexed there, so stacking
  thousands of rows (a checkpoint) compiles nothing."""
  first = items[0]
  shapes = ([(x.shape[1:], x.dtype)
             for x in jax.tree_util.tree_leaves(first.stacked)]
            if isinstance(first, Row) else
            [(np.shape(x), x.dtype) for x in jax.tree_util.tree_leaves(first)])
  # Aligned: a checkpoint hands them to orbax through jax.device_put,
  # which then copies nothing.
  out = [aligned.aligned_empty((len(items),) + s, d) for s, d in shapes]
  cohorts = {}
  for pos, r in enumerate(items):
    if isinstance(r, Row):
      c = cohorts.setdefault(id(r.stacked), (r.stacked, [], []))
      c[1].append(pos)
      c[2].append(r.index)
    else:
      for o, x in zip(out, jax.tree_util.tree_leaves(r)):
        o[pos] = np.asarray(x)
  for stacked, positions, indices in cohorts.values():
    for o, x in zip(out, jax.tree_util.tree_leaves(stacked)):
      # np.take, not x[indices]: several times faster for rows of floats.
      o[positions] = np.take(np.asarray(x), indices, axis=0)
  return out


def _stack(*trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


stack_trees = jax.jit(_stack)
