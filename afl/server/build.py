"""Builds the server of an experiment config: its stages, spec and mode."""
from __future__ import annotations

import jax
import jax.flatten_util

from afl import aggregators
from afl import optim
from afl.server import modes as modes_lib
from afl.server import private
from afl.server import stages as stages_lib
from afl.server import step as step_lib
from afl.server.server import Server


def robust_fedasync(cfg, has_update_attack: bool) -> bool:
  """Whether a windowed mode (fedasync) aggregates its window: anything
  but the plain mean."""
  agg = cfg.aggregator
  return not (aggregators.REGISTRY[agg.name].prop("linear")
              and not cfg.trust.enabled and not has_update_attack
              and agg.norm_clip == 0 and not agg.stages)


def build_spec(cfg, params, key, *, update_attack=None, dp_clip=None,
               dp_noise: float = 0.0, mesh=None,
               log=print) -> step_lib.ServerSpec:
  """The static server spec: the two stage chains, optimizer and trust.

  `update_attack`: an `afl.attacks` update attack or None; `dp_clip`,
  `dp_noise`: server DP's clip norm and noise multiplier (None: off);
  `mesh`: shard coordinate-wise aggregation along D (said in `log`).
  """
  s, agg_cfg = cfg.server, cfg.aggregator
  attack_key, private_key, stage_key = jax.random.split(key, 3)
  clients = []
  if update_attack is not None:
    clients.append(stages_lib.update_attack(update_attack, attack_key))
  non_finite_at = len(clients)
  clients += [stages_lib.validity(), stages_lib.staleness_scaling()]
  if s.merge_client_rows:
    clients.append(stages_lib.merge_client_rows())
  if agg_cfg.norm_clip > 0:
    clients.append(stages_lib.norm_clip(agg_cfg.norm_clip))

  aggregation = []
  for i, name in enumerate(agg_cfg.stages):
    entry = stages_lib.REGISTRY[name]
    context = ({"num_clients": cfg.num_clients} if entry.prop("per_client")
               else {})
    aggregation.append(entry.build(getattr(cfg.stage, name),
                                   key=jax.random.fold_in(stage_key, i),
                                   **context))
  private_at = None
  if dp_clip is not None or cfg.secagg.enabled:
    private_at = len(aggregation)
    aggregation.append(private.private_mean(
        private_key, dp_clip=dp_clip, dp_noise=dp_noise,
        secagg=cfg.secagg if cfg.secagg.enabled else None))
  else:
    unravel = jax.flatten_util.ravel_pytree(params)[1]
    aggregator = agg_cfg.entry.build(agg_cfg.params)
    if mesh is not None and aggregator.coordinatewise is not None:
      log(f"aggregation sharded over {mesh.devices.size} devices along the "
          "parameter axis")
    aggregation.append(stages_lib.aggregate(aggregator, unravel, mesh))

  windowed = modes_lib.REGISTRY[s.mode].prop("windowed")
  window = (agg_cfg.window if windowed
            and robust_fedasync(cfg, update_attack is not None) else 0)
  optimizer = optim.make_optimizer(s.optimizer, s.lr,
                                      dict(s.optimizer_kwargs))
  return step_lib.ServerSpec(
      clients=stages_lib.chain(*clients),
      aggregation=stages_lib.chain(*aggregation), optimizer=optimizer,
      trust=cfg.trust.trust_config() if cfg.trust.enabled else None,
      window=window, non_finite_at=non_finite_at, private_at=private_at,
      merged=s.merge_client_rows)


def build(cfg, params, key, reference=None, **spec_kwargs):
  """(Server, mode object) for `cfg`; `reference`: trust's root update
  (`afl.server.root.RootReference`) or None; kwargs go to `build_spec`."""
  spec = build_spec(cfg, params, key, **spec_kwargs)
  entry = modes_lib.REGISTRY[cfg.server.mode]
  server = Server(spec, cfg.server, params, entry.prop("rows")(cfg),
                  cfg.num_clients, reference)
  mode = entry.build(cfg.server.params, server=server, server_cfg=cfg.server)
  return server, mode
