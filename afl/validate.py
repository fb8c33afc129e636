"""One-line config errors and the range/choice checks components use.

Every config error names its key: `config.<path>: <what is wrong>`. This
module imports nothing of afl, so any component (aggregator, stage, attack,
model, partitioner, server mode) can validate its own parameters without
importing `afl.config`.
"""
from __future__ import annotations

import math


class ConfigError(ValueError):
  """A bad config value; the message is one line naming the key."""


def fail(path: str, msg: str):
  raise ConfigError(f"config.{path}: {msg}")


def choice(path: str, value, options):
  if value not in options:
    fail(path, f"must be one of {list(options)}, got {value!r}")


def in_range(path: str, value, lo=None, hi=None, lo_open: bool = False,
             hi_open: bool = False):
  """lo <= value and value <= hi (< when lo_open / hi_open); NaN never
  passes."""
  if isinstance(value, float) and math.isnan(value):
    fail(path, f"must be a number, got {value!r}")
  if lo is not None and (value < lo or (lo_open and value == lo)):
    fail(path, f"must be {'>' if lo_open else '>='} {lo}, got {value!r}")
  if hi is not None and (value > hi or (hi_open and value == hi)):
    fail(path, f"must be {'<' if hi_open else '<='} {hi}, got {value!r}")


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)
