"""Backends that train a cohort of client tasks, and how they are chosen.

A backend runs the pure client functions of `afl.client.make_client_fns`
over a cohort of tasks; all backends give the same results:

- `vmap`: the padded cohort as one jitted program, `jax.vmap` over clients
  and `lax.scan` over local steps (the accelerator path); on CPU the cohort
  runs as `lax.map` over chunks of a few vmapped clients, which keeps each
  chunk's parameters in cache;
- `loop`: a Python loop over clients and steps of jitted calls (faster on
  XLA:CPU, where vmapped or scanned convolutions are slow; see
  benchmarks/NOTES.md);
- `debug`: the same loop without jit, for stepping through in a debugger.

`workers` > 1 splits a cohort into that many contiguous slices trained
concurrently from host threads (one per CPU core); each slice's programs are
then compiled single-threaded, since small per-client ops use cores better
side by side than split across them (benchmarks/NOTES.md).

With a device mesh (`client_mesh`) the vmap backend shards the cohort axis
over the devices; `resolve_*` turn a config's `auto` settings into values
for the platform at hand.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from afl.client import ClientData, ClientFns, Row, stack_trees


def _vmap_cohort(fns: ClientFns, chunk: int):
  """(versions [U, ...], which [P], root, ids [P], tasks [P], data) ->
  stacked (delta, loss) [P, ...]; task i starts from versions[which[i]].

  Tasks index their start version inside the program, so a cohort never
  stacks one parameter copy per client on the host. chunk > 0: `lax.map`
  over chunks of `chunk` vmapped clients."""
  def one(versions, which, root_key, client_id, task_index, data):
    params = jax.tree_util.tree_map(lambda v: v[which], versions)
    state = fns.init(params, root_key, client_id, task_index)
    state, _ = jax.lax.scan(lambda s, _: (fns.step(s, data, client_id), None),
                            state, None, length=fns.local_steps)
    return fns.final(state, params)

  def cohort(versions, which, root_key, ids, tasks, data):
    if chunk and chunk < ids.shape[0]:
      return jax.lax.map(
          lambda a: one(versions, a[0], root_key, a[1], a[2], data),
          (which, ids, tasks), batch_size=chunk)
    return jax.vmap(one, in_axes=(None, 0, None, 0, 0, None))(
        versions, which, root_key, ids, tasks, data)
  return cohort


class Backend:
  """Trains a list of tasks and returns one (delta, loss) per task.

  Call as `backend(start_params, client_ids, task_indices, root_key, data)`
  with `start_params` a list of pytrees (one per task; tasks that share a
  version share the same arrays) and ids/indices as int sequences. Deltas
  come back as pytrees (loop, debug) or `Row`s of the cohort's stacked
  output (vmap); `as_tree` and `stack_rows` take either.
  """

  def __init__(self, fns: ClientFns, kind: str, mesh=None, workers: int = 1,
               chunk: int = 0):
    """Args:
      fns: the client functions.
      kind: "vmap", "loop" or "debug".
      mesh: a 1-D `jax.sharding.Mesh` with axis "clients"; the vmap backend
        then shards the cohort axis over its devices (GSPMD places the
        collectives) and pads cohorts to a multiple of the device count.
      workers: host threads training disjoint slices of a cohort at once.
      chunk: vmap only, without a mesh: clients per `lax.map` step (0: the
        whole cohort in one vmap).
    """
    if workers < 1 or chunk < 0:
      raise ValueError(f"workers={workers} must be >= 1, chunk={chunk} >= 0")
    self.kind = kind
    self.fns = fns
    self.mesh = mesh
    # One program at a time over a mesh: threads could order collectives
    # differently on different hosts.
    self.workers = 1 if kind == "debug" or mesh is not None else workers
    self._data_key = self._data = None
    self.chunk = chunk
    self._pool = (concurrent.futures.ThreadPoolExecutor(self.workers)
                  if self.workers > 1 else None)
    options = ({"xla_cpu_multi_thread_eigen": False}
               if self.workers > 1 and jax.default_backend() == "cpu"
               else None)
    jit = lambda f: jax.jit(f, compiler_options=options)
    if kind == "vmap" and mesh is not None and jax.process_count() > 1:
      # Several hosts: every process gets every row of the result, so the
      # (replicated) server loop reads them as local arrays.
      self._cohort = jax.jit(_vmap_cohort(fns, 0), out_shardings=(
          jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())))
    elif kind == "vmap":
      self._cohort = jit(_vmap_cohort(fns, 0 if mesh is not None else chunk))
    elif kind in ("loop", "debug"):
      wrap = jit if kind == "loop" else (lambda f: f)
      self._init = wrap(fns.init)
      self._step = wrap(fns.step)
      if fns.buckets:
        self._count = wrap(fns.count)
        self._bucket_steps = {b: wrap(functools.partial(fns.step, bucket=b))
                              for b in fns.buckets}
      self._final = wrap(fns.final)
    else:
      raise ValueError(f"unknown client backend {kind!r}")

  def __call__(self, start_params, client_ids, task_indices, root_key,
               data: ClientData):
    n = len(start_params)
    # vmap slices get at least one full lax.map chunk each (small cohorts
    # are not worth another compiled bucket size).
    slices = min(self.workers,
                 n // max(self.chunk, 1) if self.kind == "vmap" else n)
    if self._pool is None or slices < 2:
      return self._train(start_params, client_ids, task_indices, root_key,
                         data)
    bounds = np.linspace(0, n, slices + 1).astype(int)
    futures = [self._pool.submit(self._train, start_params[lo:hi],
                                 client_ids[lo:hi], task_indices[lo:hi],
                                 root_key, data)
               for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [r for f in futures for r in f.result()]

  def _replicate(self, tree):
    everywhere = jax.sharding.NamedSharding(self.mesh,
                                            jax.sharding.PartitionSpec())
    return jax.tree_util.tree_map(lambda a: global_array(a, everywhere), tree)

  def _train(self, start_params, client_ids, task_indices, root_key, data):
    n = len(start_params)
    if self.kind == "vmap":
      # Pad to a power-of-two bucket with copies of row 0 (results dropped).
      p = bucket_size(n)
      if self.mesh is not None:
        devices = self.mesh.devices.size
        p = -(-p // devices) * devices
      # Distinct start versions (tasks of one version share its arrays),
      # padded to a power of two so few programs are compiled.
      slot, versions = {}, []
      which = np.zeros(p, np.int32)
      for i, params in enumerate(start_params):
        if id(params) not in slot:
          slot[id(params)] = len(versions)
          versions.append(params)
        which[i] = slot[id(params)]
      versions += [versions[0]] * (bucket_size(len(versions)) - len(versions))
      versions = stack_trees(*versions)
      ids = np.zeros(p, np.int32)
      ids[:n] = client_ids
      tasks = np.zeros(p, np.int32)
      tasks[:n] = task_indices
      if self.mesh is not None:
        rows = jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec("clients"))
        which, ids, tasks = (global_array(a, rows) for a in (which, ids,
                                                              tasks))
        if jax.process_count() > 1:  # inputs must be global arrays too
          versions, root_key = self._replicate((versions, root_key))
          if self._data_key is not data:
            self._data_key, self._data = data, self._replicate(data)
          data = self._data
      deltas, losses = self._cohort(versions, which, root_key, ids, tasks,
                                    data)
      if self.mesh is not None and jax.process_count() > 1:
        # Replicated outputs: from here on every process holds its own copy
        # and runs the (deterministic) server loop on its own devices.
        deltas, losses = jax.tree_util.tree_map(
            lambda a: jnp.asarray(np.asarray(a.addressable_data(0))),
            (deltas, losses))
      losses = np.asarray(losses)
      return [(Row(deltas, i), losses[i]) for i in range(n)]
    out = []
    for params, cid, tidx in zip(start_params, client_ids, task_indices):
      cid = np.int32(cid)
      state = self._init(params, root_key, cid, np.int32(tidx))
      sizes = (np.asarray(self._count(state, data, cid)) if self.fns.buckets
               else [None] * self.fns.local_steps)
      for size in sizes:
        state = self.local_step(state, data, cid, size)
      delta, loss = self._final(state, params)
      if self._pool is not None:  # keep this worker's core busy in turn
        jax.block_until_ready(delta)
      out.append((delta, loss))
    return out


  def local_step(self, state, data, cid, size=None):
    """One local step of the loop backends; Poisson batches of `size`
    examples (`fns.count`) run in the smallest bucket that holds them."""
    if size is None:
      return self._step(state, data, cid)
    bucket = next(b for b in self.fns.buckets if b >= size)
    return self._bucket_steps[bucket](state, data, cid)


def global_array(x: np.ndarray, sharding) -> jax.Array:
  """A host array every process holds in full, placed as one global array:
  each process fills only the shards of its own devices
  (`jax.make_array_from_callback`), so the same code runs on one host or
  many."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def client_mesh(devices=None):
  """A 1-D mesh (axis "clients") over `devices` (default: all devices, of
  every process), or None for one device."""
  devices = jax.devices() if devices is None else devices
  if len(devices) < 2:
    return None
  return jax.sharding.Mesh(np.asarray(devices), ("clients",))


def resolve_backend(kind: str, platform: str | None = None,
                    has_conv: bool = True) -> str:
  """`auto` -> `vmap` on accelerators; on CPU `loop` for conv nets and
  `vmap` for dense-only models.

  Measured on XLA:CPU (benchmarks/RESULTS.md): a vmapped conv with per-client
  kernels becomes a slow grouped convolution and convs inside lax.scan are
  ~10x slower, so conv nets loop over jitted steps; dense-only models gain
  from one batched program. On GPU/TPU one vmapped program per cohort is the
  point of afl.
  """
  if kind != "auto":
    return kind
  platform = platform or jax.default_backend()
  if platform == "cpu":
    return "loop" if has_conv else "vmap"
  return "vmap"


def _cpu_cores() -> int:
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def resolve_workers(workers: int, platform: str | None = None) -> int:
  """0 (auto) -> this process's CPU cores on CPU, 1 on accelerators."""
  if workers:
    return workers
  platform = platform or jax.default_backend()
  return _cpu_cores() if platform == "cpu" else 1


def resolve_chunk(chunk: int, platform: str | None = None) -> int:
  """0 (auto) -> 8 clients per lax.map step on CPU (measured best for the
  MLP workload, benchmarks/NOTES.md), the whole cohort on accelerators."""
  if chunk:
    return chunk
  platform = platform or jax.default_backend()
  return 8 if platform == "cpu" else 0


def resolve_grad_microbatch(microbatch: int, batch_size: int,
                            platform: str | None = None,
                            image_conv: bool = True) -> int:
  """0 (auto) -> micro-batches of 16 examples for afl's image conv nets on
  CPU when 16 divides a larger batch (their activations then stay in cache:
  1.03-1.12x the whole-batch step, benchmarks/NOTES.md), else the whole
  batch (0). Other values are returned as given, >= batch_size as 0."""
  if microbatch:
    return microbatch if microbatch < batch_size else 0
  platform = platform or jax.default_backend()
  if (platform == "cpu" and image_conv and batch_size > 16
      and batch_size % 16 == 0):
    return 16
  return 0


def bucket_size(n: int) -> int:
  """Pads cohorts to powers of two so XLA compiles a handful of programs."""
  return 1 << max(0, (n - 1).bit_length())
