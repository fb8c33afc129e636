"""The divergence guard: a run whose global model breaks stops, and says so.

After every server update the loop checks that the global parameters are
finite, and at every evaluation that the test loss is finite and at most
`stop.max_test_loss` (default 1e4; cross-entropy of a uniform guess over C
classes is log C, about 2.3 for 10). A run that fails either check stops
with `stop_reason="diverged"`: no checkpoint is written of the broken model
(the last one kept is finite), an evaluation that saw it is flagged
`diverged: true` in metrics.jsonl, the summary records
`diverged_at_version` and `divergence` (and no final accuracy), the log
lists likely causes, and launch.py exits with `EXIT_DIVERGED`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


class Diverged(RuntimeError):
  """The run stopped because its global model diverged (one-line message)."""


@jax.jit
def all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def loss_problem(loss, bound: float) -> str | None:
  """Why an evaluation's test loss means divergence, or None."""
  if loss is None or not math.isfinite(loss):
    return "the test loss is not finite"
  if loss > bound:
    return f"the test loss {loss:.3g} exceeds stop.max_test_loss={bound:g}"
  return None


def likely_causes(cfg) -> list[str]:
  """Config settings that commonly make a model diverge, most specific
  first; always ends with the learning rates."""
  out = []
  atk = cfg.attack
  if atk.kind in ("gaussian", "scaling", "sign_flip", "ipm", "alie",
                  "minmax", "minsum"):
    out.append(f"attack.kind={atk.kind} with aggregator.name="
               f"{cfg.aggregator.name}: use a robust aggregator, "
               "aggregator.norm_clip or trust")
  if cfg.server.lr > 1.0:
    out.append(f"server.lr={cfg.server.lr:g} > 1")
  if cfg.dp.mode != "none":
    out.append(f"DP noise (dp.noise_multiplier={cfg.dp.noise_multiplier:g},"
               f" dp.clip_norm={cfg.dp.clip_norm:g})")
  out.append(f"the learning rates (client.lr={cfg.client.lr:g}, "
             f"server.lr={cfg.server.lr:g})")
  return out
