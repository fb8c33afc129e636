"""The config parameters of each registered aggregator.

Each aggregator declares its parameters as a frozen kw-only dataclass that
validates itself; `afl.config` assembles the `aggregator` section from them
(the keys stay flat: `aggregator.beta`, `aggregator.tau`, ...). A name used
by several aggregators (`beta`, `weighted`, `num_byzantine`) is one key
with one default.
"""
from __future__ import annotations

import dataclasses

from afl import validate as v

_kw = dict(frozen=True, kw_only=True)


@dataclasses.dataclass(**_kw)
class Weighted:
  weighted: bool = False  # use the data/trust weights

  def validate(self, p):
    del p


def _check_beta(p, beta):
  v.in_range(f"{p}.beta", beta, 0, 0.5)
  if beta == 0.5:
    v.fail(f"{p}.beta", "must be < 0.5 (nothing would be left)")


@dataclasses.dataclass(**_kw)
class TrimmedMean:
  beta: float = 0.1  # fraction trimmed per side
  weighted: bool = False

  def validate(self, p):
    _check_beta(p, self.beta)


@dataclasses.dataclass(**_kw)
class Krum:
  num_byzantine: int = 1

  def validate(self, p):
    v.in_range(f"{p}.num_byzantine", self.num_byzantine, 0)

  def check(self, cfg, p):
    """Against the experiment: enough updates per aggregation."""
    rows = cfg.rows_per_aggregation()
    need = 2 * self.num_byzantine + 3
    if rows < need:
      v.fail(f"{p}.num_byzantine", f"krum needs at least 2f+3={need} "
             f"updates per aggregation, but this setup aggregates {rows}")


@dataclasses.dataclass(**_kw)
class MultiKrum(Krum):
  num_selected: int = 2
  weighted: bool = False

  def validate(self, p):
    super().validate(p)
    v.in_range(f"{p}.num_selected", self.num_selected, 1)


@dataclasses.dataclass(**_kw)
class Geomed:
  max_iters: int = 100  # Weiszfeld steps
  tol: float = 1e-6
  eps: float = 1e-6  # smoothing

  def validate(self, p):
    v.in_range(f"{p}.max_iters", self.max_iters, 1)
    v.in_range(f"{p}.tol", self.tol, 0)
    v.in_range(f"{p}.eps", self.eps, 0, lo_open=True)


@dataclasses.dataclass(**_kw)
class CenteredClip:
  tau: float = 1.0  # clipping radius
  iters: int = 3

  def validate(self, p):
    v.in_range(f"{p}.tau", self.tau, 0, lo_open=True)
    v.in_range(f"{p}.iters", self.iters, 1)


@dataclasses.dataclass(**_kw)
class Hybrid:
  clip_multiplier: float = 2.0  # clip at multiplier x median norm
  beta: float = 0.1
  min_trusted: int = 3  # below this, fall back to the median
  weight_threshold: float = 0.5  # a row is trusted above this

  def validate(self, p):
    v.in_range(f"{p}.clip_multiplier", self.clip_multiplier, 0, lo_open=True)
    _check_beta(p, self.beta)
    v.in_range(f"{p}.min_trusted", self.min_trusted, 1)
    v.in_range(f"{p}.weight_threshold", self.weight_threshold, 0)
