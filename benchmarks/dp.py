"""Cost of per-example clipping: a client step with DP-SGD vs without.

  python benchmarks/dp.py [--batch 32] [--microbatch 0]
                          [--out benchmarks/out/dp.json]

Times one jitted local step (sample batch, gradient, optax update) of the
CNN and the MLP in the same run: without DP (batches drawn with
replacement), with DP-SGD on batches drawn with replacement, and with DP-SGD
on Poisson batches (expected size B, padded; afl's default with client DP)
for each microbatch size given; prints each DP step's ratio to the plain
step (target on GPU: <= 1.5x).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from afl import backend as backend_lib  # noqa: E402
from afl import client as client_lib  # noqa: E402
from afl import models  # noqa: E402
from afl import sampling  # noqa: E402

WORKLOADS = {"cnn": ("cnn", (32, 32, 3)), "mlp": ("mlp", (28, 28, 1))}


def step_time(name, shape, batch, dp, microbatch, kind, whole=False,
              repeats=20):
  model = models.make_model(name, 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape))
  n = 1024
  fns = client_lib.make_client_fns(
      client_lib.cross_entropy_loss(models.plain_apply(model)),
      optax.sgd(0.05), batch, repeats,
      dp=client_lib.ClientDP(1.0, 1.0, microbatch) if dp else None,
      sampler=sampling.Sampler.make(kind, batch, [n]))
  rng = np.random.default_rng(0)
  data = client_lib.ClientData(
      x=jnp.asarray(rng.standard_normal((n,) + shape, np.float32)),
      y=jnp.asarray(rng.integers(0, 10, n).astype(np.int32)),
      indices=jnp.arange(n, dtype=jnp.int32),
      offsets=jnp.asarray([0, n], jnp.int32))
  root = jax.random.PRNGKey(1)
  if whole:  # the jitted step over the whole padded batch (vmap's)
    step = jax.jit(fns.step)

    def run(t):
      state = fns.init(params, root, 0, t)
      for _ in range(repeats):
        state = step(state, data, np.int32(0))
      return state
  else:  # a task of `repeats` steps on the loop backend (Poisson: buckets)
    backend = backend_lib.Backend(fns, "loop")
    run = lambda t: backend([params], [0], [t], root, data)[0]
  jax.block_until_ready(run(0))
  best = np.inf
  for t in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(run(t + 1))
    best = min(best, (time.perf_counter() - t0) / repeats)
  return best


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--microbatch", type=int, nargs="+", default=[0],
                  help="Poisson DP steps: per-example gradients in chunks "
                  "of this many (0: the whole padded batch at once)")
  ap.add_argument("--out", default="benchmarks/out/dp.json")
  args = ap.parse_args()
  rows = []
  for w, (name, shape) in WORKLOADS.items():
    plain = step_time(name, shape, args.batch, False, None,
                      "with_replacement")
    runs = [("with_replacement", 0, False)] + [
        ("poisson", m, whole) for m in args.microbatch
        for whole in (False, True)]
    for kind, micro, whole in runs:
      dp = step_time(name, shape, args.batch, True, micro or None, kind,
                     whole)
      rows.append(dict(workload=w, batch=args.batch,
                       sampling=kind + (" (whole padded batch)" if whole
                                        else ""),
                       microbatch=micro, plain_ms=plain * 1e3,
                       dp_ms=dp * 1e3, ratio=dp / plain))
  padded = sampling.poisson_padded_size(args.batch, 1024)
  print(f"\n{jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, batch {args.batch} (poisson: expected "
        f"{args.batch}, padded to {padded}; shard 1024)\n")
  print("| model | DP sampling | microbatch | step ms | DP-SGD step ms | "
        "ratio |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workload']} | {r['sampling']} | {r['microbatch'] or '-'} "
          f"| {r['plain_ms']:.2f} | {r['dp_ms']:.2f} | {r['ratio']:.2f}x |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(device=jax.devices()[0].device_kind,
                   platform=jax.default_backend(), rows=rows), f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
