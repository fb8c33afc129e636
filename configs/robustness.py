"""The robustness table: pipelines x attacks x attacker fractions x seeds
on the asynchronous demo (configs/fmnist_hybrid.py), for
`benchmarks/robustness.py` (which runs them through `afl.experiments`).

Experiment names are `<pipeline>__<attack>__<percent>__s<seed>`; the
no-attack run of a pipeline is `<pipeline>__none__0__s<seed>`. The set
"tiny" is the same grid on configs/tiny.py for tests.

The set "backdoor" measures norm bounding against the backdoor (Sun et al.
2019, "Can You Really Backdoor Federated Learning?"): centered clipping at
tau = 1.0 (the default before its tau became 0.15) with trust and without
duplicate merging, with every
update first clipped to `aggregator.norm_clip` (0: none; 0.5 and 0.25:
about the median and half the median honest update norm on the demo,
0.46), under 5%, 10% and 20% backdoor clients and without attack.
Names: `bound<norm_clip>__<attack>__<percent>__s0`.
"""
from configs import fmnist_hybrid
from configs import tiny

ATTACKS = ("label_flip", "sign_flip", "gaussian", "scaling", "alie", "ipm",
           "mimic", "minmax", "minsum", "backdoor")
FRACTIONS = (0.2, 0.3)
SEEDS = (0, 1)
# The attacker fraction the robust rules assume (f / K): the larger of the
# table's fractions, so that a rule is never told less than the truth.
ASSUMED_FRACTION = 0.3

_OFF = {"trust": {"enabled": False}}


def _agg(name, **kw):
  return {"aggregator": {"name": name, "stages": (), **kw}, **_OFF}


_HYBRID = {"aggregator": {"name": "hybrid", "stages": (),
                          "clip_multiplier": 2.0, "byzantine_fraction": 0.3,
                          "min_trusted": 3}}

PIPELINES = {
    "mean": _agg("mean"),
    "median": _agg("median"),
    "trimmed_mean": _agg("trimmed_mean", byzantine_fraction=ASSUMED_FRACTION),
    "krum": _agg("krum", byzantine_fraction=ASSUMED_FRACTION),
    "geomed": _agg("geomed"),
    # Centered clipping at the radius the demo used before (tau = 1.0, about
    # twice the median honest update norm, so it clips almost nothing);
    # the default below runs tau = 0.15.
    "centered_clip": _agg("centered_clip", tau=1.0),
    "bucketing_cc": _agg("centered_clip", tau=1.0, stages=("bucketing",)),
    "momentum_bucketing_cc": _agg(
        "centered_clip", tau=1.0, stages=("client_momentum", "bucketing")),
    # The demo's earlier pipeline: trust-weighted trimmed mean assuming 30%
    # attackers, clipped at 2x the median norm, median fallback; trust on.
    "hybrid_trust": _HYBRID,
    "hybrid_root": {**_HYBRID, "trust": {"reference": "root"}},
    # Centered clipping + trust at tau = 1.0: the default until 2026-12-03.
    "cc_trust_tau1": {"aggregator": {"tau": 1.0, "stages": ()}},
    # Centered clipping at tau = 0.15 + trust, without duplicate merging:
    # the default on 2026-12-03.
    "cc_trust": {"aggregator": {"stages": ()}},
    # The demo's own pipeline: duplicate merging, then centered clipping at
    # tau = 0.15, + trust.
    "default": {},
    # cc_trust_tau1 with FLTrust's root reference (assumes server-held data).
    "cc_trust_tau1_root": {"aggregator": {"tau": 1.0, "stages": ()},
                           "trust": {"reference": "root"}},
}


def name(pipeline: str, attack: str, fraction: float, seed: int) -> str:
  return f"{pipeline}__{attack}__{round(100 * fraction)}__s{seed}"


def _grid(base, extra):
  exps = []
  for seed in SEEDS:
    for pipe, overrides in PIPELINES.items():
      cell = {**overrides, **extra, "seed": seed}
      exps.append((name(pipe, "none", 0.0, seed), base, cell))
      for fraction in FRACTIONS:
        for attack in ATTACKS:
          exps.append((name(pipe, attack, fraction, seed), base, {
              **cell, "attack": {"kind": attack, "fraction": fraction}}))
  return exps


BACKDOOR_FRACTIONS = (0.05, 0.1, 0.2)
NORM_BOUNDS = (0.0, 0.5, 0.25)


def _backdoor_grid():
  exps = []
  for bound in NORM_BOUNDS:
    clip = {"aggregator": {"norm_clip": bound, "tau": 1.0, "stages": ()},
            "seed": 0}
    exps.append((f"bound{bound}__none__0__s0", fmnist_hybrid, clip))
    for fraction in BACKDOOR_FRACTIONS:
      exps.append((f"bound{bound}__backdoor__{round(100 * fraction)}__s0",
                   fmnist_hybrid, {**clip, "attack": {
                       "kind": "backdoor", "fraction": fraction}}))
  return exps


def get_experiments(arg=None):
  """`arg`: None or "demo" (Fashion-MNIST, 70 versions), "tiny", or
  "backdoor" (norm bounds against the backdoor, module doc)."""
  if arg in (None, "demo"):
    return _grid(fmnist_hybrid, {})
  if arg == "tiny":
    return _grid(tiny, {"stop": {"max_versions": 6},
                        "eval": {"every_versions": 3}, "num_clients": 20})
  if arg == "backdoor":
    return _backdoor_grid()
  raise ValueError(f"unknown experiment set {arg!r}; known: demo, tiny, "
                   "backdoor")
