"""The `attack` config section: which attack, by whom, with which values."""
from __future__ import annotations

import dataclasses

import numpy as np

from afl import config_tree
from afl import validate as v
from afl.attacks import kinds
from afl.attacks.selection import select_malicious


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig(config_tree.Component):
  """`kind` picks an `afl.attacks.kinds` entry; every kind's parameters
  (label_flip_mode, target, backdoor_fraction, trigger_size, trigger_value,
  noise_std, scale, factor, alie_z, ipm_epsilon, perturbation, gamma_init)
  are keys of this section too (`config_tree.component_section`).

  Attributes:
    kind: a `kinds.REGISTRY` name.
    fraction: share of clients that are malicious (`select_malicious`).
    ids: explicit malicious client ids (exclusive with `fraction`).
  """
  REGISTRY = kinds.REGISTRY
  SELECTOR = "kind"
  kind: str = "none"
  fraction: float = 0.0
  ids: tuple = ()

  def validate(self, p: str = "attack"):
    """Raises ConfigError("config.<p>.<key>: ...") on a bad value."""
    if not v.is_number(self.fraction) or not 0 <= self.fraction <= 1:
      v.fail(f"{p}.fraction", f"must be in [0, 1], got {self.fraction!r}")
    ids = tuple(self.ids)
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer))
           or i < 0 for i in ids):
      v.fail(f"{p}.ids", f"must be non-negative integers, got {list(ids)}")
    if len(set(ids)) != len(ids):
      v.fail(f"{p}.ids", f"duplicate ids in {list(ids)}")
    if ids and self.fraction:
      v.fail(f"{p}.ids", "give either attack.ids or attack.fraction, not both")

  def check_against(self, num_clients: int, num_classes: int,
                    prefix: str = "attack"):
    """Checks values that depend on the data: ids and target in range."""
    if self.kind == "none":
      return
    for i in self.ids:
      if i >= num_clients:
        v.fail(f"{prefix}.ids", f"id {i} out of range [0, {num_clients}) "
               f"(num_clients={num_clients})")
    check = getattr(self.params, "check_classes", None)
    if check is not None:
      check(num_classes, prefix)

  def resolved_trigger_value(self, data_max: float) -> float:
    """`trigger_value`, or `data_max` (the data's max pixel) when None."""
    return kinds.trigger_pixel(self.trigger_value, data_max)

  @property
  def has_data_attack(self) -> bool:
    return self.entry.prop("data")

  @property
  def has_update_attack(self) -> bool:
    return self.entry.prop("update")

  def malicious_mask(self, num_clients: int, seed: int) -> np.ndarray:
    """`select_malicious` with this config's fraction/ids ([N] bool)."""
    if self.kind == "none":
      return np.zeros(num_clients, bool)
    return select_malicious(num_clients, self.fraction, seed, self.ids)

  def data_attack(self, num_classes: int,
                  data_max: float) -> kinds.DataAttackFn:
    """This kind's data attack (identity without `data`)."""
    if not self.has_data_attack:
      return kinds.keep_batch
    return self.entry.build(self.params, num_classes=num_classes,
                            data_max=data_max)

  def update_attack(self) -> kinds.UpdateAttackFn:
    """This kind's update attack (identity without `update`)."""
    if not self.has_update_attack:
      return kinds.keep_updates
    return self.entry.build(self.params)
