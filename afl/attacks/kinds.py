"""The attack kinds: a registry of their parameters and builders.

Each kind declares its config parameters as a frozen kw-only dataclass that
validates itself; `AttackConfig` assembles the `attack` section from them
(flat keys: `attack.noise_std`, `attack.target`, ...; `target`, shared by
label_flip and backdoor, is one key with one default). Properties:
`data=True` marks a kind that poisons minibatches, its factory taking the
context `num_classes`, `data_max` (the data's max pixel, or None) and
returning `fn(x, y, key, is_malicious) -> (x, y)`; `update=True` marks one
that rewrites updates, its factory returning `fn(flat, malicious, valid,
key) -> flat`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax

from afl import registry as registry_lib
from afl import validate as v
from afl.attacks import data_attacks
from afl.attacks import omniscient
from afl.attacks import update_attacks
from afl.data import text

REGISTRY = registry_lib.Registry("attack")

DataAttackFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                        tuple[jax.Array, jax.Array]]
UpdateAttackFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                          jax.Array]

_kw = dict(frozen=True, kw_only=True)


def _finite(value) -> bool:
  return v.is_number(value) and math.isfinite(value)


@dataclasses.dataclass(**_kw)
class Targeted:
  """A target class (label_flip "target" mode, backdoor)."""
  target: int = 0

  def validate(self, p):
    if (isinstance(self.target, bool) or not isinstance(self.target, int)
        or self.target < 0):
      v.fail(f"{p}.target", f"must be a non-negative integer, got "
             f"{self.target!r}")

  def uses_target(self) -> bool:
    return True

  def check_classes(self, num_classes: int, p: str):
    """Against the data: the target is one of its classes."""
    if self.uses_target() and self.target >= num_classes:
      v.fail(f"{p}.target", f"must be < num_classes={num_classes}, got "
             f"{self.target}")


@dataclasses.dataclass(**_kw)
class LabelFlip(Targeted):
  label_flip_mode: str = "permutation"  # y -> C-1-y, or "target"

  def validate(self, p):
    v.choice(f"{p}.label_flip_mode", self.label_flip_mode,
             data_attacks.LABEL_FLIP_MODES)
    super().validate(p)

  def uses_target(self) -> bool:
    return self.label_flip_mode == "target"


@dataclasses.dataclass(**_kw)
class Backdoor(Targeted):
  """trigger_value None: the maximum pixel value of the training data, a
  saturated patch whatever the data's scaling."""
  backdoor_fraction: float = 0.5  # share of each malicious batch poisoned
  trigger_size: int = 3  # side of the square trigger
  trigger_value: float | None = None

  def validate(self, p):
    super().validate(p)
    if not v.is_number(self.backdoor_fraction) or not (
        0 < self.backdoor_fraction <= 1):
      v.fail(f"{p}.backdoor_fraction",
             f"must be in (0, 1], got {self.backdoor_fraction!r}")
    if (isinstance(self.trigger_size, bool)
        or not isinstance(self.trigger_size, int) or self.trigger_size < 1):
      v.fail(f"{p}.trigger_size", f"must be an integer >= 1, got "
             f"{self.trigger_size!r}")
    if self.trigger_value is not None and not _finite(self.trigger_value):
      v.fail(f"{p}.trigger_value", f"must be a finite number or None, got "
             f"{self.trigger_value!r}")

  def check(self, cfg, p):
    """Against the experiment: the trigger is a pixel patch."""
    if cfg.data.name in text.CORPORA:
      v.fail(f"{p}.kind", "backdoor stamps a pixel trigger; it needs image "
             f"data, not the text corpus {cfg.data.name!r}")


def _finite_from(path, value, strict: bool):
  """A finite number > 0 (`strict`) or >= 0."""
  if not (v.is_number(value) and value < math.inf
          and (value > 0 if strict else value >= 0)):
    v.fail(path, f"must be finite and {'>' if strict else '>='} 0, got "
           f"{value!r}")


def _one_number(name: str, key: str, default: float, strict: bool):
  """The params class of an attack with one finite number `key`."""
  def validate(self, p):
    _finite_from(f"{p}.{key}", getattr(self, key), strict)
  cls = dataclasses.make_dataclass(
      name, [(key, float, dataclasses.field(default=default))],
      namespace={"validate": validate}, **_kw)
  cls.__module__ = __name__
  return cls


Gaussian = _one_number("Gaussian", "noise_std", 1.0, strict=False)
SignFlip = _one_number("SignFlip", "scale", 1.0, strict=True)
Ipm = _one_number("Ipm", "ipm_epsilon", 0.5, strict=True)


@dataclasses.dataclass(**_kw)
class Scaling:
  factor: float = 10.0  # boosting factor

  def validate(self, p):
    if not _finite(self.factor):
      v.fail(f"{p}.factor", f"must be a finite number, got {self.factor!r}")


@dataclasses.dataclass(**_kw)
class Alie:
  alie_z: float | None = None  # None: z_max of the paper

  def validate(self, p):
    if self.alie_z is not None and not _finite(self.alie_z):
      v.fail(f"{p}.alie_z", f"must be a finite number or None, got "
             f"{self.alie_z!r}")


@dataclasses.dataclass(**_kw)
class AgrAgnostic:
  """min-max and min-sum: mu + gamma p, gamma searched below 2 gamma_init."""
  perturbation: str = "unit_vec"  # p: -mu/|mu|, "std" -sigma, "sign" -sign(mu)
  gamma_init: float = 10.0

  def validate(self, p):
    v.choice(f"{p}.perturbation", self.perturbation, omniscient.PERTURBATIONS)
    _finite_from(f"{p}.gamma_init", self.gamma_init, strict=True)


def trigger_pixel(trigger_value: float | None, data_max: float | None
                  ) -> float:
  """`trigger_value`, or `data_max` (the data's max pixel) when None."""
  if trigger_value is None and data_max is None:
    raise ValueError("backdoor needs a numeric trigger_value; resolve None "
                     "with AttackConfig.resolved_trigger_value(data_max)")
  return float(data_max if trigger_value is None else trigger_value)


def keep_batch(x, y, key, is_malicious):
  """The data attack of kinds without one: the batch unchanged."""
  del key, is_malicious
  return x, y


def keep_updates(flat, malicious, valid, key):
  """The update attack of kinds without one: the updates unchanged."""
  del malicious, valid, key
  return flat


@REGISTRY.register("none")
def _none():
  """No attack: neither `data` nor `update`, nothing is ever built."""


@REGISTRY.register("label_flip", params=LabelFlip, data=True)
def _label_flip(*, target, label_flip_mode, num_classes, data_max):
  del data_max
  if label_flip_mode not in data_attacks.LABEL_FLIP_MODES:
    raise ValueError("label_flip mode must be one of "
                     f"{data_attacks.LABEL_FLIP_MODES}, got "
                     f"{label_flip_mode!r}")

  def flip(x, y, key, is_malicious):
    del key
    return x, data_attacks.label_flip(y, is_malicious, num_classes,
                                      label_flip_mode, target)
  return flip


@REGISTRY.register("backdoor", params=Backdoor, data=True)
def _backdoor(*, target, backdoor_fraction, trigger_size, trigger_value,
              num_classes, data_max):
  del num_classes
  value = trigger_pixel(trigger_value, data_max)

  def poison(x, y, key, is_malicious):
    return data_attacks.backdoor(
        x, y, key, is_malicious, target=target, fraction=backdoor_fraction,
        trigger_size=trigger_size, trigger_value=value)
  return poison


@REGISTRY.register("gaussian", params=Gaussian, update=True)
def _gaussian(*, noise_std):
  return lambda f, mal, ok, key: update_attacks.gaussian_noise(
      f, mal, ok, key, noise_std)


def _keyless(attack):
  """The factory of an update attack that draws no randomness and takes
  its one parameter positionally after (flat, malicious, valid)."""
  def factory(**params):
    (value,) = params.values()
    return lambda f, mal, ok, key: attack(f, mal, ok, value)
  return factory


for _kind, _cls, _attack in (("sign_flip", SignFlip, update_attacks.sign_flip),
                             ("scaling", Scaling, update_attacks.scaling),
                             ("alie", Alie, update_attacks.alie),
                             ("ipm", Ipm, update_attacks.ipm)):
  REGISTRY.register(_kind, params=_cls, update=True)(_keyless(_attack))


@REGISTRY.register("mimic", update=True)
def _mimic():
  return lambda f, mal, ok, key: omniscient.mimic(f, mal, ok)


def _agr_agnostic(attack):
  """The factory of `omniscient.min_max` or `min_sum`."""
  def factory(*, perturbation, gamma_init):
    if perturbation not in omniscient.PERTURBATIONS:
      raise ValueError(f"perturbation must be one of "
                       f"{omniscient.PERTURBATIONS}, got {perturbation!r}")
    return lambda f, mal, ok, key: attack(f, mal, ok, perturbation,
                                          gamma_init)
  return factory


for _kind, _attack in (("minmax", omniscient.min_max),
                       ("minsum", omniscient.min_sum)):
  REGISTRY.register(_kind, params=AgrAgnostic, update=True)(
      _agr_agnostic(_attack))


def _entry(kind: str):
  if kind not in REGISTRY:
    raise ValueError(f"unknown attack kind {kind!r}; known: "
                     f"{REGISTRY.names()}")
  return REGISTRY[kind]


def _params(entry, given: dict):
  return entry.params(**{f: given[f] for f in entry.param_fields()})


def make_data_attack(kind: str, num_classes: int, *,
                     mode: str = "permutation", target: int = 0,
                     fraction: float = 0.5, trigger_size: int = 3,
                     trigger_value: float | None = None) -> DataAttackFn:
  """The data component of attack `kind`, as `fn(x, y, key, is_malicious)`.

  Args:
    kind: a `REGISTRY` name; kinds without `data` return identity.
    num_classes: number of classes (label_flip).
    mode: label_flip mode ("permutation" | "target").
    target: target class (label_flip "target" mode, backdoor).
    fraction: share of each malicious batch that is poisoned (backdoor).
    trigger_size: side of the square trigger (backdoor).
    trigger_value: trigger pixel value (backdoor); must be a number here,
      resolve `AttackConfig.trigger_value=None` with
      `AttackConfig.resolved_trigger_value(data_max)` first.

  Returns:
    fn(x [B, ...], y [B], key, is_malicious bool scalar) -> (x, y); pure and
    jittable, vmap it over a cohort for per-client masks.
  """
  entry = _entry(kind)
  if not entry.prop("data"):
    return keep_batch
  given = dict(label_flip_mode=mode, target=target,
               backdoor_fraction=fraction, trigger_size=trigger_size,
               trigger_value=trigger_value)
  return entry.build(_params(entry, given), num_classes=num_classes,
                     data_max=None)


def make_update_attack(kind: str, *, std: float = 1.0, scale: float = 1.0,
                       factor: float = 10.0, z: float | None = None,
                       epsilon: float = 0.5, perturbation: str = "unit_vec",
                       gamma_init: float = 10.0) -> UpdateAttackFn:
  """The update component of attack `kind`: `fn(flat, malicious, valid, key)`.

  Args:
    kind: a `REGISTRY` name; kinds without `update` return identity.
    std: gaussian noise std.
    scale: sign_flip scale.
    factor: scaling factor.
    z: alie z (None = z_max).
    epsilon: ipm epsilon.
    perturbation: minmax / minsum perturbation (`omniscient.PERTURBATIONS`).
    gamma_init: minmax / minsum first gamma of the search.

  Returns:
    fn(flat [K, D], malicious [K], valid [K], key) -> [K, D], pure and
    jittable.
  """
  entry = _entry(kind)
  if not entry.prop("update"):
    return keep_updates
  given = dict(noise_std=std, scale=scale, factor=factor, alie_z=z,
               ipm_epsilon=epsilon, perturbation=perturbation,
               gamma_init=gamma_init)
  return entry.build(_params(entry, given))
