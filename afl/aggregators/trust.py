"""Per-client trust scores with soft quarantine.

Each aggregation round, every valid update x_k is compared with the robust
aggregate a:

  cos_k    = <x_k, a> / (|x_k| |a|), clipped to [-1, 1]
             (1 if |a| = 0: no direction to disagree with;
              0 if |x_k| = 0 < |a|: neutral)
  dnorm_k  = |x_k - a| / median_j |x_j - a|   (median over valid rows; if
             that median is 0, dnorm is 0 for rows at a and +inf otherwise)
  score_k  = 0.5 * (1 + cos_k) * exp(-max(0, dnorm_k - 1))   in [0, 1]

so an update pointing with the aggregate and no farther from it than the
typical update scores near 1, a sign-flipped one near 0, and a far outlier
decays exponentially in its excess distance. Trust is an exponential moving
average per client, trust <- ema * trust + (1 - ema) * score, starting at 1.

Quarantine has hysteresis: after the batch, a client enters quarantine when
its trust is < `threshold` and leaves it when its trust is >
`release_threshold` (> threshold), so a client near the boundary does not
flap. A quarantined client is not dropped: `trust_weights` scales its
weight to `quarantine_scale * trust`, normal clients get 1.

Duplicate client ids in one batch are applied sequentially in row order,
exactly as if the rows had arrived one by one (all scored against the same
aggregate): a client with rows k1 < k2 < ... < kc ends at

  ema^c * trust + sum_i (1 - ema) * ema^(its rows after k_i) * score_ki

computed in closed form with a segment sum (no loop, deterministic).
Quarantine transitions are evaluated once per batch on the final trust.
Rows that are invalid (mask False, non-finite, or id outside
[0, num_clients)) leave trust untouched.
"""
import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from afl.aggregators.median import median_flat


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustConfig:
  """Trust hyperparameters (built from `config.trust.*`).

  Attributes:
    ema: weight of the old trust in the moving average, in [0, 1).
    threshold: trust below this enters quarantine, in (0, 1).
    release_threshold: trust above this leaves quarantine, in
      (threshold, 1].
    quarantine_scale: weight multiplier (times trust) for quarantined
      clients, in (0, 1]; not 0, so a quarantined client can still recover.
  """
  ema: float = 0.8
  threshold: float = 0.4
  release_threshold: float = 0.6
  quarantine_scale: float = 0.1

  def __post_init__(self):
    if not 0.0 <= self.ema < 1.0:
      raise ValueError(f"ema must be in [0, 1), got {self.ema!r}")
    if not 0.0 < self.threshold < 1.0:
      raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
    if not self.threshold < self.release_threshold <= 1.0:
      raise ValueError(
          "release_threshold must be in (threshold, 1], got "
          f"{self.release_threshold!r} with threshold={self.threshold!r}")
    if not 0.0 < self.quarantine_scale <= 1.0:
      raise ValueError(
          f"quarantine_scale must be in (0, 1], got {self.quarantine_scale!r}")


@flax.struct.dataclass
class TrustState:
  score: jax.Array  # float32[num_clients], trust in [0, 1]
  quarantined: jax.Array  # bool[num_clients]


@flax.struct.dataclass
class TrustInfo:
  """What one `trust_update` saw and changed (for logging transitions)."""
  row_score: jax.Array  # float32[K], agreement score (0 for invalid rows)
  row_cos: jax.Array  # float32[K]
  row_dist: jax.Array  # float32[K], distance / median distance
  row_valid: jax.Array  # bool[K], rows that updated trust
  num_quarantined: jax.Array  # int32[], after the update
  entered: jax.Array  # bool[num_clients], entered quarantine this batch
  exited: jax.Array  # bool[num_clients], left quarantine this batch


def trust_init(num_clients: int) -> TrustState:
  """Everyone starts fully trusted and not quarantined."""
  return TrustState(score=jnp.ones((num_clients,), jnp.float32),
                    quarantined=jnp.zeros((num_clients,), bool))


@jax.jit
def agreement_scores(flat: jax.Array, valid: jax.Array, aggregate: jax.Array):
  """[K, D], [K], [D] -> (score, cos, dnorm), each [K] (formula: module doc).

  Invalid rows get score 0, cos 0, dnorm 0.
  """
  x = jnp.where(valid[:, None], flat, 0.0).astype(jnp.float32)
  a = aggregate.astype(jnp.float32)
  x_norm = jnp.sqrt(jnp.sum(x * x, axis=1))
  a_norm = jnp.sqrt(jnp.sum(a * a))
  denom = x_norm * a_norm
  cos = jnp.where(denom > 0, (x @ a) / jnp.where(denom > 0, denom, 1.0), 0.0)
  cos = jnp.where(a_norm > 0, cos, 1.0)
  cos = jnp.clip(cos, -1.0, 1.0)
  dist = jnp.sqrt(jnp.sum(jnp.square(x - a[None, :]), axis=1))
  med = median_flat(dist[:, None], valid)[0]
  dnorm = jnp.where(med > 0, dist / jnp.where(med > 0, med, 1.0),
                    jnp.where(dist > 0, jnp.inf, 0.0))
  score = 0.5 * (1.0 + cos) * jnp.exp(-jnp.maximum(0.0, dnorm - 1.0))
  return (jnp.where(valid, score, 0.0), jnp.where(valid, cos, 0.0),
          jnp.where(valid, dnorm, 0.0))


@functools.partial(jax.jit, static_argnames="cfg")
def trust_update(state: TrustState, client_ids: jax.Array,
                 flat_updates: jax.Array, valid: jax.Array,
                 aggregate: jax.Array,
                 cfg: TrustConfig) -> tuple[TrustState, TrustInfo]:
  """Scores a batch against its robust aggregate and updates trust.

  Args:
    state: current `TrustState`.
    client_ids: [K] int ids in [0, num_clients) (padding rows: anything).
    flat_updates: [K, D] the updates that were aggregated.
    valid: [K] bool; non-finite rows are excluded as well.
    aggregate: [D] the robust aggregate of this batch.
    cfg: `TrustConfig` (static: closed over or passed as a Python object).

  Returns:
    (new state, `TrustInfo`).

  >>> import jax.numpy as jnp
  >>> cfg = TrustConfig(ema=0.5, threshold=0.4, release_threshold=0.6)
  >>> st = trust_init(3)
  >>> x = jnp.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
  >>> st, info = trust_update(st, jnp.array([0, 1, 2]), x, jnp.ones(3, bool),
  ...                         jnp.array([1.0, 0.0]), cfg)
  >>> [round(float(s), 3) for s in st.score], st.quarantined.tolist()
  ([1.0, 0.999, 0.5], [False, False, False])
  """
  num_clients = state.score.shape[0]
  k_rows = client_ids.shape[0]
  ids = client_ids.astype(jnp.int32)
  ok = (valid & jnp.all(jnp.isfinite(flat_updates), axis=1)
        & (ids >= 0) & (ids < num_clients))
  score, cos, dnorm = agreement_scores(flat_updates, ok, aggregate)

  # Sequential EMA over duplicates in closed form: row k is discounted by
  # ema once for every later valid row of the same client.
  same = (ids[:, None] == ids[None, :]) & ok[:, None] & ok[None, :]
  later = jnp.sum(same & (jnp.arange(k_rows)[None, :] >
                          jnp.arange(k_rows)[:, None]), axis=1)
  ema = jnp.float32(cfg.ema)
  contrib = jnp.where(ok, (1.0 - ema) * ema ** later.astype(jnp.float32)
                      * score, 0.0)
  seg = jnp.where(ok, ids, num_clients)  # invalid rows -> dropped bucket
  added = jax.ops.segment_sum(contrib, seg, num_clients + 1)[:num_clients]
  count = jax.ops.segment_sum(ok.astype(jnp.float32), seg,
                              num_clients + 1)[:num_clients]
  trust = jnp.clip(ema ** count * state.score + added, 0.0, 1.0)

  q = state.quarantined
  entered = ~q & (trust < cfg.threshold)
  exited = q & (trust > cfg.release_threshold)
  quarantined = (q | entered) & ~exited
  info = TrustInfo(row_score=score, row_cos=cos, row_dist=dnorm, row_valid=ok,
                   num_quarantined=jnp.sum(quarantined.astype(jnp.int32)),
                   entered=entered, exited=exited)
  return TrustState(score=trust, quarantined=quarantined), info


def trust_weights(state: TrustState, client_ids: jax.Array,
                  cfg: TrustConfig | None = None) -> jax.Array:
  """[K] multipliers for the aggregation weights of a batch.

  Args:
    state: current `TrustState`.
    client_ids: [K] int ids (out-of-range ids are clamped; mask such rows).
    cfg: supplies `quarantine_scale`; None means `TrustConfig()` defaults.

  Returns:
    [K] float32: 1 for normal clients, quarantine_scale * trust for
    quarantined ones. The caller multiplies these into its data weights.

  >>> import jax.numpy as jnp
  >>> st = TrustState(score=jnp.array([0.9, 0.2]),
  ...                 quarantined=jnp.array([False, True]))
  >>> [round(float(w), 3) for w in trust_weights(st, jnp.array([0, 1, 1]))]
  [1.0, 0.02, 0.02]
  """
  scale = (cfg or TrustConfig()).quarantine_scale
  ids = jnp.clip(client_ids.astype(jnp.int32), 0, state.score.shape[0] - 1)
  return jnp.where(state.quarantined[ids], scale * state.score[ids],
                   1.0).astype(jnp.float32)
