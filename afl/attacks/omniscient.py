"""Omniscient update attacks that read the honest geometry of the buffer.

Like `alie` and `ipm` (`update_attacks.py`), each reads the honest rows of
the same [K, D] buffer (`update_attacks.honest_rows`: valid, not malicious,
all-finite) and every malicious & valid row sends the same vector; other
rows never change. `mimic` copies one honest row; `min_max` and `min_sum`
push the honest mean as far along a perturbation as the honest spread
allows. Pairwise distances come from the [K, K] Gram matrix of the
centered honest rows, never from a [K, K, D] tensor: memory O(K^2 + K D).
With fewer than 2 honest rows there is no spread to hide in and the
attackers send the honest mean (zero with no honest row).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from afl.attacks import update_attacks

PERTURBATIONS = ("unit_vec", "std", "sign")
POWER_ITERS = 32  # mimic's power iterations on the [K, K] Gram matrix
GAMMA_STEPS = 24  # halvings of the min-max / min-sum search

_HIGHEST = jax.lax.Precision.HIGHEST


def _centered(flat, malicious, valid):
  """(honest [K], honest mean [D], population std [D], centered honest
  rows [K, D] with zeros elsewhere)."""
  honest = update_attacks.honest_rows(flat, malicious, valid)
  mu, sigma = update_attacks.honest_stats(flat, malicious, valid)
  return honest, mu, sigma, jnp.where(honest[:, None], flat - mu, 0.0)


def _gram(x: jax.Array) -> jax.Array:
  return jnp.dot(x, x.T, precision=_HIGHEST)


def top_direction_scores(centered: jax.Array, honest: jax.Array,
                         iters: int = POWER_ITERS) -> jax.Array:
  """|projection| of each row on the top principal direction, up to a
  common positive factor (0 on rows that are not `honest`).

  The projections of the rows X on the top right singular vector are
  s_1 u with u the top eigenvector of the Gram matrix X X^T, so `iters`
  power iterations run on the [K, K] Gram matrix, from a fixed
  pseudo-random start (deterministic; the all-ones vector would not do:
  centered rows sum to zero, so it lies in the Gram matrix's null space).
  X is first divided by its largest entry, which changes no direction and
  keeps the Gram matrix finite for any finite input. A competing direction
  shrinks by (lambda_2 / lambda_1)^iters, the ratio of the two largest
  eigenvalues: an ambiguous top direction may pick either row.

  Args:
    centered: [K, D] centered honest rows, zero elsewhere.
    honest: [K] bool.
    iters: power iterations.

  Returns:
    [K] non-negative scores.

  References:
    Golub and Van Loan 2013, "Matrix Computations", 4th ed., Section 8.2.1
    (the power method).
  """
  scale = jnp.max(jnp.abs(centered))
  gram = _gram(centered / jnp.where(scale > 0, scale, 1.0))
  start = jax.random.normal(jax.random.key(0), honest.shape, centered.dtype)
  tiny = jnp.finfo(centered.dtype).tiny

  def step(_, u):
    w = jnp.dot(gram, u, precision=_HIGHEST)
    return w / jnp.maximum(jnp.linalg.norm(w), tiny)
  u = jax.lax.fori_loop(0, iters, step, jnp.where(honest, start, 0.0))
  return jnp.where(honest, jnp.abs(u), 0.0)


def mimic(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
          iters: int = POWER_ITERS) -> jax.Array:
  """Mimic: every attacker sends a copy of one honest row, the most
  heterogeneous one.

  The row copied is the honest row with the largest |projection| of its
  centered value x_i - mu on the top principal direction of the centered
  honest rows (`top_direction_scores`; ties go to the lowest row index).
  Copying it over-represents the direction in which honest clients
  disagree most, which slows or biases robust aggregators on non-IID data
  while every attacker looks exactly like an honest client. The paper
  estimates the direction online and then fixes one worker i*; here rows
  of a buffer are not fixed workers, so the row is chosen afresh in every
  buffer, from that buffer alone.

  Args:
    flat: [K, D] updates.
    malicious: [K] bool.
    valid: [K] bool.
    iters: power iterations.

  Returns:
    [K, D] with malicious & valid rows replaced.

  References:
    Karimireddy, He and Jaggi 2022, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing", ICLR (the mimic attack).

  >>> mimic(jnp.array([[0., 0.], [1., 0.], [-1., 0.], [5., 0.]]),
  ...       jnp.array([True, False, False, False]),
  ...       jnp.array([True, True, True, True]))[0]
  Array([5., 0.], dtype=float32)
  """
  honest, mu, _, centered = _centered(flat, malicious, valid)
  scores = top_direction_scores(centered, honest, iters)
  pick = flat[jnp.argmax(jnp.where(honest, scores, -1.0))]
  evil = jnp.where(jnp.sum(honest) >= 2, pick, mu)
  return update_attacks.send(flat, malicious, valid, evil)


def perturbation_direction(mu: jax.Array, sigma: jax.Array,
                           perturbation: str) -> jax.Array:
  """The paper's perturbations p (the malicious update is mu + gamma p).

  "unit_vec": -mu / |mu| (0 when mu = 0); "std": -sigma, the coordinate
  standard deviation; "sign": -sign(mu).

  References:
    Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine: Optimizing
    Model Poisoning Attacks and Defenses for Federated Learning", NDSS
    (the perturbation vectors).

  >>> perturbation_direction(jnp.array([3., -4.]), jnp.ones(2), "unit_vec")
  Array([-0.6,  0.8], dtype=float32)
  """
  if perturbation == "unit_vec":
    norm = jnp.linalg.norm(mu)
    return -mu / jnp.where(norm > 0, norm, 1.0)
  if perturbation == "std":
    return -sigma
  if perturbation == "sign":
    return -jnp.sign(mu)
  raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got "
                   f"{perturbation!r}")


def halving_search(feasible, gamma_init: float,
                   steps: int = GAMMA_STEPS) -> jax.Array:
  """The paper's search for the largest gamma with `feasible(gamma)`.

  Starts at gamma_init with step gamma_init; each of the `steps` rounds
  moves gamma up by step/2 when feasible (remembering it) and down by
  step/2 otherwise, then halves step. This is bisection on [0,
  2 gamma_init]: when the feasible set is an interval [0, gamma*], the
  result lies in [gamma* - gamma_init 2^(1-steps), gamma*], capped below
  2 gamma_init; 0 when no gamma tried is feasible.

  Args:
    feasible: traced scalar gamma -> bool scalar.
    gamma_init: the first gamma tried (static, > 0).
    steps: number of gammas tried.

  Returns:
    float32 scalar, the last feasible gamma tried.

  References:
    Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine: Optimizing
    Model Poisoning Attacks and Defenses for Federated Learning", NDSS
    (the search for gamma).

  >>> float(halving_search(lambda g: g <= 3.0, 10.0, steps=30)) <= 3.0
  True
  """
  def body(_, carry):
    gamma, step, best = carry
    ok = feasible(gamma)
    return (jnp.where(ok, gamma + step / 2, gamma - step / 2), step / 2,
            jnp.where(ok, gamma, best))
  init = jnp.asarray(gamma_init, jnp.float32)
  _, _, best = jax.lax.fori_loop(0, steps, body,
                                 (init, init, jnp.zeros((), jnp.float32)))
  return best


def _geometry(centered, honest, p):
  """Squared distances of mu + gamma p to honest row i, as the quadratic
  gamma^2 |p|^2 - 2 gamma <p, x_i> + |x_i|^2 in the centered x_i, and the
  [K, K] squared distances between rows (masked to honest pairs).

  Both are computed after dividing x and p by the largest |x| entry, which
  leaves every comparison of the search as it is and keeps squares of
  very large or very small updates from overflowing or underflowing.
  """
  scale = jnp.max(jnp.abs(centered))
  scale = jnp.where(scale > 0, scale, 1.0)
  x, p = centered / scale, p / scale
  gram = _gram(x)
  sq = jnp.diagonal(gram)
  pair = jnp.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)
  pair = jnp.where(honest[:, None] & honest[None, :], pair, 0.0)
  dots = jnp.dot(x, p, precision=_HIGHEST)
  pp = jnp.dot(p, p, precision=_HIGHEST)
  return (lambda g: g * g * pp - 2 * g * dots + sq), pair


def _search(flat, malicious, valid, objective, perturbation, gamma_init,
            steps):
  """(mu, p, gamma) of `optimized_gamma`."""
  honest, mu, sigma, centered = _centered(flat, malicious, valid)
  p = perturbation_direction(mu, sigma, perturbation)
  dist, pair = _geometry(centered, honest, p)
  if objective == "minmax":
    bound = jnp.max(pair)
    reduce = lambda q: jnp.max(jnp.where(honest, q, 0.0))
  elif objective == "minsum":
    bound = jnp.max(jnp.sum(pair, axis=1))
    reduce = lambda q: jnp.sum(jnp.where(honest, q, 0.0))
  else:
    raise ValueError(f"objective must be minmax or minsum, got {objective!r}")
  gamma = halving_search(lambda g: reduce(dist(g)) <= bound, gamma_init,
                         steps)
  return mu, p, jnp.where(jnp.sum(honest) >= 2, gamma, 0.0)


def optimized_gamma(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
                    objective: str, perturbation: str = "unit_vec",
                    gamma_init: float = 10.0,
                    steps: int = GAMMA_STEPS) -> jax.Array:
  """The AGR-agnostic attack's gamma (`halving_search`) for `objective`.

  With b_i the honest rows, mu their mean and m = mu + gamma p:
  "minmax": max_i |m - b_i| <= max_{i,j} |b_i - b_j|;
  "minsum": sum_i |m - b_i|^2 <= max_i sum_j |b_i - b_j|^2.
  Both sides are convex in gamma and hold at gamma = 0 (the mean is a
  convex combination, and it minimizes the sum of squares), so the
  feasible gammas are an interval [0, gamma*] and the search is a
  bisection (`_geometry` scales the rows; a comparison that still
  overflows float32 is infeasible).

  Args:
    flat: [K, D] updates.
    malicious: [K] bool.
    valid: [K] bool.
    objective: "minmax" or "minsum".
    perturbation: one of `PERTURBATIONS` (`perturbation_direction`).
    gamma_init: first gamma of the search; gamma stays below 2 gamma_init.
    steps: gammas tried.

  Returns:
    float32 scalar gamma (0 with fewer than 2 honest rows).

  References:
    Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine: Optimizing
    Model Poisoning Attacks and Defenses for Federated Learning", NDSS
    (the AGR-agnostic min-max and min-sum attacks).
  """
  return _search(flat, malicious, valid, objective, perturbation, gamma_init,
                 steps)[2]


def _agr_agnostic(flat, malicious, valid, objective, perturbation,
                  gamma_init):
  mu, p, gamma = _search(flat, malicious, valid, objective, perturbation,
                         gamma_init, GAMMA_STEPS)
  evil = mu + gamma * p
  evil = jnp.where(jnp.all(jnp.isfinite(evil)), evil, mu)
  return update_attacks.send(flat, malicious, valid, evil)


def min_max(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
            perturbation: str = "unit_vec",
            gamma_init: float = 10.0) -> jax.Array:
  """Min-max: attackers send mu + gamma p, no farther from any honest row
  than the two farthest honest rows are from each other.

  gamma is `optimized_gamma(..., "minmax")`; p is `perturbation_direction`.
  Should mu + gamma p overflow float32 the attackers send mu.

  References:
    Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine: Optimizing
    Model Poisoning Attacks and Defenses for Federated Learning", NDSS.

  >>> out = min_max(jnp.array([[0., 0.], [1., 1.], [3., 1.]]),
  ...               jnp.array([True, False, False]), jnp.ones(3, bool))
  >>> [round(float(x), 3) for x in out[0]]  # mu (2, 1), gamma 1.055
  [1.056, 0.528]
  """
  return _agr_agnostic(flat, malicious, valid, "minmax", perturbation,
                       gamma_init)


def min_sum(flat: jax.Array, malicious: jax.Array, valid: jax.Array,
            perturbation: str = "unit_vec",
            gamma_init: float = 10.0) -> jax.Array:
  """Min-sum: attackers send mu + gamma p whose sum of squared distances
  to the honest rows is at most the largest such sum of an honest row.

  gamma is `optimized_gamma(..., "minsum")`; p is `perturbation_direction`.
  Should mu + gamma p overflow float32 the attackers send mu.

  References:
    Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine: Optimizing
    Model Poisoning Attacks and Defenses for Federated Learning", NDSS.
  """
  return _agr_agnostic(flat, malicious, valid, "minsum", perturbation,
                       gamma_init)
