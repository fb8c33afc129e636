"""Cost of per-example clipping: a client step with DP-SGD vs without.

  python benchmarks/dp.py [--batch 32] [--out benchmarks/out/dp.json]

Times one jitted local step (sample batch, gradient, optax update) of the
CNN and the MLP with and without DP-SGD (per-example grads, clip, noise), in
the same run, and prints the ratio (target on GPU: <= 1.5x).
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

from afl import client as client_lib  # noqa: E402
from afl import models  # noqa: E402

WORKLOADS = {"cnn": ("cnn", (32, 32, 3)), "mlp": ("mlp", (28, 28, 1))}


def step_time(name, shape, batch, dp, microbatch, repeats=20):
  model = models.make_model(name, 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape))
  fns = client_lib.make_client_fns(
      client_lib.cross_entropy_loss(models.plain_apply(model)), optax.sgd(0.05), batch, 1,
      dp=client_lib.ClientDP(1.0, 1.0, microbatch) if dp else None)
  rng = np.random.default_rng(0)
  n = 1024
  data = client_lib.ClientData(
      x=jnp.asarray(rng.standard_normal((n,) + shape, np.float32)),
      y=jnp.asarray(rng.integers(0, 10, n).astype(np.int32)),
      indices=jnp.arange(n, dtype=jnp.int32),
      offsets=jnp.asarray([0, n], jnp.int32))
  step = jax.jit(fns.step)
  state = fns.init(params, jax.random.PRNGKey(1), 0, 0)
  cid = np.int32(0)
  state = jax.block_until_ready(step(state, data, cid))
  best = np.inf
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(repeats):
      state = step(state, data, cid)
    jax.block_until_ready(state)
    best = min(best, (time.perf_counter() - t0) / repeats)
  return best


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--microbatch", type=int, default=0)
  ap.add_argument("--out", default="benchmarks/out/dp.json")
  args = ap.parse_args()
  rows = []
  for w, (name, shape) in WORKLOADS.items():
    plain = step_time(name, shape, args.batch, False, None)
    dp = step_time(name, shape, args.batch, True, args.microbatch or None)
    rows.append(dict(workload=w, batch=args.batch, plain_ms=plain * 1e3,
                     dp_ms=dp * 1e3, ratio=dp / plain))
  print(f"\n{jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, batch {args.batch}\n")
  print("| model | step ms | DP-SGD step ms | ratio |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['workload']} | {r['plain_ms']:.2f} | {r['dp_ms']:.2f} | "
          f"{r['ratio']:.2f}x |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(device=jax.devices()[0].device_kind,
                   platform=jax.default_backend(), rows=rows), f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
