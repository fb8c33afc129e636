"""Simulated secure aggregation with pairwise masks (Bonawitz et al. 2017).

The server must learn only the sum of the participants' updates. Each pair
of participants (i, j) shares a seed s_ij (in the protocol: a Diffie-Hellman
key agreement; here: derived from the round key and the pair's client ids).
Client i uploads

  y_i = x_i + PRG(b_i) + sum_{j: id_j > id_i} PRG(s_ij)
                       - sum_{j: id_j < id_i} PRG(s_ij)      (mod 2^32)

where b_i is its own self-mask seed. In the sum over all clients the pairwise
masks cancel; the server removes the self masks after survivors reveal the
shares of each b_i. If a client drops out after masking, survivors' uploads
still carry their half of the pairs shared with it; the server reconstructs
the dropped client's pair seeds from the survivors' Shamir shares and
subtracts those masks. The self mask is what keeps a slow client (whose
upload arrives after it was declared dropped) private: the server may
reconstruct either b_i or s_ij for a client, never both.

Simulation choices (documented, not cryptography):
  * Secret sharing and key agreement are not simulated; the "reconstruction"
    recomputes the seeds from the round key and the ids, which the real
    server could do only with t-of-n shares from survivors.
  * The PRG is `jax.random.bits` on keys built with `fold_in` of the round
    key, a domain tag and the pair's ids (smaller id first, so both sides of
    a pair agree). Keys depend on client ids, never on cohort position, so a
    client's mask does not change with padding or ordering.
  * Arithmetic is in the ring Z_{2^32} (uint32, which wraps), on fixed-point
    encodings: x -> round(x * scale) as int32, two's complement. Masking and
    unmasking are then exact; the only error is quantization,
    at most K / (2 * scale) per coordinate for K summed clients. Each masked
    vector is uniformly distributed in the ring, hence uncorrelated with its
    update.

Fixed-point range. The ring only holds the true sum if it fits in int32,
and a wrapped sum is silently wrong. So before masking, each participant
clips every quantized coordinate to [-B, B] with

  B = floor((2^31 - 1) / n)        (quantized units; n = #participants)

so the sum over any subset of the n participants (whoever survives) has
|sum| <= n B <= 2^31 - 1 and never wraps. n is public (the server sends
the participant list in the protocol's setup), so every client can compute
B. In float terms a client's coordinates are kept within B / scale: with
the default scale 2^16 and n = 10, |x| <= 3276.8 per coordinate and the sum
stays below 32768. Values within range are encoded exactly as without the
bound. The number of clipped coordinates is counted (`secure_sum` returns
it; the simulation's metric `secagg_clipped`); a deployment would sum these
counts under the same masks rather than reveal each client's.

Client ids. The pair seeds and the sign of each pair's mask come from the
pair's two ids, so ids must be distinct among the participants of one
aggregation. Two rows with one id share every seed: dropout recovery
cannot tell the two ends of their own pair apart and removes that mask
with the wrong sign, and the difference of their uploads is x_i - x_j
minus twice a mask (all other masks cancel), which leaks the parity of
their quantized difference. Duplicates are therefore rejected, not
repaired: `unmask_sum` (and `secure_sum`)
returns NaN in every coordinate when two participants share an id, never
a wrong number. The server merges a client's rows into one before this
stage (`server.merge_client_rows`, required with secure aggregation), so a
correct run never hits the check; padding rows, which take no part, may
share ids freely.

Cost: masking is O(K^2 D / 2) PRG words (each pair's mask drawn once, for
both ends), vectorized over the cohort, with O(K D) memory; unmasking is
O((K + K * #dropped) D).

References:
  Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
    Machine Learning", CCS.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

# Fixed-point scale: 16 fractional bits.
DEFAULT_SCALE = 2.0 ** 16

# Domain tags folded into the round key so pair and self-mask streams never
# coincide (a pair (a, b) vs a self seed of id a).
_PAIR_DOMAIN = 0
_SELF_DOMAIN = 1

# int32 range, and the largest float32 below 2^31 (int32 max is not one).
_INT32_MAX = 2 ** 31 - 1
_FLOAT32_BELOW_2_31 = 2.0 ** 31 - 128


def _pair_key(round_key, id_a, id_b):
  lo = jnp.minimum(id_a, id_b).astype(jnp.uint32)
  hi = jnp.maximum(id_a, id_b).astype(jnp.uint32)
  k = jax.random.fold_in(round_key, _PAIR_DOMAIN)
  return jax.random.fold_in(jax.random.fold_in(k, lo), hi)


def _self_key(round_key, id_a):
  k = jax.random.fold_in(round_key, _SELF_DOMAIN)
  return jax.random.fold_in(k, jnp.asarray(id_a).astype(jnp.uint32))


def _prg(key, dim: int) -> jax.Array:
  return jax.random.bits(key, (dim,), jnp.uint32)


def range_bound(num_participants) -> jax.Array:
  """B = floor((2^31 - 1) / n): the largest |quantized coordinate| one of n
  participants may upload, so that no subset's sum leaves int32.

  >>> int(range_bound(10))
  214748364
  """
  n = jnp.maximum(jnp.asarray(num_participants, jnp.int32), 1)
  return jnp.int32(_INT32_MAX) // n


def encode(flat: jax.Array, participants: jax.Array, scale=DEFAULT_SCALE):
  """Client side: fixed point clipped to the range bound of the module
  docstring, B = `range_bound`(#participants).

  Args:
    flat: [K, D] float updates.
    participants: [K] bool.
    scale: Fixed-point scale.

  Returns:
    ([K, D] uint32 encodings round(x * scale) in two's complement, [K]
    int32 number of each participant's coordinates that were clipped;
    non-finite values count as clipped, NaN is encoded as 0).

  >>> import jax.numpy as jnp
  >>> y, clipped = encode(jnp.array([[1.5, -0.25], [4e4, 0.]]),
  ...                     jnp.array([True, True]))
  >>> dequantize(y).tolist(), clipped.tolist()
  ([[1.5, -0.25], [16384.0, 0.0]], [0, 1])
  """
  part = jnp.asarray(participants, bool)
  v = jnp.round(flat.astype(jnp.float32) * jnp.asarray(scale, jnp.float32))
  # Saturate in float first: the cast is undefined out of range (NaN -> 0).
  q = jnp.clip(jnp.nan_to_num(v), -2.0 ** 31, _FLOAT32_BELOW_2_31).astype(
      jnp.int32)
  bound = range_bound(jnp.sum(part))
  kept = jnp.clip(q, -bound, bound)
  # Clipped: saturated in the cast (|v| > 2^31 - 128, which for a float32
  # means |v| >= 2^31 > B; or NaN), or cut to B.
  out = ~(jnp.abs(v) <= _FLOAT32_BELOW_2_31) | (kept != q)
  clipped = jnp.sum(out & part[:, None], axis=1, dtype=jnp.int32)
  return lax.bitcast_convert_type(kept, jnp.uint32), clipped


def dequantize(u: jax.Array, scale=DEFAULT_SCALE) -> jax.Array:
  """Ring element (uint32) -> float32, reading it as a signed int32."""
  signed = lax.bitcast_convert_type(u, jnp.int32)
  return signed.astype(jnp.float32) / jnp.asarray(scale, jnp.float32)


def duplicate_ids(ids: jax.Array, participants: jax.Array) -> jax.Array:
  """Whether two participants share an id (non-participants are ignored).

  >>> import jax.numpy as jnp
  >>> bool(duplicate_ids(jnp.array([3, 3, 4]), jnp.array([True, False, True])))
  False
  """
  ids, part = jnp.asarray(ids), jnp.asarray(participants, bool)
  same = (ids[:, None] == ids[None, :]) & part[:, None] & part[None, :]
  # The diagonal contributes one per participant.
  return jnp.sum(same) > jnp.sum(part)


def _participants(participants, k: int) -> jax.Array:
  if participants is None:
    return jnp.ones((k,), bool)
  return jnp.asarray(participants, bool)


def _cohort(rows: jax.Array, ids, participants):
  """(K, D, int32 ids, [K] participant mask) of a [K, D] cohort array."""
  k, dim = rows.shape
  ids = jnp.asarray(ids, jnp.int32)
  return k, dim, ids, _participants(participants, k)


def mask_updates(flat: jax.Array, ids: jax.Array, round_key: jax.Array,
                 participants: Optional[jax.Array] = None,
                 scale=DEFAULT_SCALE):
  """Client side: encode and mask each participant's update.

  Client i's row becomes encode(x_i) + PRG(b_i) + sum_{id_j > id_i}
  PRG(s_ij) - sum_{id_j < id_i} PRG(s_ij) in Z_{2^32}, with j ranging over
  the other participants, and encode() the fixed point clipped to the range
  bound (module docstring). Each row is uniformly distributed on its own;
  only sums over all participants (after unmasking) reveal anything.

  Args:
    flat: [K, D] float updates (cohort axis first).
    ids: [K] int client ids, distinct among the participants (they name the
      pair seeds; `unmask_sum` returns NaN otherwise).
    round_key: PRNG key of this aggregation round (shared setup).
    participants: Optional [K] bool; False rows (cohort padding) take part in
      no pair and come back as zeros.
    scale: Fixed-point scale (see module docstring for the range bound).

  Returns:
    ([K, D] uint32 masked vectors: what the server receives, [K] int32
    clipped coordinates per row, as from `encode`).

  References:
    Bonawitz et al. 2017, "Practical Secure Aggregation for
      Privacy-Preserving Machine Learning", CCS, Sec. 3.

  >>> import jax, jax.numpy as jnp
  >>> x = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
  >>> ids, key = jnp.array([7, 3, 9]), jax.random.key(0)
  >>> y, _ = mask_updates(x, ids, key)
  >>> unmask_sum(y, ids, jnp.array([True, True, True]), key).tolist()
  [9.0, 12.0]
  """
  k, dim, ids, part = _cohort(flat, ids, participants)
  zero = jnp.zeros((), jnp.uint32)
  rows = jnp.arange(k)

  self_masks = jax.vmap(lambda i: _prg(_self_key(round_key, i), dim))(ids)
  encoded, clipped = encode(flat, part, scale)
  y = encoded + self_masks

  def add_offset(d, y):
    # Pairs (i, (i + d) mod K): over d = 1..K//2 every unordered pair comes
    # up once (twice for d = K/2 with K even, so keep only i < K/2 there).
    # Each pair's mask is drawn once and applied to both ends.
    partner = (rows + d) % k
    pid = ids[partner]
    m = jax.vmap(lambda a, b: _prg(_pair_key(round_key, a, b), dim))(ids, pid)
    active = part & part[partner] & ((2 * d != k) | (rows < k // 2))
    signed = jnp.where((ids < pid)[:, None], m, zero - m)
    contrib = jnp.where(active[:, None], signed, zero)
    # Row i gets +contrib_i; its partner (i + d) gets -contrib_i.
    return y + contrib - jnp.roll(contrib, d, axis=0)

  y = lax.fori_loop(1, k // 2 + 1, add_offset, y)
  return jnp.where(part[:, None], y, zero), clipped


def unmask_sum(masked: jax.Array, ids: jax.Array, survivors: jax.Array,
               round_key: jax.Array, participants: Optional[jax.Array] = None,
               scale=DEFAULT_SCALE) -> jax.Array:
  """Server side: the sum of the survivors' updates from masked vectors.

  Rows of clients that dropped out after masking are never read. The server
  (1) adds the survivors' masked vectors in Z_{2^32}: pairwise masks between
  survivors cancel; (2) removes each survivor's self mask PRG(b_i) and
  (3) for each dropped participant d, removes the survivors' halves
  sign * PRG(s_id). In the protocol b_i and s_id come from Shamir shares held
  by survivors; the simulation recomputes them from the round key and ids.
  If two participants share an id the sum cannot be trusted (module
  docstring): every coordinate comes back NaN.

  Args:
    masked: [K, D] uint32 masked vectors from `mask_updates`.
    ids: [K] client ids, as given to `mask_updates`.
    survivors: [K] bool, participants whose upload arrived.
    round_key: The round key used for masking.
    participants: [K] bool given to `mask_updates` (None: all).
    scale: Fixed-point scale used for masking.

  Returns:
    [D] float32 sum of the survivors' encodings (exact: the sum of their
    clipped fixed-point values), or all NaN if participants' ids repeat.

  References:
    Bonawitz et al. 2017, "Practical Secure Aggregation for
      Privacy-Preserving Machine Learning", CCS, Sec. 3 (dropout recovery).
  """
  k, dim, ids, part = _cohort(masked, ids, participants)
  surv = part & jnp.asarray(survivors, bool)
  dropped = part & ~surv
  zero = jnp.zeros((), jnp.uint32)

  # uint32 reductions wrap, which is exactly addition in Z_{2^32}.
  total = jnp.sum(jnp.where(surv[:, None], masked, zero), axis=0,
                  dtype=jnp.uint32)

  def remove_self(i, acc):
    m = _prg(_self_key(round_key, ids[i]), dim)
    return acc - jnp.where(surv[i], m, zero)

  total = lax.fori_loop(0, k, remove_self, total)

  def remove_dropped_pairs(j, acc):
    def masks_of(acc):
      m = jax.vmap(lambda a: _prg(_pair_key(round_key, a, ids[j]), dim))(ids)
      # Survivor i added +PRG(s_ij) if id_i < id_j, else -PRG(s_ij).
      signed = jnp.where((ids < ids[j])[:, None], m, zero - m)
      half = jnp.sum(jnp.where(surv[:, None], signed, zero), axis=0,
                     dtype=jnp.uint32)
      return acc - half
    # Only dropped clients cost a [K, D] draw; survivors are skipped.
    return lax.cond(dropped[j], masks_of, lambda a: a, acc)

  total = lax.fori_loop(0, k, remove_dropped_pairs, total)
  return jnp.where(duplicate_ids(ids, part), jnp.nan,
                   dequantize(total, scale))


def secure_sum(
    flat: jax.Array,
    ids: jax.Array,
    round_key: jax.Array,
    participants: Optional[jax.Array] = None,
    survivors: Optional[jax.Array] = None,
    scale=DEFAULT_SCALE,
):
  """Mask then unmask: the sum the server obtains under secure aggregation.

  What the server's privacy stage computes (`afl.server.private`): secagg's
  numerics (clipped fixed point, dropout recovery, the id check) in one call.

  Args:
    flat: [K, D] float updates.
    ids: [K] client ids, distinct among the participants.
    round_key: Round key.
    participants: Optional [K] bool (padding False).
    survivors: Optional [K] bool of uploads that arrived (None: all).
    scale: Fixed-point scale.

  Returns:
    ([D] float32 sum of the surviving participants' updates, all NaN if
    participants' ids repeat; int32 number of the survivors' coordinates
    clipped to the fixed-point range).
  """
  masked, clipped = mask_updates(flat, ids, round_key, participants, scale)
  part = _participants(participants, flat.shape[0])
  surv = part if survivors is None else part & jnp.asarray(survivors, bool)
  total = unmask_sum(masked, ids, surv, round_key, participants, scale)
  return total, jnp.sum(jnp.where(surv, clipped, 0), dtype=jnp.int32)
