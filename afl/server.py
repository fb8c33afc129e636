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

Robust fedasync: one update arrives at a time, but coordinate-wise rules,
trust and omniscient attacks need several. With a robust aggregator, trust
or an update attack, fedasync keeps a sliding window of the last W =
aggregator.window arrivals (raw deltas, each scaled by its own staleness at
arrival) and on every arrival aggregates the window with the configured rule
and moves x <- x + a * aggregate, a = mixing_alpha * s(tau_new) (the delta
form of FedAsync; the plain rule above is kept for the mean without trust).
Only the newest row updates trust, so each update is scored once.

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
from afl import client as client_lib
from afl.aggregators import clipping as clipping_lib
from afl.aggregators import trust as trust_lib
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
               update_attack=None, trust_cfg=None, num_clients: int = 0,
               norm_clip: float = 0.0, robust_window: int = 0,
               mesh=None):
    """Args (keyword): `dp_clip`/`dp_noise` turn on server (user-level) DP;
    `secagg` routes the buffer through simulated secure aggregation; `key`
    seeds their randomness (folded with the version); `update_attack` is an
    afl.attacks update attack run on malicious rows; `trust_cfg` (a
    TrustConfig) turns on trust scores for `num_clients` clients;
    `norm_clip` > 0 clips every update first; `robust_window` > 0 makes
    fedasync aggregate its last `robust_window` arrivals (module doc);
    `mesh` (1-D, axis "clients"): coordinate-wise aggregators then shard
    the parameter axis over its devices."""
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
    agg_state = aggregator.init()
    if agg_state is None:  # centered clipping: None means a zero center
      agg_state = jnp.zeros_like(ravel(params))
    self.state = ServerState(params=params,
                             opt_state=self.optimizer.init(params),
                             agg_state=agg_state)
    self.trust_cfg = trust_cfg
    self.trust = trust_lib.trust_init(num_clients) if trust_cfg else None
    self.norm_clip = norm_clip
    self.mesh = mesh
    self.window = []  # fedasync robust window: (delta, staleness, id, bad)
    self.robust_window = robust_window
    self._mix = jax.jit(_mix)
    self._buffered = jax.jit(self._buffered_step)
    self._windowed = jax.jit(self._window_step)

  @property
  def params(self):
    return self.state.params

  def fedasync_apply(self, start_params, delta, staleness: int,
                     client_id: int = 0, malicious: bool = False):
    """One arrival. Plain FedAsync mixing, or with `robust_window` the
    windowed robust step (module doc). Returns rows dropped as non-finite."""
    delta = client_lib.as_tree(delta)
    a = self.cfg.mixing_alpha * float(staleness_weight(
        staleness, self.cfg.staleness_fn, self.cfg.staleness_a,
        self.cfg.staleness_b))
    if not self.robust_window:
      self.state = self.state.replace(
          params=self._mix(self.state.params, start_params, delta,
                           np.float32(a)))
      return 0
    self.window = (self.window + [(delta, staleness, client_id, malicious)])[
        -self.robust_window:]
    deltas, stale, ids, bad = zip(*self.window)
    args = self._rows(list(deltas), list(stale), np.ones(len(deltas)),
                      list(ids), list(bad), capacity=self.robust_window)
    # Only the newest row (the last real one) updates trust.
    newest = np.zeros(self.robust_window, bool)
    newest[len(deltas) - 1] = True
    self.state, self.trust, info = self._windowed(
        self.state, self.trust, *args, newest, np.float32(a))
    return self._finish(info)

  def buffered_apply(self, deltas: list, stalenesses, num_examples,
                     client_ids=None, malicious=None):
    """Aggregates a buffer/round of deltas into one server step.

    Order: update attack on the raw deltas (malicious rows) -> non-finite
    rows dropped -> staleness scaling -> optional norm clip -> aggregation
    (server DP / secure aggregation, or the configured aggregator with
    example weights normalized to mean 1, times trust weights) -> optax
    step -> trust update against the aggregate.
    Returns the number of rows dropped as non-finite.
    """
    n = len(deltas)
    if n == 0:
      return 0
    if self.cfg.mode == "sync":
      stalenesses = np.zeros(n)  # a round has no staleness
    ids = list(client_ids) if client_ids is not None else [0] * n
    bad = list(malicious) if malicious is not None else [False] * n
    args = self._rows(deltas, stalenesses, num_examples, ids, bad,
                      capacity=self.capacity)
    self.state, self.trust, info = self._buffered(self.state, self.trust,
                                                  *args)
    return self._finish(info)

  def _rows(self, deltas, stalenesses, num_examples, ids, bad, capacity):
    """Pads a list of updates to `capacity` rows: the jitted steps' args."""
    cfg = self.cfg
    n = len(deltas)
    s = staleness_weight(stalenesses, cfg.staleness_fn, cfg.staleness_a,
                         cfg.staleness_b)
    w = np.asarray(num_examples, np.float64) if cfg.weight_by_examples else (
        np.ones(n))
    w = w / w.mean()  # mean 1: thresholds on weights mean the same always
    pad = capacity - n
    rows = lambda x, dtype: np.concatenate(
        [np.asarray(x, dtype), np.zeros(pad, dtype)])
    scales, weights = rows(s, np.float32), rows(w, np.float32)
    mask = rows(np.ones(n), bool)
    malicious = rows(bad, bool)
    row_ids = np.zeros(capacity, np.int32)
    row_ids[:n] = ids
    # Distinct ids for padding rows keep secagg's pair keys well defined.
    row_ids[n:] = (1 << 30) + np.arange(pad)
    survivors = mask.copy()
    if self.secagg is not None and self.secagg.drop_after_masking > 0:
      rng = np.random.default_rng([self.seed, self.num_aggregations])
      survivors[:n] &= rng.random(n) >= self.secagg.drop_after_masking
    key = jax.random.fold_in(self.key, self.num_aggregations)
    self.num_aggregations += 1
    stacked = client_lib.stack_rows(list(deltas) + [deltas[0]] * pad)
    return stacked, scales, weights, mask, malicious, survivors, row_ids, key

  def _finish(self, info) -> int:
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

  def _aggregate(self, state, trust, stacked, scales, weights, mask,
                 malicious, survivors, ids, key, trust_rows=None):
    """The shared core: rows in, aggregate [D] out (see buffered_apply)."""
    flat, unravel = aggregators.flatten_updates(stacked)
    attack_key, key = jax.random.split(key)
    if self.update_attack is not None:
      flat = self.update_attack(flat, malicious & mask, mask, attack_key)
    finite = jnp.all(jnp.isfinite(flat), axis=1)
    valid = mask & finite
    # Scale after the finiteness check: 0 * inf would hide a bad row.
    flat = jnp.where(valid[:, None], flat * scales[:, None], 0.0)
    if self.norm_clip > 0:
      flat = clipping_lib.clip_by_norm(flat, valid, self.norm_clip)
    agg_state = state.agg_state
    if self.dp_clip is not None or self.secagg is not None:
      agg = self._private_sum(flat, valid, survivors, ids, key)
    else:
      if trust is not None:
        weights = weights * trust_lib.trust_weights(trust, ids,
                                                    self.trust_cfg)
      kernel = self.aggregator.coordinatewise
      if self.mesh is not None and kernel is not None:
        agg = aggregators.reshard_coordinatewise(kernel, flat, weights,
                                                 valid, self.mesh, "clients")
      else:
        agg_tree, agg_state = self.aggregator.apply(
            jax.vmap(unravel)(flat), weights, valid, state.agg_state)
        agg = ravel(agg_tree)
    info = dict(non_finite=jnp.sum(mask & ~finite))
    if trust is not None:
      rows = valid if trust_rows is None else valid & trust_rows
      trust, tinfo = trust_lib.trust_update(trust, ids, flat, rows, agg,
                                            self.trust_cfg)
      info.update(num_quarantined=tinfo.num_quarantined,
                  entered=tinfo.entered, exited=tinfo.exited)
    return unravel(agg), agg_state, trust, info

  def _buffered_step(self, state: ServerState, trust, *rows):
    agg, agg_state, trust, info = self._aggregate(state, trust, *rows)
    grads = jax.tree_util.tree_map(jnp.negative, agg)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    return ServerState(params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, agg_state=agg_state), trust, info

  def _window_step(self, state: ServerState, trust, stacked, scales, weights,
                   mask, malicious, survivors, ids, key, newest, a):
    agg, agg_state, trust, info = self._aggregate(
        state, trust, stacked, scales, weights, mask, malicious, survivors,
        ids, key, trust_rows=newest)
    params = jax.tree_util.tree_map(lambda x, d: x + a * d, state.params, agg)
    return state.replace(params=params, agg_state=agg_state), trust, info


def _mix(params, start, delta, a):
  return jax.tree_util.tree_map(
      lambda x, s, d: x + a * (s + d - x), params, start, delta)


def ravel(tree):
  return jax.flatten_util.ravel_pytree(tree)[0]
