"""Server modes (fedasync, fedbuff, sync) and staleness functions.

- `fedasync` (Xie et al. 2019): every arrival makes a version,
  x <- (1 - a) x + a x_c with a = mixing_alpha * s(tau) and x_c the client's
  trained model (its start version plus its delta).
- `fedbuff` (Nguyen et al. 2022): K = buffer_size arrivals, each delta scaled
  by s(tau), are aggregated (weighted by example count when
  `weight_by_examples`) and applied as a server optax step with the negated
  aggregate as gradient.
- `sync` (FedAvg, McMahan et al. 2017): a round of `concurrency` clients all
  start from the same version; the survivors' deltas are aggregated and
  applied the same way. server.optimizer=sgd, lr=1 is plain FedAvg.

Updates staler than `max_staleness` (when >= 0) are dropped and counted.
Buffers are padded to a fixed size with a mask so the jitted step compiles
once.
"""
from __future__ import annotations

import flax
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from afl import aggregators
from afl.config import SecAggConfig, ServerConfig
from afl.privacy import dp as dp_lib
from afl.privacy import secagg as secagg_lib


def staleness_weight(tau, fn: str, a: float = 0.5, b: float = 4.0):
  """s(tau): constant 1; polynomial (1+tau)^-a; hinge 1 for tau <= b else
  1 / (a (tau - b) + 1) (Xie et al. 2019, sec. 5.2)."""
  tau = np.asarray(tau, np.float64)
  if fn == "constant":
    return np.ones_like(tau)
  if fn == "polynomial":
    return (1.0 + tau) ** (-a)
  if fn == "hinge":
    return np.where(tau <= b, 1.0, 1.0 / (a * (tau - b) + 1.0))
  raise ValueError(f"unknown staleness function {fn!r}")


@flax.struct.dataclass
class ServerState:
  params: object
  opt_state: object
  agg_state: object


def make_optimizer(name: str, lr: float, kwargs: dict):
  return getattr(optax, name)(learning_rate=lr, **kwargs)


class Server:
  """Holds the global model and applies arrivals according to the mode."""

  def __init__(self, cfg: ServerConfig, params, aggregator, capacity: int, *,
               dp_clip: float | None = None, dp_noise: float = 0.0,
               secagg: SecAggConfig | None = None, key=None, seed: int = 0,
               update_attack=None):
    """Args (keyword): `dp_clip`/`dp_noise` turn on server (user-level) DP;
    `secagg` routes the buffer through simulated secure aggregation; `key`
    seeds their randomness (folded with the version)."""
    self.cfg = cfg
    self.capacity = capacity  # buffer rows (fixed shape)
    self.dp_clip = dp_clip
    self.dp_noise = dp_noise
    self.secagg = secagg if secagg is not None and secagg.enabled else None
    self.key = key if key is not None else jax.random.PRNGKey(seed)
    self.seed = seed
    self.num_aggregations = 0
    self.update_attack = update_attack  # afl.attacks fn, or None
    self.last_info = None
    self.optimizer = make_optimizer(cfg.optimizer, cfg.lr,
                                    dict(cfg.optimizer_kwargs))
    self.aggregator = aggregator
    self.state = ServerState(params=params,
                             opt_state=self.optimizer.init(params),
                             agg_state=aggregator.init())
    self._mix = jax.jit(_mix)
    self._buffered = jax.jit(self._buffered_step)
    self._stack = jax.jit(_stack)

  @property
  def params(self):
    return self.state.params

  def fedasync_apply(self, start_params, delta, staleness: int):
    a = self.cfg.mixing_alpha * float(staleness_weight(
        staleness, self.cfg.staleness_fn, self.cfg.staleness_a,
        self.cfg.staleness_b))
    self.state = self.state.replace(
        params=self._mix(self.state.params, start_params, delta,
                         np.float32(a)))

  def buffered_apply(self, deltas: list, stalenesses, num_examples,
                     client_ids=None, malicious=None, trust_weights=None):
    """Aggregates a buffer/round of deltas into one server step.

    Order: update attack on the raw deltas (malicious rows) -> staleness
    scaling -> aggregation (server DP / secure aggregation, or the
    configured aggregator with example x trust weights) -> optax step.
    Returns the number of rows dropped as non-finite.
    """
    n = len(deltas)
    if n == 0:
      return 0
    cfg = self.cfg
    s = staleness_weight(stalenesses, cfg.staleness_fn, cfg.staleness_a,
                         cfg.staleness_b)
    if cfg.mode == "sync":
      s = np.ones_like(s)
    w = np.asarray(num_examples, np.float64) if cfg.weight_by_examples else (
        np.ones(n))
    if trust_weights is not None:
      w = w * np.asarray(trust_weights, np.float64)
    pad = self.capacity - n
    rows = lambda x, dtype: np.concatenate(
        [np.asarray(x, dtype), np.zeros(pad, dtype)])
    scales, weights = rows(s, np.float32), rows(w, np.float32)
    mask = rows(np.ones(n), bool)
    bad = rows(malicious if malicious is not None else np.zeros(n), bool)
    ids = np.zeros(self.capacity, np.int32)
    if client_ids is not None:
      ids[:n] = client_ids
    # Distinct ids for padding rows keep secagg's pair keys well defined.
    ids[n:] = (1 << 30) + np.arange(pad)
    survivors = mask.copy()
    if self.secagg is not None and self.secagg.drop_after_masking > 0:
      rng = np.random.default_rng([self.seed, self.num_aggregations])
      survivors[:n] &= rng.random(n) >= self.secagg.drop_after_masking
    key = jax.random.fold_in(self.key, self.num_aggregations)
    self.num_aggregations += 1
    stacked = self._stack(*deltas, *([deltas[0]] * pad))
    self.state, info = self._buffered(self.state, stacked, scales, weights,
                                      mask, bad, survivors, ids, key)
    self.last_info = info
    return int(info["non_finite"])

  def _private_sum(self, flat, valid, survivors, ids, key):
    """Clip (server DP) -> sum (secure or plain) -> noise; and the count."""
    if self.dp_clip is not None:
      flat = dp_lib.clip_updates(flat, valid, self.dp_clip)
    flat = jnp.where(valid[:, None], flat, 0.0)
    keep = valid & survivors
    if self.secagg is not None:
      mask_key, key = jax.random.split(key)
      # Clients mask; the server only ever holds `masked` from here on.
      masked = secagg_lib.mask_updates(flat, ids, mask_key, participants=valid,
                                       scale=self.secagg.scale)
      total = secagg_lib.unmask_sum(masked, ids, keep, mask_key,
                                    participants=valid,
                                    scale=self.secagg.scale)
    else:
      total = jnp.sum(jnp.where(keep[:, None], flat, 0.0), axis=0)
    if self.dp_clip is not None:
      total = total + self.dp_noise * self.dp_clip * jax.random.normal(
          key, total.shape, total.dtype)
    return total / jnp.maximum(jnp.sum(keep), 1).astype(total.dtype)

  def _buffered_step(self, state: ServerState, stacked, scales, weights, mask,
                     malicious, survivors, ids, key):
    flat, unravel = aggregators.flatten_updates(stacked)
    attack_key, key = jax.random.split(key)
    if self.update_attack is not None:
      flat = self.update_attack(flat, malicious & mask, mask, attack_key)
    finite = jnp.all(jnp.isfinite(flat), axis=1)
    valid = mask & finite
    # Scale after the finiteness check: 0 * inf would hide a bad row.
    flat = jnp.where(valid[:, None], flat * scales[:, None], 0.0)
    if self.dp_clip is not None or self.secagg is not None:
      agg = unravel(self._private_sum(flat, valid, survivors, ids, key))
      agg_state = state.agg_state
    else:
      agg, agg_state = self.aggregator.apply(
          jax.vmap(unravel)(flat), weights, valid, state.agg_state)
    grads = jax.tree_util.tree_map(jnp.negative, agg)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    info = dict(non_finite=jnp.sum(mask & ~finite), flat=flat, valid=valid,
                aggregate=ravel(agg))
    return ServerState(params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, agg_state=agg_state), info


def _mix(params, start, delta, a):
  return jax.tree_util.tree_map(
      lambda x, s, d: x + a * (s + d - x), params, start, delta)


def _stack(*trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def ravel(tree):
  return jax.flatten_util.ravel_pytree(tree)[0]
