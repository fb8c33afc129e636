"""The aggregator interface and the registry that config names resolve in.

An aggregator is a factory returning an `Aggregator(init, apply)` pair:

  state = agg.init(example_updates)
  aggregate, state = agg.apply(updates, weights, mask, state)

`updates` is a pytree whose leaves carry the client axis first ([K, ...]);
`weights` is [K] (non-negative), `mask` is [K] bool (False for padding).
Masked-out rows and rows holding a NaN or inf never influence the result.
Kernels work on the flattened [K, D] matrix (see `flatten_updates`).

Factories are registered with `register(name, params=Dataclass, **props)`:
the dataclass declares and validates the config parameters (its fields are
the factory's keyword arguments); `linear=True` marks an aggregate that is
a weighted mean of the rows, the only kind secure aggregation and server DP
can compute.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from afl import registry as registry_lib


class Aggregator(NamedTuple):
  init: Callable[[Any], Any]
  apply: Callable[..., tuple[Any, Any]]
  # Stateless coordinate-wise rules also give their kernel,
  # (flat [K, D], weights [K], valid [K]) -> [D], where valid already
  # excludes non-finite rows; each coordinate depends only on its column,
  # so the server may shard D over devices (`reshard_coordinatewise`).
  coordinatewise: Callable[..., jax.Array] | None = None


REGISTRY = registry_lib.Registry("aggregator")
register = REGISTRY.register


def get(name: str, **kwargs) -> Aggregator:
  """The aggregator `name` with parameters `kwargs` (its params' fields)."""
  entry = REGISTRY[name]
  return entry.build(entry.params(**kwargs))


def names() -> list[str]:
  return REGISTRY.names()


def flatten_updates(updates):
  """Stacked pytree [K, ...] -> ([K, D] matrix, unravel fn for one [D] row)."""
  first = jax.tree_util.tree_map(lambda x: x[0], updates)
  _, unravel = ravel_pytree(first)
  flat = jax.vmap(lambda u: ravel_pytree(u)[0])(updates)
  return flat, unravel


def from_flat(kernel) -> Aggregator:
  """A stateless aggregator (state `()`) from its kernel on the flat matrix,
  (flat [K, D], weights [K], valid [K]) -> [D]; `apply` flattens the updates
  and gives the kernel `valid_rows(flat, mask)`, so masked and non-finite
  rows are marked invalid. See `from_kernel` for coordinate-wise kernels."""
  def init(example_updates):
    del example_updates
    return ()

  def apply(updates, weights, mask, state):
    flat, unravel = flatten_updates(updates)
    return unravel(kernel(flat, weights, valid_rows(flat, mask))), state
  return Aggregator(init, apply)


def from_kernel(kernel) -> Aggregator:
  """A stateless coordinate-wise aggregator from its [K, D] -> [D] kernel
  (see `Aggregator.coordinatewise`); `apply` flattens the updates and drops
  masked and non-finite rows."""
  return from_flat(kernel)._replace(coordinatewise=kernel)


def reshard_coordinatewise(kernel, flat, weights, valid, mesh, axis: str):
  """Runs a coordinate-wise kernel with the parameter axis of `flat` split
  over `mesh` axis `axis`: each device sorts/averages its own columns, no
  collective inside the kernel; the [D] result is gathered by GSPMD where
  it is used. D is zero-padded to a multiple of the device count."""
  n = mesh.shape[axis]
  d = flat.shape[1]
  pad = -d % n
  flat = jnp.pad(flat, ((0, 0), (0, pad)))
  spec = jax.sharding.PartitionSpec
  out = jax.shard_map(kernel, mesh=mesh,
                      in_specs=(spec(None, axis), spec(), spec()),
                      out_specs=spec(axis))(flat, weights, valid)
  return out[:d]


def valid_rows(flat: jax.Array, mask: jax.Array) -> jax.Array:
  """mask & all-finite per row: a row with any NaN/inf counts as invalid."""
  return mask & jnp.all(jnp.isfinite(flat), axis=1)


def check_fraction(name: str, value: float) -> None:
  """A per-side fraction (trim, Byzantine) must lie in [0, 0.5)."""
  if not 0.0 <= value < 0.5:
    raise ValueError(f"{name} must be in [0, 0.5), got {value!r}")


def count_table(num_rows: int, count: Callable[[int], int]) -> jax.Array:
  """[K+1] int32 table of `count(n)` for n = 0..K valid rows.

  Built in Python at trace time (K is static), so a count such as
  int(beta * n) is Python's exactly, never a float32 rounding of it; index
  it with the traced number of valid rows.
  """
  return jnp.asarray(np.array([count(n) for n in range(num_rows + 1)],
                              dtype=np.int32))
