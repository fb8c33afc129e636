"""Experiment specs: named experiments as overrides of base configs.

A spec (see configs/experiments.py) is a module, or a file, with
`get_experiments(arg)` returning `[(name, base, overrides)]` or
`{name: ConfigDict}`; `load_experiments` turns it into `Experiment`s whose
`make_config()` applies the overrides with `apply_overrides`, which refuses
keys the base config does not have.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import importlib.util
import os
import sys
import types
from typing import Callable

import ml_collections

from afl import config as config_lib


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One named experiment: `make_config()` returns its ConfigDict."""
  name: str
  make_config: Callable[[], ml_collections.ConfigDict]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict,
                    name: str = "") -> ml_collections.ConfigDict:
  """Returns a copy of `config` with nested `overrides` applied.

  Sections (dataclass-valued fields of `afl.config.ExperimentConfig`) are
  merged key by key; any other value, dict-valued leaves such as
  `client.optimizer_kwargs` included, is replaced whole. Dotted keys
  ("server.mode") are accepted too.

  Args:
    config: the base config; not modified.
    overrides: e.g. `{"server": {"mode": "sync"}, "attack.fraction": 0.3}`.
    name: the experiment's name, for error messages.

  Returns:
    The new ConfigDict.

  Raises:
    ConfigError: a key that `config` does not have, or a value whose type
      the ConfigDict refuses; one line naming the experiment and the key.

  >>> from configs import tiny
  >>> c = apply_overrides(tiny.get_config(), {"server": {"mode": "sync"}})
  >>> c.server.mode
  'sync'
  """
  out = ml_collections.ConfigDict(config.to_dict())
  where = f"experiment {name}: " if name else ""
  _merge(out, overrides, config_lib.ExperimentConfig(), "", where)
  return out


def _merge(node, overrides, schema, path, where):
  for key, value in overrides.items():
    if "." in key:  # "a.b": value  ==  {"a": {"b": value}}
      head, rest = key.split(".", 1)
      _merge(node, {head: {rest: value}}, schema, path, where)
      continue
    full = f"{path}.{key}" if path else key
    if key not in node:
      raise config_lib.ConfigError(
          f"{where}config.{full}: unknown key in the base config; known keys "
          f"here: {sorted(node.keys())}")
    if schema is not None and hasattr(schema, key):
      sub_schema = getattr(schema, key)
      is_section = dataclasses.is_dataclass(sub_schema)
    else:  # a key afl.config does not know: trust the ConfigDict's shape
      sub_schema = None
      is_section = isinstance(node[key], ml_collections.ConfigDict)
    if is_section:
      if not isinstance(value, collections.abc.Mapping):
        raise config_lib.ConfigError(
            f"{where}config.{full}: is a section; override it with a dict, "
            f"got {value!r}")
      _merge(node[key], value, sub_schema, full, where)
      continue
    try:
      node[key] = dict(value) if isinstance(
          value, collections.abc.Mapping) else value
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(
          f"{where}config.{full}: cannot set {value!r}: "
          f"{str(e).splitlines()[0]}") from None


def _base_factory(base) -> Callable[[], ml_collections.ConfigDict]:
  if isinstance(base, types.ModuleType):
    return base.get_config
  if isinstance(base, ml_collections.ConfigDict):
    return lambda: ml_collections.ConfigDict(base.to_dict())
  if callable(base):
    return base
  raise config_lib.ConfigError(
      f"experiment base must be a config module, a ConfigDict or a "
      f"function, got {base!r}")


def _normalize(spec) -> list[Experiment]:
  """Accepts `[(name, base, overrides)]` or `{name: ConfigDict}`."""
  if isinstance(spec, collections.abc.Mapping):
    spec = [(name, cfg, {}) for name, cfg in spec.items()]
  exps, seen = [], set()
  for entry in spec:
    name, base, overrides = entry
    if not name or "/" in name or name in (".", ".."):
      raise config_lib.ConfigError(
          f"experiment name {name!r} is not a directory name")
    if name in seen:
      raise config_lib.ConfigError(f"experiment {name} is defined twice")
    seen.add(name)
    factory = _base_factory(base)
    exps.append(Experiment(name, lambda f=factory, o=overrides, n=name:
                           apply_overrides(f(), o, n)))
  return exps


def load_experiments(spec_path_or_module, arg: str | None = None
                     ) -> list[Experiment]:
  """Loads a spec: a file path, a module name, or a module object with
  `get_experiments(arg)`; returns its experiments in order."""
  spec = spec_path_or_module
  if isinstance(spec, str):
    if spec.endswith(".py") or os.sep in spec:
      spec = _load_file(spec)
    else:
      try:
        spec = importlib.import_module(spec)
      except ImportError as e:
        raise config_lib.ConfigError(
            f"--experiments: cannot import {spec}: {e}") from None
  if not hasattr(spec, "get_experiments"):
    raise config_lib.ConfigError(
        f"--experiments: {getattr(spec, '__name__', spec)} has no "
        f"get_experiments()")
  try:
    exps = spec.get_experiments(arg)
  except ValueError as e:  # e.g. an unknown --set
    raise config_lib.ConfigError(f"--set: {e}") from None
  return _normalize(exps)


def _load_file(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--experiments: no such file {path}")
  # Specs import their base configs as `configs.<name>` (as config files do
  # under launch.py): make the folder above the spec's folder importable.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    mod_spec = importlib.util.spec_from_file_location(
        "_afl_experiments_spec", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
  finally:
    if added:
      sys.path.remove(root)
  return module

