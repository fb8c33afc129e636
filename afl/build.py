"""`build(cfg)`: every component of a run from a validated config.

The components are plain objects with no knowledge of the loop; the loop
(`afl.simulation`) holds the rest as plain data. Seeds: the partition and
the scheduler draw from independent numpy generators and everything else
from the root JAX key, all fixed by `cfg.seed`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from afl import attacks
from afl import backend as backend_lib
from afl import client as client_lib
from afl import communication as comm_lib
from afl import evaluation
from afl import models
from afl import optim
from afl import sampling as sampling_lib
from afl.config import ExperimentConfig
from afl.data import hf_local
from afl.data import loaders
from afl.data import partition as partition_lib
from afl.data import text as text_lib
from afl.privacy import ledger as privacy_lib
from afl.scheduler import Scheduler
from afl.server import build as server_build
from afl.server import modes as modes_lib
from afl.server import root as root_lib
from afl.validate import ConfigError


@dataclasses.dataclass(eq=False)
class Components:
  cfg: ExperimentConfig
  dataset: Any
  partition: Any
  num_examples: np.ndarray  # [num_clients] shard sizes
  malicious: np.ndarray  # [num_clients] bool
  data: client_lib.ClientData
  params: Any  # the initial global model
  num_params: int
  client_root: jax.Array  # clients' root key
  backend: Any  # trains tasks: (start params, ids, task indices, ...)
  backend_kind: str
  privacy: privacy_lib.PrivacyLedger
  server: Any  # afl.server.Server
  mode: Any  # an afl.server.modes object
  comm: comm_lib.Communication
  scheduler: Scheduler
  evaluate: Callable  # params -> (accuracy, loss)
  evaluate_backdoor: Callable | None  # params -> (attack success, loss)


def seeds(seed: int):
  part_ss, sched_ss = np.random.SeedSequence(seed).spawn(2)
  return (np.random.default_rng(part_ss), np.random.default_rng(sched_ss),
          jax.random.PRNGKey(seed))


def load_data(cfg: ExperimentConfig, log: Callable = print):
  """The dataset of `cfg.data`; a malformed file is a ConfigError naming
  it (one line), a missing source a FileNotFoundError."""
  try:
    return _load_data(cfg, log)
  except ValueError as e:
    raise ConfigError(f"data: {e}") from None


def _load_data(cfg: ExperimentConfig, log: Callable):
  d = cfg.data
  tokenizer = lambda: d.tokenizer or (
      models.resolve_checkpoint(cfg.model.checkpoint)
      if cfg.model.checkpoint else None)
  hf = dict(image_key=d.hf_image_key, text_key=d.text_key,
            label_key=d.hf_label_key, test_split=d.test_split, seed=cfg.seed,
            max_length=d.max_length, tokenizer=tokenizer,
            train_limit=d.train_limit, test_limit=d.test_limit, log=log)
  if hf_local.is_local(d.name):
    return hf_local.load_folder(d.name, **hf)
  if d.name in text_lib.CORPORA:
    return text_lib.load_text_dataset(
        d.name, tokenizer_path=tokenizer(), max_length=d.max_length,
        seed=cfg.seed, train_limit=d.train_limit, test_limit=d.test_limit,
        log=log)
  kwargs = dict(allow_download=d.allow_download, log=log,
                hf_image_key=d.hf_image_key, hf_label_key=d.hf_label_key,
                train_limit=d.train_limit, test_limit=d.test_limit)
  if loaders.canonical(d.name) not in loaders.BUILTIN:
    return hf_local.load_hub(d.name, allow_download=d.allow_download, **hf)
  if d.name == "synthetic":
    kwargs.update(num_train=d.synthetic_train, num_test=d.synthetic_test,
                  shape=tuple(d.synthetic_shape),
                  num_classes=d.synthetic_classes, seed=cfg.seed)
  return loaders.load_image_dataset(d.name, d.dir or None, **kwargs)


def make_partition(cfg: ExperimentConfig, labels, rng, pool=None):
  """Client shards of the training examples, or of those in `pool` (ids)."""
  d = cfg.data
  try:
    part = partition_lib.make(
        d.partition, labels if pool is None else labels[pool],
        cfg.num_clients, rng, min_size=d.min_shard_size,
        **dataclasses.asdict(d.params))
  except ValueError as e:  # e.g. too few examples for num_clients
    raise ConfigError(f"config.data.partition: {e}") from None
  if pool is None:
    return part
  return dataclasses.replace(part,
                             indices=pool[part.indices].astype(np.int32))


def _root_ids(cfg: ExperimentConfig, num_train: int, log: Callable):
  """trust.reference=root: (root example ids, the clients' pool) or None."""
  t = cfg.trust
  if not (t.enabled and t.reference == "root"):
    return None
  if t.root_examples >= num_train:
    raise ConfigError(
        f"config.trust.root_examples: {t.root_examples} leaves none of the "
        f"{num_train} training examples to the clients")
  log(f"trust: reference = the server's update on {t.root_examples} "
      "held-out training examples (FLTrust). ASSUMPTION: the server holds "
      "clean data from the clients' distribution")
  return root_lib.hold_out(num_train, t.root_examples, cfg.seed)


def make_sampler(cfg: ExperimentConfig, shard_sizes, log: Callable = print):
  """The clients' `afl.sampling.Sampler` and [num_clients] steps per task."""
  c = cfg.client
  kind = cfg.sampling()
  smallest = int(np.min(shard_sizes))
  if kind == "poisson" and c.batch_size > smallest:
    raise ConfigError(
        f"config.client.batch_size: {c.batch_size} exceeds the smallest "
        f"shard ({smallest} examples), so poisson sampling cannot have "
        f"q = batch_size / shard size <= 1; lower client.batch_size or "
        f"raise data.min_shard_size")
  sampler = sampling_lib.Sampler.make(kind, c.batch_size, shard_sizes)
  steps = sampling_lib.task_steps(kind, c.local_steps, c.local_epochs,
                                  shard_sizes, c.batch_size)
  log(sampling_lib.describe(sampler, shard_sizes)
      + (f", {c.local_epochs} local epoch(s): {steps.min()}-{steps.max()} "
         "steps per task" if c.local_epochs else ""))
  return sampler, steps


def _client_backend(cfg, apply_fn, privacy, atk, num_classes, data_max,
                    sampler, log):
  c = cfg.client
  client_dp = privacy.client_dp()
  microbatch = 0 if client_dp else backend_lib.resolve_grad_microbatch(
      c.grad_microbatch, c.batch_size,
      image_conv=cfg.model.entry.prop("image_conv"))
  fns = client_lib.make_client_fns(
      client_lib.cross_entropy_loss(apply_fn),
      optim.make_optimizer(c.optimizer, c.lr, dict(c.optimizer_kwargs)),
      c.batch_size, c.local_steps, dp=client_dp,
      data_attack=(atk.data_attack(num_classes, data_max)
                   if atk.has_data_attack else None),
      grad_microbatch=microbatch, sampler=sampler,
      local_epochs=c.local_epochs)
  kind = backend_lib.resolve_backend(
      c.backend, has_conv=cfg.model.entry.prop("conv"))
  mesh = backend_lib.client_mesh() if kind == "vmap" else None
  if mesh is not None:
    log(f"cohorts sharded over {mesh.devices.size} devices")
  backend = backend_lib.Backend(
      fns, kind, mesh, workers=backend_lib.resolve_workers(c.workers),
      chunk=backend_lib.resolve_chunk(c.vmap_chunk))
  log(f"client backend: {kind} (config: {c.backend}), "
      f"{backend.workers} worker thread(s)"
      + (f", gradients in micro-batches of {microbatch}" if microbatch
         else ""))
  return backend, kind


def build(cfg: ExperimentConfig, log: Callable = print) -> Components:
  part_rng, sched_rng, root = seeds(cfg.seed)
  ds = load_data(cfg, log)
  held = _root_ids(cfg, len(ds.train_y), log)
  partition = make_partition(cfg, ds.train_y, part_rng,
                             None if held is None else held[1])
  log(partition_lib.format_summary(
      partition_lib.summarize(partition, ds.train_y, ds.num_classes)))

  init_key, client_root = jax.random.split(root)
  apply_fn, params, frozen = models.build_model(
      cfg.model, ds.num_classes, ds.train_x.shape[1:], init_key, log)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  log(f"model {cfg.model.name}: {num_params:,} federated parameters")

  atk = cfg.attack
  atk.check_against(cfg.num_clients, ds.num_classes)
  malicious = atk.malicious_mask(cfg.num_clients, cfg.seed)
  data_max = float(ds.train_x.max())
  if atk.kind != "none":
    log(f"attack {atk.kind}: {int(malicious.sum())} malicious clients")
  # device_put, not jnp.asarray: on CPU the latter holds a second host
  # copy of the training images (+1 GB instead of +0.5 GB for 2M 8x8
  # images). On CPU the device buffer is host memory (the dataset's own
  # array where it is 64-byte aligned, as the image loaders make it): the
  # dataset's train_x becomes a read-only view of it, one copy in all.
  train_x = jax.device_put(ds.train_x)
  if jax.default_backend() == "cpu":
    ds = dataclasses.replace(ds, train_x=np.asarray(train_x))
  data = client_lib.ClientData(
      x=train_x, y=jnp.asarray(ds.train_y),
      indices=jnp.asarray(partition.indices, jnp.int32),
      offsets=jnp.asarray(partition.offsets, jnp.int32),
      malicious=jnp.asarray(malicious), frozen=frozen)
  num_examples = partition.sizes()
  sampler, task_steps = make_sampler(cfg, num_examples, log)
  privacy = privacy_lib.PrivacyLedger(cfg, cfg.rows_per_aggregation(),
                                      num_examples, sampler, task_steps, log)
  backend, kind = _client_backend(cfg, apply_fn, privacy, atk,
                                  ds.num_classes, data_max, sampler, log)

  reference = (None if held is None else root_lib.RootReference(
      cfg, apply_fn, data, held[0], kind, jax.random.fold_in(root, 3)))
  server, mode = server_build.build(
      cfg, params, jax.random.fold_in(root, 2), reference=reference,
      update_attack=atk.update_attack() if atk.has_update_attack else None,
      mesh=backend_lib.client_mesh(jax.local_devices()), log=log,
      **privacy.server_kwargs())

  evaluate_backdoor = None
  if atk.kind == "backdoor":
    keep = ds.test_y != atk.target  # ASR counts non-target examples
    xt = np.asarray(attacks.stamp_trigger(
        ds.test_x[keep], atk.trigger_size,
        atk.resolved_trigger_value(data_max)))
    # Accuracy against the target label on triggered inputs = ASR.
    evaluate_backdoor = evaluation.make_eval_fn(
        apply_fn, xt, np.full(len(xt), atk.target, np.int32),
        cfg.eval.batch_size, frozen)
  return Components(
      cfg=cfg, dataset=ds, partition=partition, num_examples=num_examples,
      malicious=malicious, data=data, params=params, num_params=num_params,
      client_root=client_root, backend=backend, backend_kind=kind,
      privacy=privacy, server=server, mode=mode,
      comm=comm_lib.Communication(cfg.compression, params),
      scheduler=Scheduler(
          cfg.scheduler, cfg.num_clients, cfg.concurrency, task_steps,
          sched_rng, pattern=modes_lib.REGISTRY[cfg.server.mode].prop(
              "dispatch")),
      evaluate=evaluation.make_eval_fn(apply_fn, ds.test_x, ds.test_y,
                                       cfg.eval.batch_size, frozen),
      evaluate_backdoor=evaluate_backdoor)
