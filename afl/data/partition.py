"""Splitting a dataset across simulated clients.

A `Partition` stores every client's example indices in one CSR layout
(`indices` plus `offsets`), so memory is O(num_examples + num_clients) and a
100,000-client federation costs a few hundred kilobytes of offsets rather than
100,000 Python arrays.

All partitioners are pure functions of their arguments and a
`np.random.Generator`: the same seed gives the same split. `REGISTRY` names
them for `data.partition`, each with its parameters' dataclass; a factory
takes `labels`, `num_clients`, `rng` and `min_size` beside them.

  rng = np.random.default_rng(seed)
  part = dirichlet(train_y, num_clients=100, alpha=0.3, rng=rng, min_size=10)
  x_c = train_x[part.client_indices(c)]

References:
  Hsu, Qi, Brown. "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification." arXiv:1909.06335 (2019).
  Yurochkin et al. "Bayesian Nonparametric Federated Learning of Neural
  Networks." ICML 2019 (per-class Dirichlet proportions).
  Li, Diao, Chen, He. "Federated Learning on Non-IID Data Silos: An
  Experimental Study." ICDE 2022 (NIID-Bench; the N / C balance cap).
"""
import dataclasses

import numpy as np

from afl import registry as registry_lib
from afl import validate as v

REGISTRY = registry_lib.Registry("partition")


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
  """Client shards in CSR layout.

  Attributes:
    indices: int32 [total]; example ids, grouped by client.
    offsets: int64 [num_clients + 1]; client `c` owns
      `indices[offsets[c]:offsets[c + 1]]`.
  """
  indices: np.ndarray
  offsets: np.ndarray

  def __post_init__(self):
    if self.indices.ndim != 1 or self.indices.dtype != np.int32:
      raise TypeError(f"Partition.indices must be 1-D int32, got "
                      f"{self.indices.dtype}{list(self.indices.shape)}")
    if self.offsets.ndim != 1 or self.offsets.dtype != np.int64:
      raise TypeError(f"Partition.offsets must be 1-D int64, got "
                      f"{self.offsets.dtype}{list(self.offsets.shape)}")
    if (self.offsets.size < 1 or self.offsets[0] != 0
        or self.offsets[-1] != self.indices.size
        or np.any(np.diff(self.offsets) < 0)):
      raise ValueError("Partition.offsets must start at 0, be non-decreasing "
                       "and end at len(indices)")

  @property
  def num_clients(self) -> int:
    return self.offsets.size - 1

  @property
  def num_examples(self) -> int:
    return self.indices.size

  def sizes(self) -> np.ndarray:
    """int64 [num_clients]: number of examples each client holds."""
    return np.diff(self.offsets)

  def client_indices(self, c: int) -> np.ndarray:
    """The example ids of client `c` (a view into `indices`)."""
    if not 0 <= c < self.num_clients:
      raise IndexError(f"client {c} out of range [0, {self.num_clients})")
    return self.indices[self.offsets[c]:self.offsets[c + 1]]

  def client_ids(self) -> np.ndarray:
    """int32 [total]: the owning client of each position in `indices`."""
    return np.repeat(np.arange(self.num_clients, dtype=np.int32), self.sizes())


def from_sizes(perm: np.ndarray, sizes: np.ndarray) -> Partition:
  """Cuts a permutation of the examples into consecutive shards of `sizes`."""
  offsets = np.zeros(len(sizes) + 1, np.int64)
  np.cumsum(sizes, out=offsets[1:])
  return Partition(np.asarray(perm, np.int32), offsets)


def from_assignment(example_ids: np.ndarray, client_of: np.ndarray,
                    num_clients: int, rng: np.random.Generator) -> Partition:
  """Builds a Partition from an (example, client) assignment.

  Args:
    example_ids: int [n]; the examples being assigned.
    client_of: int [n]; the client each example goes to.
    num_clients: number of clients (clients with no example get empty shards).
    rng: shuffles the order inside each shard, so that a shard is not sorted
      by class (a client reading a prefix would otherwise see one class).

  Returns:
    The Partition.
  """
  shuffle = rng.permutation(example_ids.size)
  example_ids, client_of = example_ids[shuffle], client_of[shuffle]
  # A stable integer sort groups by client in O(n) (radix) and keeps the
  # shuffled order inside each client.
  order = np.argsort(client_of, kind="stable")
  sizes = np.bincount(client_of, minlength=num_clients)
  return from_sizes(example_ids[order], sizes)


def check_enough(num_examples: int, num_clients: int, min_size: int):
  """Raises ValueError unless num_examples can give num_clients >= 1
  clients min_size >= 0 examples each."""
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  if min_size < 0:
    raise ValueError(f"min_size must be >= 0, got {min_size}")
  if min_size * num_clients > num_examples:
    raise ValueError(
        f"dataset too small for num_clients={num_clients}: {num_examples} "
        f"examples < min_size={min_size} x {num_clients} clients; lower "
        f"num_clients or data.min_shard_size, or use a larger dataset")


def iid(num_examples: int, num_clients: int, rng: np.random.Generator, *,
        min_size: int = 1) -> Partition:
  """A shuffled equal split: shard sizes differ by at most one.

  Args:
    num_examples: dataset size N.
    num_clients: number of clients C.
    rng: source of the shuffle.
    min_size: smallest allowed shard (N // C must reach it).

  Returns:
    The Partition.

  >>> p = iid(10, 3, np.random.default_rng(0))
  >>> p.sizes().tolist()
  [4, 3, 3]
  """
  check_enough(num_examples, num_clients, min_size)
  base, extra = divmod(num_examples, num_clients)
  sizes = np.full(num_clients, base, np.int64)
  sizes[:extra] += 1
  return from_sizes(rng.permutation(num_examples), sizes)


def _dirichlet_counts(class_counts: np.ndarray, num_clients: int,
                      alpha: float, rng: np.random.Generator) -> np.ndarray:
  """One draw of the [K, C] matrix of examples per (class, client)."""
  num_examples = int(class_counts.sum())
  held = np.zeros(num_clients, np.int64)
  counts = np.empty((class_counts.size, num_clients), np.int64)
  conc = np.full(num_clients, float(alpha))
  for k, n_k in enumerate(class_counts):  # K is small; C is vectorized.
    # numpy's Dirichlet sampler stays finite for tiny alpha (it switches to
    # a beta construction there).
    p = rng.dirichlet(conc)
    capped = np.where(held < num_examples / num_clients, p, 0.0)
    if capped.sum() > 0:  # All-zero only if the open clients drew p == 0.
      p = capped / capped.sum()
    # Cut points floor(cumsum(p) * n_k) split the class exactly (no example
    # lost to rounding). Walking the clients in a fresh random order per
    # class decorrelates the rounding: in a fixed order, near-uniform p
    # rounds the same clients down in every class and leaves them empty.
    order = rng.permutation(num_clients)
    cuts = np.floor(np.cumsum(p[order]) * n_k).astype(np.int64)
    cuts[-1] = n_k  # Against float drift in the cumsum.
    counts[k, order] = np.diff(cuts, prepend=0)
    held += counts[k]
  return counts


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
              rng: np.random.Generator, *, min_size: int = 1,
              max_tries: int = 100) -> Partition:
  """Per-class Dirichlet(alpha) label skew.

  For each class k, proportions p_k ~ Dir(alpha * 1_C) over the clients
  decide how the (shuffled) examples of class k are cut among them. Small
  alpha gives each client few classes; large alpha approaches IID. As in
  NIID-Bench, a client already holding N / C examples gets no share of later
  classes, which keeps shard sizes from running away. The draw is repeated
  until every shard holds at least `min_size` examples.

  Args:
    labels: int [N] class labels.
    num_clients: number of clients C.
    alpha: Dirichlet concentration (> 0).
    rng: source of all randomness.
    min_size: smallest allowed shard.
    max_tries: draws before giving up with a ValueError.

  Returns:
    The Partition.

  >>> y = np.repeat(np.arange(4), 25)
  >>> p = dirichlet(y, 5, alpha=100.0, rng=np.random.default_rng(0))
  >>> int(p.sizes().sum())
  100
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}")
  num_examples = labels.size
  check_enough(num_examples, num_clients, min_size)
  classes, labels_dense = np.unique(labels, return_inverse=True)
  by_class = np.argsort(labels_dense, kind="stable")
  class_counts = np.bincount(labels_dense, minlength=classes.size)
  class_starts = np.concatenate([[0], np.cumsum(class_counts)])
  for _ in range(max_tries):
    counts = _dirichlet_counts(class_counts, num_clients, alpha, rng)
    if counts.sum(axis=0).min() >= min_size:
      break
  else:
    smallest = int(counts.sum(axis=0).min())
    raise ValueError(
        f"dirichlet partition: after {max_tries} draws some client still has "
        f"fewer than min_size={min_size} examples (last draw's smallest: "
        f"{smallest}; alpha={alpha}, num_clients={num_clients}, "
        f"{num_examples} examples); raise data.dirichlet_alpha, lower "
        f"data.min_shard_size or lower num_clients")

  example_ids = np.empty(num_examples, np.int64)
  client_of = np.empty(num_examples, np.int64)
  for k in range(classes.size):  # K is small (classes), C is vectorized.
    lo, hi = class_starts[k], class_starts[k + 1]
    example_ids[lo:hi] = rng.permutation(by_class[lo:hi])
    client_of[lo:hi] = np.repeat(np.arange(num_clients), counts[k])
  return from_assignment(example_ids, client_of, num_clients, rng)


def quantity_skew(num_examples: int, num_clients: int, sigma: float,
                  rng: np.random.Generator, *, min_size: int = 1) -> Partition:
  """Log-normal shard sizes with IID labels.

  Each client draws a weight w_c ~ LogNormal(0, sigma); after giving every
  client `min_size` examples, the rest are shared in proportion to w
  (largest-remainder rounding, so sizes sum to N exactly). sigma = 0 gives an
  equal split.

  Args:
    num_examples: dataset size N.
    num_clients: number of clients C.
    sigma: log-normal scale (>= 0); larger means more unequal sizes.
    rng: source of all randomness.
    min_size: smallest allowed shard.

  Returns:
    The Partition.

  >>> p = quantity_skew(100, 4, sigma=1.0, rng=np.random.default_rng(0))
  >>> int(p.sizes().sum()), bool(p.sizes().min() >= 1)
  (100, True)
  """
  if not sigma >= 0:
    raise ValueError(f"sigma must be >= 0, got {sigma}")
  check_enough(num_examples, num_clients, min_size)
  weights = rng.lognormal(0.0, sigma, num_clients)
  rest = num_examples - min_size * num_clients
  share = weights / weights.sum() * rest
  sizes = np.floor(share).astype(np.int64)
  short = rest - int(sizes.sum())
  if short > 0:
    # Largest remainders first; index order breaks ties deterministically.
    top = np.argsort(-(share - sizes), kind="stable")[:short]
    sizes[top] += 1
  sizes += min_size
  return from_sizes(rng.permutation(num_examples), sizes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DirichletParams:
  dirichlet_alpha: float = 0.5

  def validate(self, p):
    v.in_range(f"{p}.dirichlet_alpha", self.dirichlet_alpha, 0, lo_open=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantitySkewParams:
  quantity_sigma: float = 1.0

  def validate(self, p):
    v.in_range(f"{p}.quantity_sigma", self.quantity_sigma, 0)


@REGISTRY.register("iid")
def _iid(*, labels, **context):
  return iid(labels.size, **context)


@REGISTRY.register("dirichlet", params=DirichletParams)
def _dirichlet(*, dirichlet_alpha, labels, **context):
  return dirichlet(labels, alpha=dirichlet_alpha, **context)


@REGISTRY.register("quantity_skew", params=QuantitySkewParams)
def _quantity_skew(*, quantity_sigma, labels, **context):
  return quantity_skew(labels.size, sigma=quantity_sigma, **context)


def make(name: str, labels: np.ndarray, num_clients: int,
         rng: np.random.Generator, *, min_size: int = 1,
         **params) -> Partition:
  """Partitioner `name` of `REGISTRY`; `params`: its dataclass's fields."""
  if name not in REGISTRY:
    raise ValueError(f"unknown partition {name!r}; known: {REGISTRY.names()}")
  entry = REGISTRY[name]
  return entry.build(entry.params(**params), labels=np.asarray(labels),
                     num_clients=num_clients, rng=rng, min_size=min_size)


def summarize(partition: Partition, labels: np.ndarray,
              num_classes: int) -> dict:
  """Statistics of a partition for the run log.

  Args:
    partition: the split.
    labels: int [N] labels of the partitioned examples.
    num_classes: number of classes.

  Returns:
    A dict with `num_clients`, `num_examples`, `size_min`, `size_median`,
    `size_max`, `size_mean`, `num_empty`, `classes_per_client` (mean number of
    distinct labels per non-empty client) and `label_tv` (mean over
    non-empty clients of the total-variation distance between the client's
    label distribution and the global one; 0 for IID, up to 1 - 1/K-ish for
    one-class clients).
  """
  labels = np.asarray(labels)
  sizes = partition.sizes()
  held = labels[partition.indices].astype(np.int64)
  if held.size and (held.min() < 0 or held.max() >= num_classes):
    raise ValueError(f"labels span [{held.min()}, {held.max()}], outside "
                     f"[0, num_classes={num_classes})")
  global_p = np.bincount(held, minlength=num_classes) / max(held.size, 1)
  nonempty = sizes > 0
  classes_sum = 0
  tv_sum = 0.0
  # Client blocks bound the [block, K] histogram's memory for 100k clients
  # with many classes; each block is one bincount, not a Python loop per
  # client.
  block = max(1, (1 << 22) // max(num_classes, 1))
  for c0 in range(0, partition.num_clients, block):
    c1 = min(c0 + block, partition.num_clients)
    lo, hi = partition.offsets[c0], partition.offsets[c1]
    local = np.repeat(np.arange(c1 - c0), sizes[c0:c1])
    hist = np.bincount(local * num_classes + held[lo:hi],
                       minlength=(c1 - c0) * num_classes)
    hist = hist.reshape(c1 - c0, num_classes)
    ok = nonempty[c0:c1]
    p = hist[ok] / sizes[c0:c1][ok, None]
    classes_sum += int((hist[ok] > 0).sum())
    tv_sum += float(0.5 * np.abs(p - global_p).sum())
  num_nonempty = max(int(nonempty.sum()), 1)
  return {
      "num_clients": partition.num_clients,
      "num_examples": partition.num_examples,
      "size_min": int(sizes.min()) if sizes.size else 0,
      "size_median": float(np.median(sizes)) if sizes.size else 0.0,
      "size_max": int(sizes.max()) if sizes.size else 0,
      "size_mean": float(sizes.mean()) if sizes.size else 0.0,
      "num_empty": int((~nonempty).sum()),
      "classes_per_client": classes_sum / num_nonempty,
      "label_tv": tv_sum / num_nonempty,
  }


def format_summary(d: dict) -> str:
  """One log line for `summarize`'s dict."""
  empty = f", {d['num_empty']} empty" if d.get("num_empty") else ""
  return (f"partition: {d['num_clients']} clients, {d['num_examples']} "
          f"examples; shard size min/median/max {d['size_min']}/"
          f"{d['size_median']:g}/{d['size_max']}{empty}; "
          f"classes/client {d['classes_per_client']:.2f}; "
          f"label TV to global {d['label_tv']:.3f}")
