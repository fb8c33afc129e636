"""FLTrust's root reference for trust (`trust.reference=root`).

Cao et al. (NDSS 2021) let the server score each client update against an
update of its own, computed on a small clean "root" dataset. Here the root
data are `trust.root_examples` training examples drawn uniformly at random
(from the seed) and held out of every client's shard; before each
aggregation the server trains on them from the model the aggregation is
applied to, with the clients' optimizer, learning rate, batch size and
`client.local_steps` (batches drawn with replacement, no DP, no attack),
and trust compares every row's signs and norm with that update
(`afl.aggregators.trust`).

This is an assumption about the deployment, and afl says so in the log: the
server must hold clean examples from (roughly) the clients' distribution.
With non-IID clients the root update reflects the global distribution, not
any one client's.
"""
from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from afl import backend as backend_lib
from afl import client as client_lib
from afl import optim
from afl import sampling as sampling_lib

_STREAM = 3  # SeedSequence child for the hold-out (0, 1: partition, schedule)


def hold_out(num_train: int, count: int, seed: int):
  """(root example ids [count], the other ids [num_train - count]), both
  sorted int64; the draw depends on the seed only."""
  rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(
      _STREAM + 1)[_STREAM])
  root = np.sort(rng.choice(num_train, size=count, replace=False))
  return root, np.setdiff1d(np.arange(num_train), root)


class RootReference:
  """(params, aggregation index) -> the flat root update [D] (module doc)."""

  def __init__(self, cfg, apply_fn, data: client_lib.ClientData,
               root_ids: np.ndarray, kind: str, key: jax.Array):
    """`data`: the clients' `ClientData` (its examples are shared); `kind`:
    the client backend ("vmap", "loop" or "debug"); `key`: the root
    stream's PRNG key (one task per aggregation is folded in)."""
    c = cfg.client
    sampler = sampling_lib.Sampler.make("with_replacement", c.batch_size,
                                        [len(root_ids)])
    fns = client_lib.make_client_fns(
        client_lib.cross_entropy_loss(apply_fn),
        optim.make_optimizer(c.optimizer, c.lr, dict(c.optimizer_kwargs)),
        c.batch_size, c.local_steps, sampler=sampler)
    self._backend = backend_lib.Backend(fns, kind)
    self._data = data.replace(
        indices=jnp.asarray(root_ids, jnp.int32),
        offsets=jnp.asarray([0, len(root_ids)], jnp.int32),
        malicious=jnp.zeros((1,), bool))
    self._key = key
    self._ravel = jax.jit(lambda t: jax.flatten_util.ravel_pytree(t)[0])

  def __call__(self, params, index: int) -> jax.Array:
    (delta, _), = self._backend([params], [0], [index], self._key,
                                self._data)
    return self._ravel(client_lib.as_tree(delta))
