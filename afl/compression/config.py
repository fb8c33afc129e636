"""The `compression` config section and the compressor it builds."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from afl.compression import topk as topk_lib
from afl.compression.host import bytes_per_update
from afl.validate import ConfigError

KINDS = ("none", "topk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionConfig:
  """Uplink compression.

  Attributes:
    kind: "none" (dense float32) or "topk".
    ratio: share of coordinates sent, k = k_for(ratio, D) (per tensor when
      `per_tensor`).
    error_feedback: keep and re-add what was not sent (ResidualStore).
    per_tensor: top-k within each parameter tensor instead of globally.
    float16: send values as float16 (2 bytes) instead of float32.
  """
  kind: str = "none"
  ratio: float = 0.01
  error_feedback: bool = True
  per_tensor: bool = False
  float16: bool = False

  def validate(self, prefix: str = "compression"):
    """Raises ValueError("config.<prefix>.<key>: ...") on a bad value."""
    def fail(key, msg):
      raise ConfigError(f"config.{prefix}.{key}: {msg}")
    if self.kind not in KINDS:
      fail("kind", f"must be one of {list(KINDS)}, got {self.kind!r}")
    if (isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float))
        or not 0 < self.ratio <= 1):
      fail("ratio", f"must be in (0, 1], got {self.ratio!r}")
    for key in ("error_feedback", "per_tensor", "float16"):
      if not isinstance(getattr(self, key), bool):
        fail(key, f"expected true/false, got {getattr(self, key)!r}")

  def budget(self, example_tree: Any) -> topk_lib.Budget:
    """The static top-k budget for updates shaped like `example_tree`."""
    if self.per_tensor:
      return topk_lib.segments_for(example_tree, self.ratio)
    d = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(example_tree))
    return topk_lib.k_for(self.ratio, d)

  def update_bytes(self, d: int, k: topk_lib.Budget | None = None) -> int:
    """Uplink bytes of one update of dimension d under this config."""
    value_bytes = 2 if self.float16 else 4
    if self.kind == "none":
      return bytes_per_update(d, d, value_bytes=value_bytes, dense=True)
    total = (topk_lib.budget_total(k) if k is not None
             else topk_lib.k_for(self.ratio, d))
    return bytes_per_update(d, total, value_bytes=value_bytes)


CompressFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def make_compressor(config: CompressionConfig, example_tree: Any
                    ) -> CompressFn:
  """fn(delta_flat [D], residual_flat [D]) -> (sent [D], new_residual [D]).

  Pure and jittable; vmap it over a cohort. kind="none" sends the delta
  unchanged (float16 rounding still applies when asked); without error
  feedback the residual input is ignored and the returned residual is zero
  (nothing needs storing).
  """
  if config.kind == "none":
    def dense(delta, residual):
      sent = topk_lib.float16_round_trip(delta) if config.float16 else delta
      return sent, jnp.zeros_like(residual)
    return dense
  k = config.budget(example_tree)

  def topk(delta, residual):
    if not config.error_feedback:
      residual = jnp.zeros_like(delta)
    sent, new_residual = topk_lib.compress_with_feedback(
        delta, residual, k, float16=config.float16)
    if not config.error_feedback:
      new_residual = jnp.zeros_like(new_residual)
    return sent, new_residual
  return topk
