"""Walking a ConfigDict into frozen dataclasses, and component sections.

`build(cls, cfg, path)` checks every key of `cfg` against the dataclass
`cls` (unknown keys, types, nested sections), builds it and calls its
`validate(path)`. A section class that picks a registered component sets
the class variables `REGISTRY` (an `afl.registry.Registry`) and `SELECTOR`
(the field holding the component's name); `component_section(cls)` then
adds every registered component's parameters as fields, and the section
validates each component's parameters and gives the chosen one as
`.params` (its `Entry` as `.entry`).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

from afl.validate import ConfigError, fail

try:
  import ml_collections
except ImportError:  # bare JAX images (benchmarks/gpu_suite.sh) use only the
  ml_collections = None  # dataclasses; ConfigDicts cannot exist there


class Component:
  """Mixin of sections assembled from a registry (module doc)."""
  REGISTRY: ClassVar[Any] = None
  SELECTOR: ClassVar[str] = "name"

  @property
  def entry(self):
    return self.REGISTRY[getattr(self, self.SELECTOR)]

  def params_of(self, entry):
    return entry.params(**{f: getattr(self, f) for f in entry.param_fields()})

  @property
  def params(self):
    """The chosen component's parameters dataclass."""
    return self.params_of(self.entry)

  def validate_params(self, path: str):
    _choice = getattr(self, self.SELECTOR)
    if _choice not in self.REGISTRY:
      fail(f"{path}.{self.SELECTOR}" if path else self.SELECTOR,
           f"must be one of {self.REGISTRY.names()}, got {_choice!r}")
    for entry in self.REGISTRY.entries():
      self.params_of(entry).validate(path)


class PerComponent:
  """Mixin of a section holding one sub-section per registered component,
  named after it, of its parameters dataclass (`stage.<name>.<key>`)."""
  REGISTRY: ClassVar[Any] = None

  def validate(self, path: str):
    del path  # each sub-section validated itself when built


_SECTIONS: dict = {}


def component_section(cls):
  """`cls` with the parameters of every component registered now."""
  if not (isinstance(cls, type) and issubclass(cls, (Component,
                                                      PerComponent))):
    return cls
  reg = cls.REGISTRY
  cached = _SECTIONS.get(cls)
  if cached is not None and cached[0] == reg.version:
    return cached[1]
  if issubclass(cls, PerComponent):
    fields = [(e.name, e.params, dataclasses.field(default_factory=e.params))
              for e in reg.entries()]
    return _cache(cls, fields)
  own = {f.name for f in dataclasses.fields(cls)}
  fields, seen = [], {}
  for entry in reg.entries():
    hints = typing.get_type_hints(entry.params)
    for name, f in entry.param_fields().items():
      default = (f.default if f.default is not dataclasses.MISSING
                 else f.default_factory())
      if name in own:
        raise TypeError(f"{reg.kind} {entry.name!r}: parameter {name!r} "
                        f"clashes with the section key {name!r}")
      if name in seen:
        if seen[name] != (hints[name], default):
          raise TypeError(f"{reg.kind} {entry.name!r}: parameter {name!r} "
                          f"differs from another {reg.kind}'s "
                          f"{seen[name]}")
        continue
      seen[name] = (hints[name], default)
      fields.append((name, hints[name], dataclasses.field(default=default)))
  return _cache(cls, fields)


def _cache(cls, fields):
  section = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,),
                                       frozen=True, kw_only=True)
  section.__module__ = cls.__module__
  _SECTIONS[cls] = (cls.REGISTRY.version, section)
  return section


def default(cls):
  """A dataclass field defaulting to `component_section(cls)()`."""
  return dataclasses.field(default_factory=lambda: component_section(cls)())


def _finite(path: str, value: Any, unbounded: bool = False):
  """NaN never passes; inf only where the key is `unbounded`."""
  if isinstance(value, float) and not math.isfinite(value) and not (
      unbounded and math.isinf(value) and value > 0):
    fail(path, f"must be a finite number, got {value!r}")
  if isinstance(value, dict):
    for k, v in value.items():
      _finite(f"{path}.{k}", v)
  elif isinstance(value, (list, tuple)):
    for i, v in enumerate(value):
      _finite(f"{path}[{i}]", v)


def coerce(path: str, value: Any, hint: Any, unbounded: bool = False) -> Any:
  """Checks `value` against the annotation `hint`, allowing int -> float.

  Non-finite floats are refused, here and inside dicts and tuples (e.g.
  `optimizer_kwargs`), except +inf for an `unbounded` key (a section's
  `UNBOUNDED`, such as `stop.max_wall_seconds`)."""
  if is_config_dict(value):
    value = value.to_dict()
  _finite(path, value, unbounded)
  origin = typing.get_origin(hint)
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      fail(path, f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      fail(path, f"expected an integer, got {type(value).__name__} {value!r}")
    return value
  if hint is bool:
    if not isinstance(value, bool):
      fail(path, f"expected true/false, got {type(value).__name__} {value!r}")
    return value
  if hint is str:
    if not isinstance(value, str):
      fail(path, f"expected a string, got {type(value).__name__} {value!r}")
    return value
  if hint is tuple or origin is tuple:
    if not isinstance(value, (list, tuple)):
      fail(path, f"expected a tuple, got {type(value).__name__} {value!r}")
    return tuple(value)
  if hint is dict:
    if not isinstance(value, dict):
      fail(path, f"expected a dict, got {type(value).__name__} {value!r}")
    return dict(value)
  if origin is types.UnionType or origin is typing.Union:
    if value is None and type(None) in typing.get_args(hint):
      return None
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    return coerce(path, value, inner[0]) if len(inner) == 1 else value
  return value


def is_config_dict(value) -> bool:
  return (ml_collections is not None
          and isinstance(value, ml_collections.ConfigDict))


def build(cls, cfg, path: str, localns: dict | None = None):
  """`cls` (a section dataclass) from the ConfigDict/dict `cfg`."""
  cls = component_section(cls)
  hints = typing.get_type_hints(cls, localns=localns)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  given = dict(cfg.items()) if cfg is not None else {}
  for key in given:
    if key not in fields:
      where = f"config.{path}.{key}" if path else f"config.{key}"
      raise ConfigError(f"{where}: unknown key; known keys here: "
                        f"{sorted(fields)}")
  kwargs = {}
  for name, value in given.items():
    sub = f"{path}.{name}" if path else name
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
      if not (isinstance(value, dict) or is_config_dict(value)):
        fail(sub, f"expected a section, got {value!r}")
      kwargs[name] = build(hint, value, sub, localns)
    else:
      kwargs[name] = coerce(sub, value, hint,
                            unbounded=name in getattr(cls, "UNBOUNDED", ()))
  obj = cls(**kwargs)
  obj.validate(path)
  if isinstance(obj, Component):
    obj.validate_params(path)
  return obj
