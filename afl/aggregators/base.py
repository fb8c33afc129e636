"""The aggregator interface and the registry that config names resolve in.

An aggregator is a factory returning an `Aggregator(init, apply)` pair:

  state = agg.init()
  aggregate, state = agg.apply(updates, weights, mask, state)

`updates` is a pytree whose leaves carry the client axis first ([K, ...]);
`weights` is [K] (non-negative), `mask` is [K] bool (False for padding).
Masked-out rows and rows holding a NaN or inf never influence the result.
Kernels work on the flattened [K, D] matrix (see `flatten_updates`).
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


class Aggregator(NamedTuple):
  init: Callable[[], Any]
  apply: Callable[..., tuple[Any, Any]]


_REGISTRY: dict[str, Callable[..., Aggregator]] = {}


def register(name: str):
  """Registers an aggregator factory under `name` (used by config builders)."""
  def deco(factory):
    _REGISTRY[name] = factory
    return factory
  return deco


def get(name: str, **kwargs) -> Aggregator:
  if name not in _REGISTRY:
    raise KeyError(f"unknown aggregator {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name](**kwargs)


def names() -> list[str]:
  return sorted(_REGISTRY)


def flatten_updates(updates):
  """Stacked pytree [K, ...] -> ([K, D] matrix, unravel fn for one [D] row)."""
  first = jax.tree_util.tree_map(lambda x: x[0], updates)
  _, unravel = ravel_pytree(first)
  flat = jax.vmap(lambda u: ravel_pytree(u)[0])(updates)
  return flat, unravel


def valid_rows(flat: jax.Array, mask: jax.Array) -> jax.Array:
  """mask & all-finite per row: a row with any NaN/inf counts as invalid."""
  return mask & jnp.all(jnp.isfinite(flat), axis=1)
