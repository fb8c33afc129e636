"""Aggregators: factories returning (init, apply); chosen by name from config."""
from afl.aggregators import mean  # noqa: F401  (registers)
from afl.aggregators import median  # noqa: F401  (registers)
from afl.aggregators import trimmed_mean  # noqa: F401  (registers)
from afl.aggregators.base import Aggregator, flatten_updates, get, names, register, valid_rows
