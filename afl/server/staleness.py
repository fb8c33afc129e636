"""Staleness weights s(tau) (Xie et al. 2019, sec. 5.2)."""
from __future__ import annotations

import numpy as np


def staleness_weight(tau, fn: str, a: float = 0.5, b: float = 4.0):
  """s(tau): constant 1; polynomial (1+tau)^-a; hinge 1 for tau <= b else
  1 / (a (tau - b) + 1)."""
  tau = np.asarray(tau, np.float64)
  if fn == "constant":
    return np.ones_like(tau)
  if fn == "polynomial":
    return (1.0 + tau) ** (-a)
  if fn == "hinge":
    return np.where(tau <= b, 1.0, 1.0 / (a * (tau - b) + 1.0))
  raise ValueError(f"unknown staleness function {fn!r}")
