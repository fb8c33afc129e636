"""How a client draws the examples of one local step (`client.sampling`).

Every scheme returns, for one step, `(positions [P], mask [P])`: positions
into the client's shard (`0 <= pos < size`) and which of the P slots hold an
example. P is static, so cohorts of clients with different shard sizes vmap
as one program.

- `with_replacement`: B positions drawn uniformly with replacement (afl's
  original sampling; an example can appear several times in one batch).
- `poisson`: every example of the shard joins the batch independently with
  probability q = B / N (expected size B). The valid examples come first,
  in shard order; P is the smallest size whose truncation probability
  P(Bin(N, q) > P) is below `TRUNCATION_PROB` for the largest shard (the
  worst case: the variance B (1 - B / N) grows with N). The inclusion test
  compares 32 random bits with floor(q' 2^32), q' the float32 just below
  B / N, so an example's inclusion probability never exceeds B / N.
- `shuffle`: local epochs over the shard without replacement. A task draws
  a uniform permutation of the shard for each epoch (from its own key and
  the epoch number) and walks it in batches of B; the last batch of an
  epoch holds the remaining N mod B examples (the rest masked), so every
  example is touched exactly once per epoch.

What each scheme costs in privacy is in `afl.privacy.ledger`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

SCHEMES = ("with_replacement", "poisson", "shuffle")

# Per-step probability that a Poisson batch has more examples than its
# padded size (the surplus would be dropped), for the largest shard: small
# enough that even under add/remove adjacency, where truncation adds up to
# (1 + e^eps) * steps * TRUNCATION_PROB to delta, it is negligible (README).
TRUNCATION_PROB = 1e-15


def poisson_padded_size(batch_size: int, max_shard: int,
                        tail: float = TRUNCATION_PROB) -> int:
  """Smallest P with P(Bin(max_shard, B / max_shard) > P) < `tail`."""
  n, q = int(max_shard), batch_size / max_shard
  if q >= 1:
    return n
  sizes = np.arange(batch_size, n + 1)
  over = stats.binom.sf(sizes, n, q)  # P(Bin > size)
  return int(sizes[np.argmax(over < tail)]) if (over < tail).any() else n


def truncation_prob(padded: int, shard_sizes, batch_size: int) -> float:
  """max over shards of P(Bin(N, B / N) > padded)."""
  sizes = np.asarray(shard_sizes, np.int64)
  return float(np.max(stats.binom.sf(padded, sizes,
                                     np.minimum(1.0, batch_size / sizes))))


def steps_per_epoch(shard_sizes, batch_size: int) -> np.ndarray:
  """ceil(N / B) per shard."""
  return -(-np.asarray(shard_sizes, np.int64) // batch_size)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """One scheme, with the static sizes the jitted step needs.

  Attributes:
    kind: one of `SCHEMES`.
    batch_size: B (the expected batch size under `poisson`).
    max_shard: the largest shard size M (poisson and shuffle draw M random
      numbers per step; positions >= a client's own size are never used).
    padded_size: P, the static batch shape (B except under `poisson`).
  """
  kind: str
  batch_size: int
  max_shard: int = 0
  padded_size: int = 0

  @classmethod
  def make(cls, kind: str, batch_size: int, shard_sizes) -> "Sampler":
    if kind not in SCHEMES:
      raise ValueError(f"sampling must be one of {SCHEMES}, got {kind!r}")
    m = int(np.max(shard_sizes))
    padded = (poisson_padded_size(batch_size, m) if kind == "poisson"
              else batch_size)
    return cls(kind, batch_size, m, padded)

  @property
  def masked(self) -> bool:
    """False only for `with_replacement`, whose batches are always full."""
    return self.kind != "with_replacement"

  def positions(self, key, size, step, epoch_key):
    """(positions [P] int32, mask [P] bool) of one step.

    Args:
      key: this step's key (`with_replacement`, `poisson`).
      size: the client's shard size N (traced int).
      step: the task's step index (`shuffle`).
      epoch_key: the task's key for its epoch permutations (`shuffle`).
    """
    if self.kind == "with_replacement":
      pos = jax.random.randint(key, (self.batch_size,), 0,
                               jnp.maximum(size, 1))
      return pos, jnp.ones((self.batch_size,), bool)
    if self.kind == "poisson":
      return self._poisson(key, size)
    return self._shuffle(epoch_key, size, step)

  def _poisson(self, key, size):
    m, p = self.max_shard, self.padded_size
    q = jnp.float32(self.batch_size) / jnp.maximum(size, 1).astype(
        jnp.float32)
    q = jnp.nextafter(q, jnp.float32(0))  # at most B / N
    # floor(q * 2^32) <= 2^32 - 1 as uint32, via float32 (exact: q * 2^32
    # is q with its exponent shifted; the clip keeps it below 2^32).
    threshold = jnp.clip(q * jnp.float32(2.0 ** 32), 0.0,
                         jnp.float32(2.0 ** 32 - 256)).astype(jnp.uint32)
    arange = jnp.arange(m)
    included = (jax.random.bits(key, (m,), jnp.uint32) < threshold) & (
        arange < size)
    rank = jnp.cumsum(included) - 1
    slot = jnp.where(included & (rank < p), rank, p)
    pos = jnp.zeros((p,), jnp.int32).at[slot].set(arange, mode="drop")
    count = jnp.minimum(jnp.sum(included), p)
    return pos, jnp.arange(p) < count

  def _shuffle(self, epoch_key, size, step):
    b, m = self.batch_size, self.max_shard
    per_epoch = jnp.maximum((size + b - 1) // b, 1)
    epoch, j = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(epoch_key, epoch), m)
    # The valid positions (< size), in permuted order, first: a uniform
    # permutation of the shard.
    order = jnp.argsort(jnp.where(perm < size, 0, 1) * m + jnp.arange(m))
    valid_first = jnp.concatenate([perm[order], jnp.zeros((b,), perm.dtype)])
    pos = jax.lax.dynamic_slice(valid_first, (j * b,), (b,))
    return pos.astype(jnp.int32), (j * b + jnp.arange(b)) < size


def task_steps(kind: str, local_steps: int, local_epochs: int,
               shard_sizes, batch_size: int) -> np.ndarray:
  """[num_clients] local steps of one task of each client: E ceil(N / B)
  with `local_epochs` E > 0 (shuffle), else `local_steps`."""
  sizes = np.asarray(shard_sizes, np.int64)
  if local_epochs > 0:
    if kind != "shuffle":
      raise ValueError("local_epochs needs sampling='shuffle'")
    return local_epochs * steps_per_epoch(sizes, batch_size)
  return np.full(sizes.shape, local_steps, np.int64)


def epochs_touched(steps, shard_sizes, batch_size: int) -> np.ndarray:
  """Under `shuffle`: how many times one task of `steps` local steps can
  touch an example of each shard, ceil(steps / ceil(N / B))."""
  per_epoch = steps_per_epoch(shard_sizes, batch_size)
  return -(-np.asarray(steps, np.int64) // per_epoch)


def describe(sampler: Sampler, shard_sizes) -> str:
  """One log line on the sampling of a run."""
  if sampler.kind != "poisson":
    return f"client sampling: {sampler.kind}, batch {sampler.batch_size}"
  p = truncation_prob(sampler.padded_size, shard_sizes, sampler.batch_size)
  return (f"client sampling: poisson, expected batch {sampler.batch_size}, "
          f"padded to {sampler.padded_size} (truncation probability "
          f"{p:.2g} per step; accounting is unaffected: see the README)")

