"""Data attacks: poison a malicious client's minibatch in its local step.

Pure and jittable; `is_malicious` is a bool scalar that may be traced, so
one vmapped cohort mixes honest and malicious clients (`afl.attacks`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from afl.attacks.selection import num_selected

LABEL_FLIP_MODES = ("permutation", "target")


def label_flip(y: jax.Array, is_malicious: jax.Array, num_classes: int,
               mode: str = "permutation", target: int = 0) -> jax.Array:
  """Flips the labels of a malicious client's minibatch.

  Args:
    y: [B] int labels.
    is_malicious: bool scalar (may be traced); False returns `y` unchanged.
    num_classes: number of classes C.
    mode: "permutation" maps y -> C - 1 - y (the fixed reversal
      permutation 0<->C-1, 1<->C-2, ...; with odd C the middle class maps to
      itself); "target" maps every label to `target`.
    target: the target class of "target" mode.

  Returns:
    [B] labels, same dtype as `y`.

  References:
    Tolpegin et al. 2020, "Data Poisoning Attacks Against Federated Learning
    Systems", ESORICS.

  >>> label_flip(jnp.array([0, 1, 9]), jnp.array(True), 10)
  Array([9, 8, 0], dtype=int32)
  """
  if mode == "permutation":
    flipped = (num_classes - 1) - y
  elif mode == "target":
    flipped = jnp.full_like(y, target)
  else:
    raise ValueError(f"label_flip mode must be one of {LABEL_FLIP_MODES}, "
                     f"got {mode!r}")
  return jnp.where(is_malicious, flipped.astype(y.dtype), y)


def stamp_trigger(x: jax.Array, trigger_size: int,
                  trigger_value: float) -> jax.Array:
  """Stamps the backdoor trigger on images.

  The trigger is a solid `trigger_size` x `trigger_size` square in the
  bottom-right corner (rows H-s..H-1, columns W-s..W-1), every channel set
  to `trigger_value`; all other pixels are unchanged.

  Args:
    x: [..., H, W, C] images (a batch or a single image).
    trigger_size: side s of the square, 1 <= s <= min(H, W).
    trigger_value: pixel value written into the square.

  Returns:
    Images of the same shape and dtype.

  >>> stamp_trigger(jnp.zeros((3, 3, 1)), 2, 1.0)[..., 0]
  Array([[0., 0., 0.],
         [0., 1., 1.],
         [0., 1., 1.]], dtype=float32)
  """
  x = jnp.asarray(x)
  h, w = x.shape[-3], x.shape[-2]
  if not 1 <= trigger_size <= min(h, w):
    raise ValueError(f"trigger_size must be in [1, {min(h, w)}] for images of"
                     f" size {h}x{w}, got {trigger_size}")
  s = trigger_size
  return x.at[..., h - s:, w - s:, :].set(
      jnp.asarray(trigger_value, x.dtype))


def backdoor(x: jax.Array, y: jax.Array, key: jax.Array,
             is_malicious: jax.Array, *, target: int, fraction: float,
             trigger_size: int, trigger_value: float
             ) -> tuple[jax.Array, jax.Array]:
  """Backdoor poisoning: trigger + relabel a fraction of a malicious batch.

  Exactly m = round(fraction * B) (half up) examples, the first m of a random
  permutation drawn with `key`, get the trigger (`stamp_trigger`) and the
  label `target`. Honest clients' batches are returned unchanged.

  Args:
    x: [B, H, W, C] images.
    y: [B] int labels.
    key: PRNG key choosing the poisoned examples.
    is_malicious: bool scalar (may be traced).
    target: the attacker's target class.
    fraction: share of the batch that is poisoned, in [0, 1].
    trigger_size: side of the square trigger.
    trigger_value: pixel value of the trigger.

  Returns:
    (x, y) with the poisoned examples replaced.

  References:
    Gu et al. 2017, "BadNets: Identifying Vulnerabilities in the Machine
    Learning Model Supply Chain"; Bagdasaryan et al. 2020, "How To Backdoor
    Federated Learning", AISTATS.

  >>> x, y = backdoor(jnp.zeros((4, 3, 3, 1)), jnp.arange(4),
  ...                 jax.random.key(0), jnp.array(True), target=0,
  ...                 fraction=0.5, trigger_size=1, trigger_value=1.0)
  >>> int(x[:, 2, 2, 0].sum())
  2
  """
  b = x.shape[0]
  m = num_selected(fraction, b)
  chosen = jnp.zeros((b,), bool).at[jax.random.permutation(key, b)[:m]].set(
      True)
  poison = chosen & is_malicious
  stamped = stamp_trigger(x, trigger_size, trigger_value)
  x = jnp.where(poison.reshape((b,) + (1,) * (x.ndim - 1)), stamped, x)
  y = jnp.where(poison, jnp.asarray(target, y.dtype), y)
  return x, y


def attack_success_rate(preds: jax.Array, y_true: jax.Array, target: int,
                        mask: jax.Array | None = None) -> jax.Array:
  """Backdoor attack success rate on a triggered test set.

  The fraction of triggered examples whose true label is not `target` that
  the model predicts as `target` (examples already of class `target` say
  nothing about the backdoor and are left out).

  Args:
    preds: [N] predicted classes on triggered inputs (`stamp_trigger`).
    y_true: [N] true labels.
    target: the backdoor's target class.
    mask: optional [N] bool, False for padding examples.

  Returns:
    Scalar float32 in [0, 1]; 0 when no example is eligible.

  >>> attack_success_rate(jnp.array([0, 0, 2, 0]), jnp.array([0, 1, 2, 3]), 0)
  Array(0.6666667, dtype=float32)
  """
  eligible = y_true != target
  if mask is not None:
    eligible = eligible & mask
  hits = jnp.sum(eligible & (preds == target))
  n = jnp.sum(eligible)
  return jnp.where(n > 0, hits / jnp.maximum(n, 1), 0.0).astype(jnp.float32)
