"""Registries of named components whose parameters are dataclasses.

Every configurable family (aggregators, pre-aggregation stages, attacks,
models, partitioners, server modes) keeps a `Registry`. An entry is a
factory plus the frozen kw-only dataclass of its parameters, which
validates itself (`validate(path)`, raising `afl.validate.ConfigError`)
and may check itself against the whole experiment (`check(cfg, path)`).
Properties that other code branches on ("linear", "needs individual
updates", ...) are keyword arguments of `register` and live on the entry,
never in lists of names elsewhere.

>>> import dataclasses
>>> reg = Registry("widget")
>>> @dataclasses.dataclass(frozen=True, kw_only=True)
... class Size:
...   size: int = 3
...   def validate(self, path):
...     pass
>>> @reg.register("box", params=Size, linear=True)
... def box(size):
...   return size * 2
>>> reg["box"].build(Size(size=4)), reg["box"].prop("linear")
(8, True)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoParams:
  """Parameters of a component that has none."""

  def validate(self, path: str):
    del path


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  factory: Callable[..., Any]
  params: type
  props: dict

  def prop(self, key: str, default=False):
    return self.props.get(key, default)

  def build(self, params, **context):
    """The component: factory(**params' fields, **context); `context` holds
    what the builder supplies beside the config (a PRNG key, ...)."""
    kwargs = {f.name: getattr(params, f.name)
              for f in dataclasses.fields(params)}
    return self.factory(**kwargs, **context)

  def param_fields(self) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(self.params)}


class Registry:
  """Name -> `Entry`; `version` changes with every (un)registration so
  config sections assembled from it can be cached."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Entry] = {}
    self.version = 0

  def register(self, name: str, params: type = NoParams, **props):
    """Decorator registering `factory(**params_fields, **context)`."""
    if not (dataclasses.is_dataclass(params)
            and params.__dataclass_params__.frozen):
      raise TypeError(f"{self.kind} {name!r}: params must be a frozen "
                      "dataclass")

    def deco(factory):
      self._entries[name] = Entry(name, factory, params, dict(props))
      self.version += 1
      return factory
    return deco

  def __delitem__(self, name: str):
    del self._entries[name]
    self.version += 1

  def __getitem__(self, name: str) -> Entry:
    if name not in self._entries:
      raise KeyError(f"unknown {self.kind} {name!r}; known: {self.names()}")
    return self._entries[name]

  def __contains__(self, name) -> bool:
    return name in self._entries

  def names(self) -> list[str]:
    return sorted(self._entries)

  def entries(self) -> list[Entry]:
    return [self._entries[n] for n in self.names()]

  def where(self, key: str, value=True) -> list[str]:
    """Names of the entries whose property `key` equals `value`."""
    return [e.name for e in self.entries() if e.prop(key) == value]
