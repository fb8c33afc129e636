"""Data and model-update attacks by Byzantine clients, vectorized by masks.

Which clients are malicious is fixed once per run (`select_malicious`, host
side). Everything else is a pure, jittable function in which per-client
behaviour is chosen by boolean masks, never by Python branches per client,
so a vmapped cohort with a mix of honest and malicious clients is one XLA
program (DESIGN.md, "Robust aggregation, trust, DP, compression and attacks
in the same jitted path"). Hyperparameters are static Python values.

Two places in the pipeline:

- **Data attacks** poison one client's minibatch inside its local step:
  `make_data_attack(kind, ...)` returns `fn(x, y, key, is_malicious) ->
  (x, y)` with `is_malicious` a traced bool scalar (vmap it over a cohort).
- **Update attacks** rewrite the stacked, flattened updates `flat [K, D]`
  of a cohort or server buffer: `make_update_attack(kind, ...)` returns
  `fn(flat, malicious [K], valid [K], key) -> flat [K, D]`; only rows that
  are malicious and valid change.

`alie` and `ipm` are *omniscient*: they read the honest updates of the same
buffer (the strongest, standard threat model of both papers' evaluations).

Example:

  >>> import jax, jax.numpy as jnp
  >>> flat = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
  >>> mal = jnp.array([True, False, False])
  >>> ok = jnp.array([True, True, True])
  >>> ipm(flat, mal, ok, epsilon=0.5)[0]
  Array([-2. , -2.5], dtype=float32)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from afl.validate import ConfigError

KINDS = ("none", "label_flip", "backdoor", "gaussian", "sign_flip", "scaling",
         "alie", "ipm")
DATA_KINDS = ("label_flip", "backdoor")
UPDATE_KINDS = ("gaussian", "sign_flip", "scaling", "alie", "ipm")
LABEL_FLIP_MODES = ("permutation", "target")

# Mixed into the run seed so the attacker draw never shares a stream with
# the scheduler or partitioner, which are seeded from the same run seed.
_SELECT_TAG = 0xA77AC4


def _round_half_up(x: float) -> int:
  # Python's round() is banker's rounding (round(2.5) == 2); half-up is the
  # rule people expect from "round(fraction * n)".
  return int(math.floor(x + 0.5))


def num_selected(fraction: float, n: int) -> int:
  """round(fraction * n), rounded half up: how many of `n` are chosen."""
  return _round_half_up(fraction * n)


# --------------------------------------------------------------------------
# Who is malicious (host side).


def select_malicious(num_clients: int, fraction: float, seed: int,
                     ids: Sequence[int] | None = None) -> np.ndarray:
  """Chooses the malicious clients, reproducibly from the run seed.

  Args:
    num_clients: total number of clients.
    fraction: share of clients that are malicious; exactly
      `round(fraction * num_clients)` (half up) are drawn without
      replacement, from `np.random.default_rng(SeedSequence([seed, tag]))`
      with a fixed tag private to this function.
    seed: the run seed.
    ids: explicit malicious client ids; when non-empty they are used as is
      and `fraction` must be 0.

  Returns:
    [num_clients] bool numpy array, True for malicious clients.

  Raises:
    ValueError: naming `attack.fraction` or `attack.ids` for bad values.
  """
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  mask = np.zeros(num_clients, bool)
  ids = tuple(ids) if ids is not None else ()
  if ids:
    if fraction:
      raise ValueError("attack.ids: give either attack.ids or attack.fraction,"
                       f" not both (fraction={fraction})")
    for i in ids:
      if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"attack.ids: must be integers, got {i!r}")
      if not 0 <= i < num_clients:
        raise ValueError(f"attack.ids: id {i} out of range "
                         f"[0, {num_clients})")
    if len(set(int(i) for i in ids)) != len(ids):
      raise ValueError(f"attack.ids: duplicate ids in {list(ids)}")
    mask[np.asarray(ids, np.int64)] = True
    return mask
  if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
    raise ValueError(f"attack.fraction: must be in [0, 1], got {fraction!r}")
  m = num_selected(fraction, num_clients)
  rng = np.random.default_rng(np.random.SeedSequence([seed, _SELECT_TAG]))
  mask[rng.choice(num_clients, size=m, replace=False)] = True
  return mask


# --------------------------------------------------------------------------
# Data attacks (inside one client's local step).


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


DataAttackFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                        tuple[jax.Array, jax.Array]]


def make_data_attack(kind: str, num_classes: int, *,
                     mode: str = "permutation", target: int = 0,
                     fraction: float = 0.5, trigger_size: int = 3,
                     trigger_value: float | None = None) -> DataAttackFn:
  """The data component of attack `kind`, as `fn(x, y, key, is_malicious)`.

  Args:
    kind: one of `KINDS`; kinds without a data component return identity.
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
  if kind not in KINDS:
    raise ValueError(f"unknown attack kind {kind!r}; known: {list(KINDS)}")
  if kind == "label_flip":
    if mode not in LABEL_FLIP_MODES:
      raise ValueError(f"label_flip mode must be one of {LABEL_FLIP_MODES}, "
                       f"got {mode!r}")
    def flip(x, y, key, is_malicious):
      del key
      return x, label_flip(y, is_malicious, num_classes, mode, target)
    return flip
  if kind == "backdoor":
    if trigger_value is None:
      raise ValueError("backdoor needs a numeric trigger_value; resolve None "
                       "with AttackConfig.resolved_trigger_value(data_max)")
    def poison(x, y, key, is_malicious):
      return backdoor(x, y, key, is_malicious, target=target,
                      fraction=fraction, trigger_size=trigger_size,
                      trigger_value=trigger_value)
    return poison

  def identity(x, y, key, is_malicious):
    del key, is_malicious
    return x, y
  return identity


# --------------------------------------------------------------------------
# Update attacks (on a stacked [K, D] cohort or buffer).


def _rows(mask: jax.Array) -> jax.Array:
  return mask[:, None]


def _attackers(flat, malicious, valid):
  return _rows(malicious & valid)


def _honest_stats(flat: jax.Array, malicious: jax.Array, valid: jax.Array):
  """Coordinate-wise mean and population std (ddof=0) of honest rows.

  Honest rows are valid, not malicious and all-finite; a NaN/inf row must
  not leak into the statistics through 0 * NaN. With no honest rows both
  are zero.
  """
  honest = valid & ~malicious & jnp.all(jnp.isfinite(flat), axis=1)
  n = jnp.maximum(jnp.sum(honest), 1).astype(flat.dtype)
  x = jnp.where(_rows(honest), flat, 0.0)
  mu = jnp.sum(x, axis=0) / n
  dev = jnp.where(_rows(honest), flat - mu, 0.0)
  sigma = jnp.sqrt(jnp.sum(dev * dev, axis=0) / n)
  return mu, sigma


def gaussian_noise(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
                   key: jax.Array, std: float) -> jax.Array:
  """Gaussian attack: malicious rows are *replaced* by N(0, std^2) noise.

  Replacement (not addition) as in the Byzantine-robustness literature,
  where a Gaussian Byzantine worker sends pure noise regardless of its data.

  Args:
    flat: [K, D] updates.
    malicious: [K] bool.
    valid: [K] bool (False for padding).
    key: PRNG key; every row gets independent noise.
    std: noise standard deviation.

  Returns:
    [K, D] with malicious & valid rows replaced.

  References:
    Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS (the Gaussian Byzantine worker).

  >>> f = gaussian_noise(jnp.ones((2, 3)), jnp.array([True, False]),
  ...                    jnp.array([True, True]), jax.random.key(0), 1.0)
  >>> bool((f[1] == 1.0).all())
  True
  """
  noise = std * jax.random.normal(key, flat.shape, flat.dtype)
  return jnp.where(_attackers(flat, malicious, valid), noise, flat)


def sign_flip(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
              scale: float = 1.0) -> jax.Array:
  """Sign flipping: malicious rows become -scale * their own update.

  References:
    Damaskinos et al. 2018, "Asynchronous Byzantine Machine Learning (the
    case of SGD)", ICML; Li et al. 2019, "RSA: Byzantine-Robust Stochastic
    Aggregation Methods", AAAI.

  >>> sign_flip(jnp.array([[1., -2.], [3., 4.]]), jnp.array([True, False]),
  ...           jnp.array([True, True]))
  Array([[-1.,  2.],
         [ 3.,  4.]], dtype=float32)
  """
  return jnp.where(_attackers(flat, malicious, valid), -scale * flat, flat)


def scaling(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
            factor: float) -> jax.Array:
  """Boosting: malicious rows become `factor` * their own update.

  Typically paired with a data attack (e.g. backdoor) so that the poisoned
  update survives averaging with honest ones.

  References:
    Bhagoji et al. 2019, "Analyzing Federated Learning through an
    Adversarial Lens", ICML (explicit boosting); Bagdasaryan et al. 2020,
    "How To Backdoor Federated Learning", AISTATS (model replacement).

  >>> scaling(jnp.array([[1., 2.]]), jnp.array([True]), jnp.array([True]),
  ...         10.0)
  Array([[10., 20.]], dtype=float32)
  """
  return jnp.where(_attackers(flat, malicious, valid), factor * flat, flat)


def alie_z_max(n: jax.Array, m: jax.Array) -> jax.Array:
  """The "A little is enough" z_max for n workers of which m are malicious.

  s = floor(n/2 + 1) - m is the number of honest workers the attackers
  need on their side; z_max = Phi^{-1}((n - s) / n) with Phi the standard
  normal CDF. When the attackers are a majority s <= 0 and the paper's bound
  is vacuous; we then use s = 1, the largest z that stays finite. With
  n <= 1 there is nothing to hide among and z = 0.

  Args:
    n: number of participating (valid) updates; int, may be traced.
    m: number of malicious ones among them.

  Returns:
    float32 scalar z_max.

  References:
    Baruch, Baruch and Goldberg 2019, "A Little Is Enough: Circumventing
    Defenses For Distributed Learning", NeurIPS, Algorithm 3.

  >>> round(float(alie_z_max(50, 12)), 4)  # s = 26 - 12 = 14, Phi^-1(36/50)
  0.5828
  """
  n = jnp.asarray(n, jnp.float32)
  m = jnp.asarray(m, jnp.float32)
  s = jnp.maximum(jnp.floor(n / 2 + 1) - m, 1.0)
  z = jax.scipy.special.ndtri((n - s) / jnp.maximum(n, 1.0))
  return jnp.where(n > 1, z, 0.0)


def alie(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
         z: float | None = None) -> jax.Array:
  """"A little is enough": malicious rows become mu - z * sigma.

  mu and sigma are the coordinate-wise mean and population standard
  deviation (ddof=0) of the honest valid rows. This attack is omniscient: it
  reads the honest updates of the same buffer. With `z=None`, z is the
  paper's z_max (`alie_z_max`) with n = number of valid rows and m = number
  of malicious valid rows, computed inside the jitted function.

  Args:
    flat: [K, D] updates.
    malicious: [K] bool.
    valid: [K] bool.
    z: static z, or None for z_max.

  Returns:
    [K, D] with malicious & valid rows replaced.

  References:
    Baruch, Baruch and Goldberg 2019, "A Little Is Enough: Circumventing
    Defenses For Distributed Learning", NeurIPS.

  >>> alie(jnp.array([[0., 0.], [1., 2.], [3., 2.]]),
  ...      jnp.array([True, False, False]), jnp.array([True, True, True]),
  ...      z=1.0)[0]
  Array([1., 2.], dtype=float32)
  """
  mu, sigma = _honest_stats(flat, malicious, valid)
  if z is None:
    z = alie_z_max(jnp.sum(valid), jnp.sum(valid & malicious))
  evil = (mu - jnp.asarray(z, flat.dtype) * sigma).astype(flat.dtype)
  return jnp.where(_attackers(flat, malicious, valid), evil[None, :], flat)


def ipm(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
        epsilon: float) -> jax.Array:
  """Inner-product manipulation: malicious rows become -epsilon * honest mean.

  Omniscient: reads the honest valid rows of the same buffer. A small
  epsilon (e.g. 0.1-0.5) keeps the attackers close to the honest cloud
  while making the aggregate's inner product with the true gradient
  negative for median-like rules; a large one (e.g. 100) defeats the mean.

  References:
    Xie, Koyejo and Gupta 2020, "Fall of Empires: Breaking Byzantine-tolerant
    SGD by Inner Product Manipulation", UAI.

  >>> ipm(jnp.array([[9., 9.], [2., 4.]]), jnp.array([True, False]),
  ...     jnp.array([True, True]), 1.0)[0]
  Array([-2., -4.], dtype=float32)
  """
  mu, _ = _honest_stats(flat, malicious, valid)
  evil = (-epsilon * mu).astype(flat.dtype)
  return jnp.where(_attackers(flat, malicious, valid), evil[None, :], flat)


UpdateAttackFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                          jax.Array]


def make_update_attack(kind: str, *, std: float = 1.0, scale: float = 1.0,
                       factor: float = 10.0, z: float | None = None,
                       epsilon: float = 0.5) -> UpdateAttackFn:
  """The update component of attack `kind`: `fn(flat, malicious, valid, key)`.

  Args:
    kind: one of `KINDS`; data-only kinds and "none" return identity.
    std: gaussian noise std.
    scale: sign_flip scale.
    factor: scaling factor.
    z: alie z (None = z_max).
    epsilon: ipm epsilon.

  Returns:
    fn(flat [K, D], malicious [K], valid [K], key) -> [K, D], pure and
    jittable.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown attack kind {kind!r}; known: {list(KINDS)}")
  if kind == "gaussian":
    return lambda f, mal, ok, key: gaussian_noise(f, mal, ok, key, std)
  if kind == "sign_flip":
    return lambda f, mal, ok, key: sign_flip(f, mal, ok, scale)
  if kind == "scaling":
    return lambda f, mal, ok, key: scaling(f, mal, ok, factor)
  if kind == "alie":
    return lambda f, mal, ok, key: alie(f, mal, ok, z)
  if kind == "ipm":
    return lambda f, mal, ok, key: ipm(f, mal, ok, epsilon)
  return lambda f, mal, ok, key: f


# --------------------------------------------------------------------------
# Config.




def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig:
  """Which attack, by whom, with which hyperparameters.

  Attributes:
    kind: one of `KINDS`.
    fraction: share of clients that are malicious (`select_malicious`).
    ids: explicit malicious client ids (exclusive with `fraction`).
    label_flip_mode: "permutation" (y -> C-1-y) or "target".
    target: target class of label_flip "target" mode and of backdoor.
    backdoor_fraction: share of each malicious batch that is poisoned.
    trigger_size: side of the backdoor's square trigger.
    trigger_value: trigger pixel value; None = the maximum pixel value of
      the training data (see `resolved_trigger_value`), i.e. a saturated
      white patch whatever the data's scaling.
    noise_std: gaussian attack std.
    scale: sign_flip scale.
    factor: scaling (boosting) factor.
    alie_z: ALIE z; None = z_max of the paper.
    ipm_epsilon: IPM epsilon.
  """
  kind: str = "none"
  fraction: float = 0.0
  ids: tuple = ()
  label_flip_mode: str = "permutation"
  target: int = 0
  backdoor_fraction: float = 0.5
  trigger_size: int = 3
  trigger_value: float | None = None
  noise_std: float = 1.0
  scale: float = 1.0
  factor: float = 10.0
  alie_z: float | None = None
  ipm_epsilon: float = 0.5

  def validate(self, prefix: str = "attack"):
    """Raises ValueError("config.<prefix>.<key>: ...") on a bad value."""
    def fail(key, msg):
      raise ConfigError(f"config.{prefix}.{key}: {msg}")
    if self.kind not in KINDS:
      fail("kind", f"must be one of {list(KINDS)}, got {self.kind!r}")
    if not _is_number(self.fraction) or not 0 <= self.fraction <= 1:
      fail("fraction", f"must be in [0, 1], got {self.fraction!r}")
    ids = tuple(self.ids)
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer))
           or i < 0 for i in ids):
      fail("ids", f"must be non-negative integers, got {list(ids)}")
    if len(set(ids)) != len(ids):
      fail("ids", f"duplicate ids in {list(ids)}")
    if ids and self.fraction:
      fail("ids", "give either attack.ids or attack.fraction, not both")
    if self.label_flip_mode not in LABEL_FLIP_MODES:
      fail("label_flip_mode", f"must be one of {list(LABEL_FLIP_MODES)}, "
           f"got {self.label_flip_mode!r}")
    if (isinstance(self.target, bool) or not isinstance(self.target, int)
        or self.target < 0):
      fail("target", f"must be a non-negative integer, got {self.target!r}")
    if not _is_number(self.backdoor_fraction) or not (
        0 < self.backdoor_fraction <= 1):
      fail("backdoor_fraction",
           f"must be in (0, 1], got {self.backdoor_fraction!r}")
    if (isinstance(self.trigger_size, bool)
        or not isinstance(self.trigger_size, int) or self.trigger_size < 1):
      fail("trigger_size", f"must be an integer >= 1, got "
           f"{self.trigger_size!r}")
    if self.trigger_value is not None and not (
        _is_number(self.trigger_value) and math.isfinite(self.trigger_value)):
      fail("trigger_value", f"must be a finite number or None, got "
           f"{self.trigger_value!r}")
    if not _is_number(self.noise_std) or not 0 <= self.noise_std < math.inf:
      fail("noise_std", f"must be finite and >= 0, got {self.noise_std!r}")
    if not _is_number(self.scale) or not 0 < self.scale < math.inf:
      fail("scale", f"must be finite and > 0, got {self.scale!r}")
    if not _is_number(self.factor) or not math.isfinite(self.factor):
      fail("factor", f"must be a finite number, got {self.factor!r}")
    if self.alie_z is not None and not (
        _is_number(self.alie_z) and math.isfinite(self.alie_z)):
      fail("alie_z", f"must be a finite number or None, got {self.alie_z!r}")
    if not _is_number(self.ipm_epsilon) or not (
        0 < self.ipm_epsilon < math.inf):
      fail("ipm_epsilon", f"must be finite and > 0, got "
           f"{self.ipm_epsilon!r}")

  def check_against(self, num_clients: int, num_classes: int,
                    prefix: str = "attack"):
    """Checks values that depend on the data: ids and target in range."""
    if self.kind == "none":
      return
    for i in self.ids:
      if i >= num_clients:
        raise ConfigError(f"config.{prefix}.ids: id {i} out of range "
                            f"[0, {num_clients}) (num_clients={num_clients})")
    uses_target = self.kind == "backdoor" or (
        self.kind == "label_flip" and self.label_flip_mode == "target")
    if uses_target and self.target >= num_classes:
      raise ConfigError(f"config.{prefix}.target: must be < num_classes="
                          f"{num_classes}, got {self.target}")

  def resolved_trigger_value(self, data_max: float) -> float:
    """`trigger_value`, or `data_max` (the data's max pixel) when None."""
    return float(data_max if self.trigger_value is None
                 else self.trigger_value)

  @property
  def has_data_attack(self) -> bool:
    return self.kind in DATA_KINDS

  @property
  def has_update_attack(self) -> bool:
    return self.kind in UPDATE_KINDS

  def malicious_mask(self, num_clients: int, seed: int) -> np.ndarray:
    """`select_malicious` with this config's fraction/ids ([N] bool)."""
    if self.kind == "none":
      return np.zeros(num_clients, bool)
    return select_malicious(num_clients, self.fraction, seed, self.ids)

  def data_attack(self, num_classes: int, data_max: float) -> DataAttackFn:
    """`make_data_attack` for this config (identity without a data part)."""
    return make_data_attack(
        self.kind, num_classes, mode=self.label_flip_mode, target=self.target,
        fraction=self.backdoor_fraction, trigger_size=self.trigger_size,
        trigger_value=self.resolved_trigger_value(data_max))

  def update_attack(self) -> UpdateAttackFn:
    """`make_update_attack` for this config (identity without one)."""
    return make_update_attack(
        self.kind, std=self.noise_std, scale=self.scale, factor=self.factor,
        z=self.alie_z, epsilon=self.ipm_epsilon)
