"""Hybrid robust pipeline: relative norm clipping -> trust weights ->
weighted trimmed mean, with the weighted median as fallback.

Exact order inside `apply(updates, weights, mask, state)`:

  1. valid = mask & row is all-finite (`base.valid_rows`); other rows never
     influence anything below.
  2. Norm clipping: every valid row is scaled to norm at most
     `clip_multiplier * median(norms of the valid rows)`
     (the factors of `clipping.clip_relative_to_median_norm`, applied inside
     the sort blocks of step 4 so no clipped copy is written).
  3. Trust weights: the pipeline uses `weights` as given. The CALLER
     multiplies its data weights by the trust weights
     (`trust.trust_weights`) before calling, e.g.
     `weights = data_weight * trust_weights(state, ids, cfg)`. Keep the
     weights of a normal client near 1 (e.g. data weights divided by their
     mean), since step 5 compares them with an absolute threshold.
  4. The statistic is read off ONE sort of the clipped rows (weights read
     off the unsorted block, `_mass`): the weighted trimmed mean with
     `beta`, or with `byzantine_fraction` > 0 cutting
     ceil(byzantine_fraction * n) rows' worth per side (n: valid rows of
     positive weight; clamped as in `trimmed_mean`),
     (`trimmed_mean.weighted_trimmed_mean_of_sorted`) or
     the weighted median (`median.weighted_median_of_sorted`).
  5. Fallback: if fewer than `min_trusted` valid rows have weight
     > `weight_threshold`, the weighted median is returned, else the trimmed
     mean. The switch is a `lax.cond` on a traced flag (only the branch
     taken runs): `apply` is one jitted pure function, shapes fixed, no
     recompiles.

The state is a `HybridState` of diagnostics from the latest call (whether
the fallback fired, the trusted count, the clip threshold); nothing in it is
read back, so `init` only fixes its structure.
"""
import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from afl.aggregators import _sortnet, base, clipping, params
from afl.aggregators import median as median_lib
from afl.aggregators import trimmed_mean as trimmed_mean_lib


@flax.struct.dataclass
class HybridState:
  used_fallback: jax.Array  # bool[]: the median fallback produced the output
  num_trusted: jax.Array  # int32[]: valid rows with weight > threshold
  clip_threshold: jax.Array  # float32[]: norm bound applied in step 2


def hybrid_flat(flat: jax.Array, weights: jax.Array, valid: jax.Array, *,
                clip_multiplier: float, beta: float, min_trusted: int,
                weight_threshold: float,
                byzantine_fraction: float = 0.0
                ) -> tuple[jax.Array, HybridState]:
  """[K, D] -> ([D] aggregate, HybridState); steps 2-5 of the module doc."""
  # The clip factors are applied inside the sort blocks (no clipped copy).
  scale, threshold = clipping.median_norm_clip_scale(flat, valid,
                                                     clip_multiplier)
  trusted = valid & (weights > weight_threshold)
  num_trusted = jnp.sum(trusted.astype(jnp.int32))
  fallback = num_trusted < min_trusted

  w = _sortnet.normalize_weights(weights, valid)
  n_pos = jnp.sum((w > 0).astype(jnp.int32))
  t = trimmed_mean_lib.trim_counts(flat.shape[0], beta,
                                   byzantine_fraction)[n_pos]

  def stats(s, x, ws):  # only the statistic in use is computed
    return lax.cond(
        fallback, median_lib.weighted_median_of_sorted,
        lambda *a: trimmed_mean_lib.weighted_trimmed_mean_of_sorted(
            *a, n_pos, t), s, x, ws)

  out = _sortnet.map_sorted_blocks(stats, flat, valid, w, row_scale=scale)
  return out, HybridState(fallback, num_trusted,
                          threshold.astype(jnp.float32))


@base.register("hybrid", params=params.Hybrid)
def hybrid(clip_multiplier: float = 2.0, beta: float = 0.1,
           byzantine_fraction: float = 0.0, min_trusted: int = 3,
           weight_threshold: float = 0.5) -> base.Aggregator:
  """Clip (relative to median norm) -> trust-weighted trimmed mean / median.

  Args:
    clip_multiplier: clip valid rows to this multiple of their median norm
      (> 0).
    beta: per-side trim fraction of the weighted trimmed mean, in [0, 0.5).
    byzantine_fraction: in [0, 0.5); > 0 trims ceil(byzantine_fraction * n)
      rows' worth per side instead of floor(beta * n).
    min_trusted: below this many trusted rows, use the weighted median (>= 0).
    weight_threshold: a valid row is trusted if its weight (data weight x
      trust weight, supplied by the caller) exceeds this.

  Returns:
    An `Aggregator` whose `apply` is jitted; state is a `HybridState`.

  Raises:
    ValueError: naming the offending argument.

  References:
    Yin et al., ICML 2018 (coordinate-wise trimmed mean / median);
    Karimireddy et al., ICML 2021 (norm clipping against outliers).

  >>> import jax.numpy as jnp
  >>> agg = hybrid(beta=0.2, min_trusted=2)
  >>> ups = {"w": jnp.array([[1.0], [2.0], [3.0], [4.0], [1e6]])}
  >>> out, st = agg.apply(ups, jnp.ones(5), jnp.ones(5, bool), agg.init(ups))
  >>> float(out["w"][0]), bool(st.used_fallback)  # 1e6 clipped to 6, trimmed
  (3.0, False)
  """
  if not clip_multiplier > 0:
    raise ValueError(f"clip_multiplier must be > 0, got {clip_multiplier!r}")
  base.check_fraction("beta", beta)
  base.check_fraction("byzantine_fraction", byzantine_fraction)
  if min_trusted < 0:
    raise ValueError(f"min_trusted must be >= 0, got {min_trusted!r}")

  def init(example_updates):
    del example_updates
    return HybridState(jnp.array(False), jnp.array(0, jnp.int32),
                       jnp.array(0.0, jnp.float32))

  @jax.jit
  def apply(updates, weights, mask, state):
    del state  # diagnostics only; see the module docstring
    flat, unravel = base.flatten_updates(updates)
    valid = base.valid_rows(flat, mask)
    out, new_state = hybrid_flat(
        flat, weights, valid, clip_multiplier=clip_multiplier, beta=beta,
        min_trusted=min_trusted, weight_threshold=weight_threshold,
        byzantine_fraction=byzantine_fraction)
    return unravel(out.astype(flat.dtype)), new_state

  return base.Aggregator(init, apply)
