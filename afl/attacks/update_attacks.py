"""Update attacks: rewrite the malicious rows of a stacked [K, D] buffer.

Pure and jittable; only rows that are malicious and valid change. `alie`
and `ipm` are omniscient: they read the honest rows of the same buffer
(`honest_rows`, `honest_stats`; more omniscient attacks in `omniscient.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _rows(mask: jax.Array) -> jax.Array:
  return mask[:, None]


def _attackers(flat, malicious, valid):
  return _rows(malicious & valid)


def send(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
         evil: jax.Array) -> jax.Array:
  """Every malicious & valid row replaced by the one row `evil` [D]."""
  return jnp.where(_attackers(flat, malicious, valid),
                   evil.astype(flat.dtype)[None, :], flat)


def honest_rows(flat: jax.Array, malicious: jax.Array,
                valid: jax.Array) -> jax.Array:
  """[K] bool: valid, not malicious and all-finite (what attackers read)."""
  return valid & ~malicious & jnp.all(jnp.isfinite(flat), axis=1)


def honest_stats(flat: jax.Array, malicious: jax.Array, valid: jax.Array):
  """Coordinate-wise mean and population std (ddof=0) of honest rows.

  Honest rows are `honest_rows`; a NaN/inf row must not leak into the
  statistics through 0 * NaN. Deviations are squared after dividing each
  coordinate by its largest |deviation|, so tiny updates do not underflow.
  With no honest rows both are zero.
  """
  honest = honest_rows(flat, malicious, valid)
  n = jnp.maximum(jnp.sum(honest), 1).astype(flat.dtype)
  x = jnp.where(_rows(honest), flat, 0.0)
  mu = jnp.sum(x, axis=0) / n
  dev = jnp.where(_rows(honest), flat - mu, 0.0)
  scale = jnp.max(jnp.abs(dev), axis=0)
  scale = jnp.where(scale > 0, scale, 1.0)
  sigma = scale * jnp.sqrt(jnp.sum(jnp.square(dev / scale), axis=0) / n)
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
  mu, sigma = honest_stats(flat, malicious, valid)
  if z is None:
    z = alie_z_max(jnp.sum(valid), jnp.sum(valid & malicious))
  return send(flat, malicious, valid, mu - jnp.asarray(z, flat.dtype) * sigma)


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
  mu, _ = honest_stats(flat, malicious, valid)
  return send(flat, malicious, valid, -epsilon * mu)
