"""Data and model-update attacks by Byzantine clients, vectorized by masks.

Which clients are malicious is fixed once per run (`select_malicious`, host
side, `selection.py`). Everything else is a pure, jittable function in
which per-client behaviour is chosen by boolean masks, never by Python
branches per client, so a vmapped cohort with a mix of honest and
malicious clients is one XLA program, in the same jitted path as robust
aggregation, trust, DP and compression. Hyperparameters are static Python
values.

Every kind (`kinds.REGISTRY`: none, label_flip, backdoor, gaussian,
sign_flip, scaling, alie, ipm, mimic, minmax, minsum) declares its config
parameters as a dataclass; `AttackConfig` (`config.py`) assembles the
`attack` section from them. Two places in the pipeline, marked by the
kind's properties:

- **Data attacks** (`data=True`, `data_attacks.py`) poison one client's
  minibatch inside its local step: `make_data_attack(kind, ...)` returns
  `fn(x, y, key, is_malicious) -> (x, y)` with `is_malicious` a traced bool
  scalar (vmap it over a cohort).
- **Update attacks** (`update=True`, `update_attacks.py`) rewrite the
  stacked, flattened updates `flat [K, D]` of a cohort or server buffer:
  `make_update_attack(kind, ...)` returns `fn(flat, malicious [K], valid
  [K], key) -> flat [K, D]`; only rows that are malicious and valid change.

`alie`, `ipm` and `mimic`, `minmax`, `minsum` (`omniscient.py`) are
*omniscient*: they read the honest updates of the same buffer (the
strongest, standard threat model of these papers' evaluations).

Example:

  >>> import jax, jax.numpy as jnp
  >>> flat = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
  >>> mal = jnp.array([True, False, False])
  >>> ok = jnp.array([True, True, True])
  >>> ipm(flat, mal, ok, epsilon=0.5)[0]
  Array([-2. , -2.5], dtype=float32)
"""
from afl.attacks.config import AttackConfig
from afl.attacks.data_attacks import (LABEL_FLIP_MODES, attack_success_rate,
                                      backdoor, label_flip, stamp_trigger)
from afl.attacks.kinds import (REGISTRY, DataAttackFn, UpdateAttackFn,
                               make_data_attack, make_update_attack)
from afl.attacks.omniscient import (PERTURBATIONS, halving_search, mimic,
                                    min_max, min_sum, optimized_gamma,
                                    perturbation_direction,
                                    top_direction_scores)
from afl.attacks.selection import num_selected, select_malicious
from afl.attacks.update_attacks import (alie, alie_z_max, gaussian_noise, ipm,
                                        scaling, sign_flip)
