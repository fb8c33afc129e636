"""Label-skew partitioners with a fixed number of labels per client.

`shards` is McMahan et al.'s pathological non-IID split: sort the examples
by label, cut them into `num_clients * shards_per_client` shards of equal
size (sizes differ by at most one), and give every client
`shards_per_client` shards at random. When a class holds a whole number of
shards (Fashion-MNIST with 100 clients x 2: 6,000 = 20 shards of 300), each
shard is one class and a client sees at most `shards_per_client` classes;
otherwise a shard may straddle two.

`classes` is NIID-Bench's "#C = k" label-quantity skew (Li et al. 2022):
every client holds `classes_per_client` distinct classes, and each class's
examples are cut into equal parts among the clients that hold it. The first
clients take the classes in a random cyclic order, so that every class has
a holder (this needs num_clients * classes_per_client >= classes); the
others draw their classes uniformly without replacement.

Both are registered as `data.partition` names (`afl.data.partition`): every
example goes to exactly one client, and the same seed gives the same split.

References:
  McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
  from Decentralized Data", AISTATS (the 2-shards-per-client MNIST split).
  Li, Diao, Chen, He 2022, "Federated Learning on Non-IID Data Silos: An
  Experimental Study", ICDE (label quantity skew, #C = k).
"""
import dataclasses

import numpy as np

from afl import validate as v
from afl.data import partition as partition_lib


def _labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  return labels


def _check_sizes(part: partition_lib.Partition, min_size: int, what: str):
  smallest = int(part.sizes().min())
  if smallest < min_size:
    raise ValueError(f"{what} partition: a client holds {smallest} examples, "
                     f"fewer than min_size={min_size}; lower "
                     "data.min_shard_size or num_clients")


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int,
           rng: np.random.Generator, *, min_size: int = 1
           ) -> partition_lib.Partition:
  """Pathological shards (module doc).

  Args:
    labels: int [N] class labels.
    num_clients: number of clients C.
    shards_per_client: shards s per client (>= 1); C * s <= N.
    rng: source of all randomness.
    min_size: smallest allowed shard.

  Returns:
    The Partition.

  >>> y = np.repeat(np.arange(5), 20)
  >>> p = shards(y, 5, 2, rng=np.random.default_rng(0))
  >>> [len(set(y[p.client_indices(c)])) <= 2 for c in range(5)]
  [True, True, True, True, True]
  """
  labels = _labels(labels)
  n = labels.size
  partition_lib.check_enough(n, num_clients, min_size)
  num_shards = num_clients * shards_per_client
  if not 1 <= shards_per_client or num_shards > n:
    raise ValueError(f"shards_per_client={shards_per_client} x "
                     f"{num_clients} clients needs between 1 and {n} shards")
  # Random order inside a class, then a stable sort by label.
  perm = rng.permutation(n)
  by_label = perm[np.argsort(labels[perm], kind="stable")]
  base, extra = divmod(n, num_shards)
  shard_sizes = np.full(num_shards, base, np.int64)
  shard_sizes[:extra] += 1
  owner = rng.permutation(np.repeat(np.arange(num_clients), shards_per_client))
  client_of = np.repeat(owner, shard_sizes)
  part = partition_lib.from_assignment(by_label, client_of, num_clients, rng)
  _check_sizes(part, min_size, "shards")
  return part


def classes(labels: np.ndarray, num_clients: int, classes_per_client: int,
            rng: np.random.Generator, *, min_size: int = 1
            ) -> partition_lib.Partition:
  """k classes per client, each class split equally among its holders
  (module doc).

  Args:
    labels: int [N] class labels.
    num_clients: number of clients C.
    classes_per_client: k, between 1 and the number of classes K, with
      C * k >= K.
    rng: source of all randomness.
    min_size: smallest allowed shard.

  Returns:
    The Partition.

  >>> y = np.repeat(np.arange(4), 30)
  >>> p = classes(y, 6, 2, rng=np.random.default_rng(0))
  >>> [len(set(y[p.client_indices(c)])) for c in range(6)]
  [2, 2, 2, 2, 2, 2]
  """
  labels = _labels(labels)
  n = labels.size
  partition_lib.check_enough(n, num_clients, min_size)
  names, dense = np.unique(labels, return_inverse=True)
  k_all, k = names.size, classes_per_client
  if not 1 <= k <= k_all or num_clients * k < k_all:
    raise ValueError(f"classes_per_client={k} must be in [1, {k_all}] (the "
                     f"classes present) with num_clients x it >= {k_all}, "
                     f"so that every class has a holder")
  cyclic = rng.permutation(k_all)
  held = np.empty((num_clients, k), np.int64)
  covering = -(-k_all // k)  # clients that take the classes in cyclic order
  for c in range(num_clients):
    if c < covering:
      held[c] = cyclic[(c * k + np.arange(k)) % k_all]
    else:
      held[c] = rng.choice(k_all, k, replace=False)
  example_ids = np.empty(n, np.int64)
  client_of = np.empty(n, np.int64)
  start = 0
  for cls in range(k_all):  # K is small; each class is one vectorized cut.
    members = np.flatnonzero(dense == cls)
    holders = rng.permutation(np.flatnonzero((held == cls).any(axis=1)))
    base, extra = divmod(members.size, holders.size)
    sizes = np.full(holders.size, base, np.int64)
    sizes[:extra] += 1
    stop = start + members.size
    example_ids[start:stop] = rng.permutation(members)
    client_of[start:stop] = np.repeat(holders, sizes)
    start = stop
  part = partition_lib.from_assignment(example_ids, client_of, num_clients,
                                       rng)
  _check_sizes(part, min_size, "classes")
  return part


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardsParams:
  shards_per_client: int = 2

  def validate(self, p):
    v.in_range(f"{p}.shards_per_client", self.shards_per_client, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassesParams:
  classes_per_client: int = 2

  def validate(self, p):
    v.in_range(f"{p}.classes_per_client", self.classes_per_client, 1)


@partition_lib.REGISTRY.register("shards", params=ShardsParams)
def _shards(*, shards_per_client, labels, **context):
  return shards(labels, shards_per_client=shards_per_client, **context)


@partition_lib.REGISTRY.register("classes", params=ClassesParams)
def _classes(*, classes_per_client, labels, **context):
  return classes(labels, classes_per_client=classes_per_client, **context)
