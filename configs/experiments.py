"""Named experiments for `afl.experiments`: overrides of base configs.

  python -m afl.experiments --experiments configs/experiments.py \
      --workdir runs/experiments
  python -m afl.experiments --experiments configs/experiments.py --set tiny \
      --only tiny_fedbuff tiny_sync --workdir /tmp/exp

Each experiment is `(name, base config module, overrides)`; the overrides are
nested dicts applied to `base.get_config()` by
`afl.experiment_spec.apply_overrides`, which refuses keys the base config
does not have. They are applied only to the experiments selected for a run,
so an experiment naming a key that does not exist stops only itself.

The default set compares, on the Fashion-MNIST demo (configs/fmnist_hybrid.py):
the three server modes; every attack at 30% malicious clients against every
aggregator alone and against the hybrid pipeline with trust scores (the
attack/pipeline grid itself is `configs/robustness.py`);
client and server DP; top-k compression with and without error feedback;
and the headline asynchronous hybrid + trust + client DP setup.
"""
from configs import fmnist_hybrid
from configs import tiny

ATTACKS = ("sign_flip", "alie", "ipm", "label_flip", "backdoor", "gaussian",
           "scaling", "mimic", "minmax", "minsum")
AGGREGATORS = ("mean", "median", "trimmed_mean", "hybrid")
ATTACK_FRACTION = 0.3

# The demo config runs duplicate merging and centered clipping with trust
# scores; every row but those naming an aggregator and trust turns all of
# it off, so that each row changes one thing against `fedbuff` (plain
# FedBuff with a mean).
_PLAIN = {"aggregator": {"name": "mean", "stages": ()},
          "trust": {"enabled": False}}
_HYBRID_TRUST = {"aggregator": {"name": "hybrid", "stages": ()},
                 "trust": {"enabled": True}}
# As configs/fmnist_hybrid_dp.py: less momentum, which would otherwise
# accumulate the DP noise over the local steps.
_CLIENT_DP = {"client": {"optimizer_kwargs": {"momentum": 0.5}},
              "dp": {"mode": "client", "clip_norm": 1.0,
                     "noise_multiplier": 1.0}}


def _merge(*dicts):
  """Section-wise union of override dicts; later ones win."""
  out = {}
  for d in dicts:
    for key, value in d.items():
      if isinstance(value, dict) and isinstance(out.get(key), dict):
        value = {**out[key], **value}
      out[key] = value
  return out


def _default_set():
  base = fmnist_hybrid
  exps = [
      ("sync_fedavg", base, _merge(_PLAIN, {"server": {"mode": "sync"}})),
      ("fedasync", base, _merge(_PLAIN, {"server": {"mode": "fedasync"}})),
      ("fedbuff", base, _merge(_PLAIN, {"server": {"mode": "fedbuff"}})),
  ]
  for kind in ATTACKS:
    attack = {"attack": {"kind": kind, "fraction": ATTACK_FRACTION}}
    for agg in AGGREGATORS:
      exps.append((f"attack_{kind}__{agg}", base, _merge(
          _PLAIN, attack, {"aggregator": {"name": agg}})))
    # The hybrid aggregator weighted by trust scores.
    exps.append((f"attack_{kind}__hybrid_trust", base, _merge(
        attack, _HYBRID_TRUST)))
  exps += [
      ("dp_client", base, _merge(_PLAIN, _CLIENT_DP)),
      # Server DP calibrates noise to a sum of clipped updates: plain mean,
      # unweighted (afl.config refuses anything else).
      ("dp_server", base, _merge(_PLAIN, {
          "dp": {"mode": "server", "clip_norm": 1.0, "noise_multiplier": 1.0},
          "server": {"weight_by_examples": False}})),
      ("topk_0.01", base, _merge(_PLAIN, {"compression": {
          "kind": "topk", "ratio": 0.01, "error_feedback": True}})),
      ("topk_0.01_noef", base, _merge(_PLAIN, {"compression": {
          "kind": "topk", "ratio": 0.01, "error_feedback": False}})),
      ("async_hybrid_trust_dp", base, _merge(
          _CLIENT_DP, _HYBRID_TRUST, {"server": {"mode": "fedbuff"}})),
  ]
  return exps


def _tiny_set():
  # Seconds each on 2 CPU cores; tests select some of them with `only`.
  short = {"stop": {"max_versions": 6}, "eval": {"every_versions": 2}}
  return [
      ("tiny_fedbuff", tiny, {**short}),
      ("tiny_sync", tiny, {**short, "server": {"mode": "sync"}}),
      ("tiny_fedasync", tiny, {**short, "server": {"mode": "fedasync"}}),
      ("tiny_sign_flip__median", tiny, {
          **short, "attack": {"kind": "sign_flip", "fraction": 0.25},
          "aggregator": {"name": "median"}}),
      ("tiny_topk", tiny, {**short, "compression": {
          "kind": "topk", "ratio": 0.1}}),
  ]


_SETS = {"default": _default_set, "tiny": _tiny_set}


def get_experiments(arg=None):
  """Returns `[(name, base config module, overrides), ...]`.

  Args:
    arg: the set: None or "default" (Fashion-MNIST), or "tiny" (tests).
  """
  key = arg or "default"
  if key not in _SETS:
    raise ValueError(f"unknown experiment set {arg!r}; known sets: "
                     f"{', '.join(_SETS)}")
  return _SETS[key]()
