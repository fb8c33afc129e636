"""The config parameters of each registered aggregator.

Each aggregator declares its parameters as a frozen kw-only dataclass that
validates itself; `afl.config` assembles the `aggregator` section from them
(the keys stay flat: `aggregator.beta`, `aggregator.tau`, ...). A name used
by several aggregators (`beta`, `weighted`, `num_byzantine`,
`byzantine_fraction`) is one key with one default.

`byzantine_fraction` (trimmed_mean, krum, multi_krum, bulyan, hybrid): 0
keeps the explicit count (`beta` or `num_byzantine`); a value in (0, 0.5)
replaces it in every aggregation by ceil(byzantine_fraction * n), n that
aggregation's number of valid rows (`byzantine_count`), which each rule then
clamps so it stays defined (see its module).
"""
from __future__ import annotations

import dataclasses
import math

from afl import validate as v

_kw = dict(frozen=True, kw_only=True)


def byzantine_count(n: int, byzantine_fraction: float, explicit: int) -> int:
  """ceil(byzantine_fraction * n) if the fraction is > 0, else `explicit`:
  the Byzantine (or per-side trim) count of n valid rows, before the rule's
  clamp."""
  if byzantine_fraction > 0:
    return math.ceil(byzantine_fraction * n)
  return explicit


@dataclasses.dataclass(**_kw)
class Weighted:
  weighted: bool = False  # use the data/trust weights

  def validate(self, p):
    del p


def _check_fraction(path, value):
  v.in_range(path, value, 0, 0.5)
  if value == 0.5:
    v.fail(path, "must be < 0.5 (nothing would be left)")


@dataclasses.dataclass(**_kw)
class TrimmedMean:
  beta: float = 0.1  # fraction trimmed per side: floor(beta * n) rows
  byzantine_fraction: float = 0.0  # > 0: trim ceil(fraction * n) instead
  weighted: bool = False

  def validate(self, p):
    _check_fraction(f"{p}.beta", self.beta)
    _check_fraction(f"{p}.byzantine_fraction", self.byzantine_fraction)


@dataclasses.dataclass(**_kw)
class Krum:
  """Rows of weight 0 take no part (never selected, never a neighbour);
  positive weights do not change which row Krum selects."""
  num_byzantine: int = 1  # f
  byzantine_fraction: float = 0.0  # > 0: f = ceil(fraction * n) instead

  # (rule, a, b): the rule needs a * f + b valid rows.
  _NEEDS = ("krum", 2, 3)

  def validate(self, p):
    v.in_range(f"{p}.num_byzantine", self.num_byzantine, 0)
    _check_fraction(f"{p}.byzantine_fraction", self.byzantine_fraction)

  def check(self, cfg, p):
    """Against the experiment: enough updates in a full aggregation (fewer
    valid rows at run time lower f, see the rule's module)."""
    rows = cfg.rows_per_aggregation()
    f = byzantine_count(rows, self.byzantine_fraction, self.num_byzantine)
    rule, a, b = self._NEEDS
    if rows < a * f + b:
      key = ("byzantine_fraction" if self.byzantine_fraction > 0
             else "num_byzantine")
      v.fail(f"{p}.{key}", f"{rule} needs at least {a}f+{b}={a * f + b} "
             f"updates per aggregation (f={f}), but this setup aggregates "
             f"{rows}")


@dataclasses.dataclass(**_kw)
class MultiKrum(Krum):
  """Selection as Krum's; `weighted` averages the selected rows by weight."""
  num_selected: int = 2
  weighted: bool = False

  def validate(self, p):
    super().validate(p)
    v.in_range(f"{p}.num_selected", self.num_selected, 1)


@dataclasses.dataclass(**_kw)
class Bulyan(Krum):
  """Selection as Krum's; the coordinate-wise stage is unweighted."""
  _NEEDS = ("bulyan", 4, 3)


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
  byzantine_fraction: float = 0.0  # > 0: trim ceil(fraction * n) instead
  min_trusted: int = 3  # below this, fall back to the median
  weight_threshold: float = 0.5  # a row is trusted above this

  def validate(self, p):
    v.in_range(f"{p}.clip_multiplier", self.clip_multiplier, 0, lo_open=True)
    _check_fraction(f"{p}.beta", self.beta)
    _check_fraction(f"{p}.byzantine_fraction", self.byzantine_fraction)
    v.in_range(f"{p}.min_trusted", self.min_trusted, 1)
    v.in_range(f"{p}.weight_threshold", self.weight_threshold, 0)
