"""The checkpoint protocol every stateful component implements.

  arrays, host = component.state_dict()
  component.load_state_dict(arrays, host)

`arrays` is a flat `{name: array}` dict (written by orbax), `host` a
JSON-serializable value. `afl.checkpoint` saves and restores the
components by name without knowing their attributes. `flatten` and
`unflatten` turn a pytree into such a dict and back, the structure coming
from a template the component already holds.
"""
from __future__ import annotations

import jax
import numpy as np


def flatten(tree, prefix: str = "") -> dict:
  """{prefix + leaf index: numpy leaf} of a pytree."""
  leaves = jax.tree_util.tree_leaves(tree)
  return {f"{prefix}{i}": np.asarray(x) for i, x in enumerate(leaves)}


def unflatten(template, arrays: dict, prefix: str = ""):
  """The pytree shaped like `template` with leaves from `flatten`'s dict."""
  treedef = jax.tree_util.tree_structure(template)
  return jax.tree_util.tree_unflatten(
      treedef, [arrays[f"{prefix}{i}"] for i in range(treedef.num_leaves)])


def flatten_rows(leaves: list, prefix: str = "") -> dict:
  """`flatten` of rows stacked on a leading axis, given as that stack's
  leaves (one array per leaf however many rows: a checkpoint of thousands
  of rows stays a few arrays)."""
  return {f"{prefix}{i}": np.asarray(x) for i, x in enumerate(leaves)}


def unflatten_rows(template, arrays: dict, n: int, prefix: str = "") -> list:
  """The `n` rows `flatten_rows` wrote, each a pytree like `template`."""
  if not n:
    return []
  stacked = unflatten(template, arrays, prefix)
  return [jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
          for i in range(n)]
