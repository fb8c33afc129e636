"""Aggregators: factories returning (init, apply); chosen by name from config.

Registered names: mean, median, trimmed_mean, krum, multi_krum, bulyan,
geomed, centered_clip, hybrid. Pre-aggregation clipping lives in
`clipping`, the per-client trust manager in `trust`, each aggregator's
config parameters in `params`, the overflow-safe arithmetic they share in
`_scale`.
"""
# Imported for their @register side effects.
from afl.aggregators import bulyan  # noqa: F401
from afl.aggregators import centered_clip  # noqa: F401
from afl.aggregators import geomed  # noqa: F401
from afl.aggregators import hybrid  # noqa: F401
from afl.aggregators import krum  # noqa: F401
from afl.aggregators import mean  # noqa: F401
from afl.aggregators import median  # noqa: F401
from afl.aggregators import trimmed_mean  # noqa: F401
from afl.aggregators.base import REGISTRY, Aggregator, flatten_updates, get, names, register, reshard_coordinatewise, valid_rows
