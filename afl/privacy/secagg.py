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
    at most K / (2 * scale) per coordinate for K summed clients. The true
    sum must fit in int32: |sum_k x_k| < 2^31 / scale per coordinate (with
    the default scale 2^16: |sum| < 32768, resolution 1.5e-5). Each masked
    vector is uniformly distributed in the ring, hence uncorrelated with its
    update.

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



def quantize(x: jax.Array, scale=DEFAULT_SCALE) -> jax.Array:
  """Float -> fixed point in Z_{2^32}: round(x * scale) as two's complement.

  Values beyond the int32 range saturate (NaN maps to 0).

  >>> import jax.numpy as jnp
  >>> dequantize(quantize(jnp.array([1.5, -0.25]))).tolist()
  [1.5, -0.25]
  """
  v = jnp.round(x.astype(jnp.float32) * jnp.asarray(scale, jnp.float32))
  # Clip in float (int32 max is not a float32; 2^31 - 128 is the largest
  # float32 below it) before the cast, which would otherwise be undefined.
  v = jnp.clip(jnp.nan_to_num(v), -2.0 ** 31, 2.0 ** 31 - 128)
  return lax.bitcast_convert_type(v.astype(jnp.int32), jnp.uint32)


def dequantize(u: jax.Array, scale=DEFAULT_SCALE) -> jax.Array:
  """Ring element (uint32) -> float32, reading it as a signed int32."""
  signed = lax.bitcast_convert_type(u, jnp.int32)
  return signed.astype(jnp.float32) / jnp.asarray(scale, jnp.float32)


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
                 scale=DEFAULT_SCALE) -> jax.Array:
  """Client side: encode and mask each participant's update.

  Client i's row becomes quantize(x_i) + PRG(b_i) + sum_{id_j > id_i}
  PRG(s_ij) - sum_{id_j < id_i} PRG(s_ij) in Z_{2^32}, with j ranging over
  the other participants. Each row is uniformly distributed on its own;
  only sums over all participants (after unmasking) reveal anything.

  Args:
    flat: [K, D] float updates (cohort axis first).
    ids: [K] distinct non-negative int client ids (they name the pair seeds).
    round_key: PRNG key of this aggregation round (shared setup).
    participants: Optional [K] bool; False rows (cohort padding) take part in
      no pair and come back as zeros.
    scale: Fixed-point scale (see module docstring for the range bound).

  Returns:
    [K, D] uint32 masked vectors: what the server receives.

  References:
    Bonawitz et al. 2017, "Practical Secure Aggregation for
      Privacy-Preserving Machine Learning", CCS, Sec. 3.

  >>> import jax, jax.numpy as jnp
  >>> x = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
  >>> ids, key = jnp.array([7, 3, 9]), jax.random.key(0)
  >>> y = mask_updates(x, ids, key)
  >>> unmask_sum(y, ids, jnp.array([True, True, True]), key).tolist()
  [9.0, 12.0]
  """
  k, dim, ids, part = _cohort(flat, ids, participants)
  zero = jnp.zeros((), jnp.uint32)
  rows = jnp.arange(k)

  self_masks = jax.vmap(lambda i: _prg(_self_key(round_key, i), dim))(ids)
  y = quantize(flat, scale) + self_masks

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
  return jnp.where(part[:, None], y, zero)


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

  Args:
    masked: [K, D] uint32 from `mask_updates`.
    ids: [K] client ids, as given to `mask_updates`.
    survivors: [K] bool, participants whose upload arrived.
    round_key: The round key used for masking.
    participants: [K] bool given to `mask_updates` (None: all).
    scale: Fixed-point scale used for masking.

  Returns:
    [D] float32 sum of the survivors' updates (exact up to quantization).

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
  return dequantize(total, scale)


def secure_sum(
    flat: jax.Array,
    ids: jax.Array,
    round_key: jax.Array,
    participants: Optional[jax.Array] = None,
    survivors: Optional[jax.Array] = None,
    scale=DEFAULT_SCALE,
) -> jax.Array:
  """Mask then unmask: the sum the server obtains under secure aggregation.

  What the server's privacy stage computes (`afl.server.private`): secagg's
  numerics (fixed-point quantization, dropout recovery) in one call.

  Args:
    flat: [K, D] float updates.
    ids: [K] distinct client ids.
    round_key: Round key.
    participants: Optional [K] bool (padding False).
    survivors: Optional [K] bool of uploads that arrived (None: all).
    scale: Fixed-point scale.

  Returns:
    [D] float32 sum of the surviving participants' updates.
  """
  masked = mask_updates(flat, ids, round_key, participants, scale)
  if survivors is None:
    survivors = _participants(participants, flat.shape[0])
  return unmask_sum(masked, ids, survivors, round_key, participants, scale)
