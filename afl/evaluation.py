"""Test-set evaluation: params -> (accuracy, loss), one compiled program."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_eval_fn(apply_fn, x, y, batch_size: int, frozen=None):
  """Returns params -> (accuracy, loss) over the whole test set.

  The test set is padded once to a multiple of the batch so one program is
  compiled; batches are a Python loop (convs inside lax.map are slow on
  XLA:CPU, benchmarks/NOTES.md).
  """
  n = len(y)
  b = min(batch_size, n)
  nb = -(-n // b)
  pad = nb * b - n
  xp = jnp.asarray(np.concatenate([x, np.zeros((pad,) + x.shape[1:],
                                                x.dtype)]))
  yp = jnp.asarray(np.concatenate([y, np.zeros(pad, y.dtype)]))
  mp = jnp.asarray(np.arange(nb * b) < n)

  # The test arrays are arguments, not closure constants: XLA would embed
  # them in the executable (slow compiles, a second copy in memory).
  @jax.jit
  def batch_stats(params, frozen, xp, yp, mp, i):
    xb = jax.lax.dynamic_slice_in_dim(xp, i * b, b)
    yb = jax.lax.dynamic_slice_in_dim(yp, i * b, b)
    mb = jax.lax.dynamic_slice_in_dim(mp, i * b, b)
    logits = apply_fn(params, xb, frozen)
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None],
                                axis=1)[:, 0]
    correct = jnp.argmax(logits, -1) == yb
    return jnp.sum(jnp.where(mb, correct, 0)), jnp.sum(jnp.where(mb, loss, 0))

  def evaluate(params):
    stats = [batch_stats(params, frozen, xp, yp, mp, np.int32(i))
             for i in range(nb)]
    correct = sum(float(c) for c, _ in stats)
    loss = sum(float(l) for _, l in stats)
    return correct / n, loss / n

  return evaluate
