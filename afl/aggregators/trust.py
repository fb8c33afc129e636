"""Per-client trust from leave-one-out agreement, with soft quarantine.

Scoring (`afl.aggregators.trust_scores`). Each valid row x_k of an
aggregation is compared with a reference
that excludes it: the coordinate-wise median r_k of the OTHER reference
rows (`leave_one_out_median`), so an update never votes for itself, or,
given a `reference` g (FLTrust's root update: the server's own training
step on clean held-out data, `afl.server.root`), r_k = g for every row.
The reference rows are the valid rows of clients not in quarantine (all
valid rows when fewer than two of those remain): a quarantined client is
still scored, against the others, but no longer pulls their medians, so a
colluding bloc that has been caught stops shifting the reference by which
the honest rows are judged. With sign(0) = 0, rho_k = |x_k| / median_j |x_j|
over the other reference rows (|x_k| / |g| with a reference), and
c_k = max_{j != k} cos(x_k, x_j) over the other valid rows,

  agree_k = <sign x_k, sign r_k> / sqrt(nnz(x_k) nnz(r_k))   in [-1, 1]
  score_k = clip(agree_k - norm_penalty * max(0, log(rho_k / norm_tolerance))
                 - duplicate_penalty * max(0, (c_k - duplicate_tolerance)
                                              / (1 - duplicate_tolerance)),
                 -1, 1)

`agree_k` is the cosine of the sign vectors: 0 for a random direction, > 0
for an honest update, < 0 for a flipped one. Counting signs instead of
magnitudes keeps a few large coordinates from deciding it (on the
Fashion-MNIST demo its per-row AUC between honest and sign-flipped updates
is 0.91, against 0.75 for the plain cosine with the same reference). Signs
ignore scale, so updates longer than `norm_tolerance` times the typical
one (scaling, noise) lose `norm_penalty` per e-fold of excess length.

The duplicate term is FoolsGold's observation (Fung et al. 2020): honest
non-IID updates are never near copies of each other, while colluding
attackers that compute one malicious vector from the same buffer (ALIE,
IPM, min-max, min-sum, mimic) send identical rows. Such a bloc also drags
the leave-one-out median its way (on the demo under 30% IPM an attacker's
sign agreement with it is +0.18, above the honest rows' +0.02), so sign
agreement alone misses it; the duplicate term does not (on the demo no
honest row's largest cosine with another row reaches 0.9; an IPM row's is
1 whenever a second attacker shares its buffer). A mimicked honest row is
penalized with its copies, once per buffer that copies it. The term costs
a [K, K] Gram matrix, K^2 D multiply-adds per batch.
Without a reference, a batch with fewer than two valid rows scores
nothing; with one, a non-finite or zero reference scores nothing.

Evidence. Per client, a discounted sum and count of its scores,

  total <- decay * total + score,  count <- decay * count + 1,

give its mean agreement m = total / count over about 1 / (1 - decay)
recent participations (decay = 1: all of them), and `arrivals` counts its
scored rows. Several rows of one client in a batch apply in row order, in
closed form (row k is discounted once per later row of its client).

Quarantine is relative to the population: the clients in good standing
(arrived and not quarantined; all arrived ones if none is). With med the
median of their m, each client's deviation is shrunk by its evidence, as
if `prior_count` more arrivals had scored med,

  d = (m - med) * count / (count + prior_count),   z = d / (1.4826 MAD(d))

(MAD over the same clients), and after each batch a client

  enters quarantine  when  z < -z_enter  and  med + d < agreement_floor
                           and arrivals >= min_count,
  leaves it          when  z > -z_release   (z_release < z_enter).

The z test makes the threshold follow the honest clients, however well
non-IID updates agree; leaving quarantined clients out of med and MAD keeps
a large attacking minority from widening the scale it is judged by. The
floor (default 0: no better than a random direction) keeps a clean
population's tail out, since a relative threshold alone always flags
someone; the prior and `min_count` ask for repeated evidence, so that a
batch where attackers outnumber the honest rows (their median then points
the wrong way) cannot condemn a newcomer.

Quarantine is soft: `trust_weights` scales such a client's aggregation
weight by `quarantine_scale`; it is still scored, and released once its
agreement recovers. The reported trust, clip(1 + min(z, 0) / (2 z_enter),
0, 1) (1 before a client's first arrival), is 1 at or above the median and
0.5 at the entry threshold, so it is stationary without an attack.

Rows that are invalid (mask False, non-finite, or id outside
[0, num_clients)) are neither references nor scored.

References:
  Xu et al. 2022, "SignGuard: Byzantine-robust Federated Learning through
  Collaborative Malicious Gradient Filtering", ICDCS (sign statistics);
  Cao et al. 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping", NDSS (per-client trust from directional agreement).
"""
import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from afl import validate as v
from afl.aggregators.median import median_of_sorted
from afl.aggregators.trust_scores import row_scores

_MAD_TO_SD = 1.4826  # MAD of a normal distribution times this = its sd
_MIN_SCALE = 1e-6  # z-score scale floor when (nearly) all means coincide


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustConfig:
  """Trust hyperparameters (built from `config.trust.*`; module doc).

  Attributes:
    decay: weight of past evidence per participation, in (0, 1].
    prior_count: pseudo-arrivals at the population median in each
      client's mean (the confidence term), >= 0.
    min_count: scored arrivals before a client can be quarantined, >= 1.
    z_enter: quarantine below z = -z_enter, > 0.
    z_release: release above z = -z_release, in [0, z_enter).
    agreement_floor: quarantine only when the mean score is below this,
      in (-1, 1].
    norm_tolerance: updates up to this many times the typical norm are
      not penalized, >= 1.
    norm_penalty: score lost per e-fold of norm beyond the tolerance, >= 0.
    duplicate_tolerance: cosine with another row of the batch above which
      a row counts as a near copy, in [0, 1).
    duplicate_penalty: score lost at cosine 1 (linear from the
      tolerance), >= 0; 0 turns the term off.
    quarantine_scale: weight multiplier for quarantined clients, in
      (0, 1]; not 0, so the quarantine stays soft.
  """
  decay: float = 0.9
  prior_count: float = 2.0
  min_count: int = 3
  z_enter: float = 3.0
  z_release: float = 2.0
  agreement_floor: float = 0.0
  norm_tolerance: float = 2.0
  norm_penalty: float = 0.5
  duplicate_tolerance: float = 0.99
  duplicate_penalty: float = 0.5
  quarantine_scale: float = 0.1

  def __post_init__(self):
    self.validate()

  def validate(self, p: str = "trust"):
    """Raises ConfigError("config.<p>.<key>: ...") on a bad value."""
    v.in_range(f"{p}.decay", self.decay, 0, 1, lo_open=True)
    v.in_range(f"{p}.prior_count", self.prior_count, 0)
    v.in_range(f"{p}.min_count", self.min_count, 1)
    v.in_range(f"{p}.z_enter", self.z_enter, 0, lo_open=True)
    v.in_range(f"{p}.z_release", self.z_release, 0)
    if not self.z_release < self.z_enter:
      v.fail(f"{p}.z_release", f"must be < z_enter={self.z_enter}, got "
             f"{self.z_release}")
    v.in_range(f"{p}.agreement_floor", self.agreement_floor, -1, 1,
               lo_open=True)
    v.in_range(f"{p}.norm_tolerance", self.norm_tolerance, 1)
    v.in_range(f"{p}.norm_penalty", self.norm_penalty, 0)
    v.in_range(f"{p}.duplicate_tolerance", self.duplicate_tolerance, 0, 1,
               hi_open=True)
    v.in_range(f"{p}.duplicate_penalty", self.duplicate_penalty, 0)
    v.in_range(f"{p}.quarantine_scale", self.quarantine_scale, 0, 1,
               lo_open=True)


@flax.struct.dataclass
class TrustState:
  score: jax.Array  # float32[num_clients], reported trust in [0, 1]
  quarantined: jax.Array  # bool[num_clients]
  total: jax.Array  # float32[num_clients], discounted sum of scores
  count: jax.Array  # float32[num_clients], discounted number of scores
  arrivals: jax.Array  # int32[num_clients], scored rows so far


@flax.struct.dataclass
class TrustInfo:
  """What one `trust_update` saw and changed (for logging transitions)."""
  row_score: jax.Array  # float32[K] (0 for rows not scored)
  row_agreement: jax.Array  # float32[K], sign agreement
  row_norm_ratio: jax.Array  # float32[K], norm / others' median norm
  row_valid: jax.Array  # bool[K], rows that updated the evidence
  z: jax.Array  # float32[num_clients], robust z (0 before any arrival)
  num_quarantined: jax.Array  # int32[], after the update
  entered: jax.Array  # bool[num_clients], entered quarantine this batch
  exited: jax.Array  # bool[num_clients], left quarantine this batch


def trust_init(num_clients: int) -> TrustState:
  """No evidence yet: everyone trusted, nobody quarantined."""
  zeros = lambda dtype: jnp.zeros((num_clients,), dtype)  # distinct buffers
  return TrustState(score=jnp.ones((num_clients,), jnp.float32),
                    quarantined=zeros(bool), total=zeros(jnp.float32),
                    count=zeros(jnp.float32), arrivals=zeros(jnp.int32))


def _masked_median(values: jax.Array, mask: jax.Array) -> jax.Array:
  s = jnp.sort(jnp.where(mask, values, jnp.inf))
  return median_of_sorted(s[:, None], jnp.sum(mask.astype(jnp.int32)))[0]


def robust_z(total: jax.Array, count: jax.Array, seen: jax.Array,
             population: jax.Array, prior_count: float):
  """Per-client evidence -> (z, shrunk mean), each [N] (module doc).

  Median and MAD are over `population` (a non-empty subset of the `seen`
  clients); the MAD scale is floored at 1e-6; unseen clients get z = 0.
  """
  mean = total / jnp.where(seen, count, 1.0)
  med = _masked_median(mean, population)
  # count >= 1 once a client has arrived, so the ratio is defined.
  dev = jnp.where(seen, (mean - med) * count / (count + prior_count), 0.0)
  scale = _MAD_TO_SD * _masked_median(jnp.abs(dev), population)
  z = jnp.where(seen, dev / jnp.maximum(scale, _MIN_SCALE), 0.0)
  return z, med + dev


@functools.partial(jax.jit, static_argnames="cfg")
def trust_update(state: TrustState, client_ids: jax.Array,
                 flat_updates: jax.Array, valid: jax.Array, cfg: TrustConfig,
                 scored: jax.Array | None = None,
                 reference: jax.Array | None = None
                 ) -> tuple[TrustState, TrustInfo]:
  """Scores a batch, accumulates evidence, moves quarantine.

  Args:
    state: current `TrustState`.
    client_ids: [K] int ids in [0, num_clients) (padding rows: anything).
    flat_updates: [K, D] the updates as aggregated.
    valid: [K] bool, the rows scored and, those of clients not in
      quarantine, forming the references; non-finite rows and ids out of
      range are excluded as well.
    cfg: `TrustConfig` (static).
    scored: optional [K] bool, the valid rows whose scores count as
      evidence (default: all), e.g. the newest row of a fedasync window.
    reference: optional [D] update to score every row against (FLTrust's
      root update) instead of the leave-one-out medians.

  Returns:
    (new state, `TrustInfo`).

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1.0, 1.0], [1.0, 0.5], [1.0, 2.0], [-1.0, -1.0]])
  >>> st, cfg = trust_init(4), TrustConfig()
  >>> for _ in range(3):  # min_count arrivals each
  ...   st, info = trust_update(st, jnp.arange(4), x, jnp.ones(4, bool), cfg)
  >>> [round(float(s), 2) for s in info.row_score]
  [1.0, 1.0, 1.0, -1.0]
  >>> st.quarantined.tolist()
  [False, False, False, True]
  """
  num_clients = state.score.shape[0]
  k_rows = client_ids.shape[0]
  ids = client_ids.astype(jnp.int32)
  ref = (valid & jnp.all(jnp.isfinite(flat_updates), axis=1)
         & (ids >= 0) & (ids < num_clients))
  # Quarantined clients are scored but are not references (module doc).
  free = ref & ~state.quarantined[jnp.clip(ids, 0, num_clients - 1)]
  free = jnp.where(jnp.sum(free.astype(jnp.int32)) >= 2, free, ref)
  score, agree, rho, ok = row_scores(flat_updates, ref, cfg, reference,
                                     references=free)
  ok = ok if scored is None else ok & scored

  # Sequential discounting over a client's rows in closed form: row k is
  # discounted by decay once for every later scored row of the same client.
  same = (ids[:, None] == ids[None, :]) & ok[:, None] & ok[None, :]
  later = jnp.sum(same & (jnp.arange(k_rows)[None, :] >
                          jnp.arange(k_rows)[:, None]), axis=1)
  decay = jnp.float32(cfg.decay)
  disc = jnp.where(ok, decay ** later.astype(jnp.float32), 0.0)
  seg = jnp.where(ok, ids, num_clients)  # unscored rows -> dropped bucket
  segsum = lambda a: jax.ops.segment_sum(a, seg, num_clients + 1)[
      :num_clients]
  n_new = segsum(ok.astype(jnp.int32))
  keep = decay ** n_new.astype(jnp.float32)
  total = keep * state.total + segsum(disc * score)
  count = keep * state.count + segsum(disc)
  arrivals = state.arrivals + n_new

  seen = arrivals > 0
  q = state.quarantined
  good = seen & ~q
  z, shrunk = robust_z(total, count, seen,
                       jnp.where(jnp.any(good), good, seen), cfg.prior_count)
  entered = (~q & (z < -cfg.z_enter) & (shrunk < cfg.agreement_floor)
             & (arrivals >= cfg.min_count))
  exited = q & (z > -cfg.z_release)
  quarantined = (q | entered) & ~exited
  trust = jnp.clip(1.0 + jnp.minimum(z, 0.0) / (2.0 * cfg.z_enter), 0.0, 1.0)
  info = TrustInfo(row_score=score, row_agreement=agree, row_norm_ratio=rho,
                   row_valid=ok, z=z,
                   num_quarantined=jnp.sum(quarantined.astype(jnp.int32)),
                   entered=entered, exited=exited)
  return TrustState(score=trust, quarantined=quarantined, total=total,
                    count=count, arrivals=arrivals), info


def trust_weights(state: TrustState, client_ids: jax.Array,
                  cfg: TrustConfig | None = None) -> jax.Array:
  """[K] multipliers for the aggregation weights of a batch.

  Args:
    state: current `TrustState`.
    client_ids: [K] int ids (out-of-range ids are clamped; mask such rows).
    cfg: supplies `quarantine_scale`; None means `TrustConfig()` defaults.

  Returns:
    [K] float32: 1 for normal clients, quarantine_scale for quarantined
    ones. The caller multiplies these into its data weights.

  >>> import jax.numpy as jnp
  >>> st = trust_init(2).replace(quarantined=jnp.array([False, True]))
  >>> [round(float(w), 3) for w in trust_weights(st, jnp.array([0, 1, 1]))]
  [1.0, 0.1, 0.1]
  """
  scale = (cfg or TrustConfig()).quarantine_scale
  ids = jnp.clip(client_ids.astype(jnp.int32), 0, state.score.shape[0] - 1)
  return jnp.where(state.quarantined[ids], scale, 1.0).astype(jnp.float32)
