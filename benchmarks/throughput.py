"""Client-updates per second for each backend, model and cohort size.

  python benchmarks/throughput.py                       # CPU defaults
  python benchmarks/throughput.py --cohorts 64,256,1024,4096 --out gpu.json

Each configuration trains a cohort of tasks (distinct clients, each from
the same start params) with `afl.backend.Backend`; the table shows updates/s
and each backend's ratio to `loop:1` measured in the same run. Backends are
`kind[:workers]`: `loop:1` is the FedJAX-style baseline (a Python loop of
per-client jitted steps, FedJAX's `for_each_client` design), `vmap:2` the
vmap backend with two worker threads, and `auto` what afl's default config
(`client.backend=auto`, `workers=0`, `vmap_chunk=0`) runs on this platform.
On CPU `auto` also takes the micro-batched gradient afl uses for conv
nets (`client.grad_microbatch`, shown as "mb16"); `kind[:workers]` runs
whole-batch gradients. `--baseline torch` adds a PyTorch sequential client
loop (benchmarks/torch_baseline.py). The backends of one workload and
cohort are timed in interleaved rounds (best of `--repeats`), so their
ratios come from the same stretch of machine load.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from afl import backend as backend_lib  # noqa: E402
from afl import client as client_lib  # noqa: E402
from afl import config_tree  # noqa: E402
from afl import models  # noqa: E402
from afl.config import ModelConfig  # noqa: E402

# name -> (model, width, input shape, local steps, batch): the issue-8 table,
# and LoRA-BERT: all-MiniLM-L6-v2 (packaged) with rank-8 q/v adapters on 32
# tokens; its frozen base is shared by the cohort.
WORKLOADS = {
    "lora_bert": ("bert", 0, (32,), 1, 16),
    "cnn": ("cnn", 32, (32, 32, 3), 1, 32),
    "cnn_fmnist": ("cnn", 32, (28, 28, 1), 5, 32),
    "mlp": ("mlp", 100, (28, 28, 1), 5, 16),
}


def _data(shape, num_clients, per_client=64, seed=0, tokens=False,
          frozen=None):
  rng = np.random.default_rng(seed)
  n = num_clients * per_client
  x = (rng.integers(1, 1000, (n,) + shape).astype(np.int32) if tokens
       else rng.standard_normal((n,) + shape, np.float32))
  return client_lib.ClientData(
      x=jnp.asarray(x), frozen=frozen,
      y=jnp.asarray(rng.integers(0, 10, n).astype(np.int32)),
      indices=jnp.arange(n, dtype=jnp.int32),
      offsets=jnp.arange(0, n + 1, per_client, dtype=jnp.int32))


def _backend(spec, name, batch):
  """'auto' or 'kind[:workers]' -> (kind, workers, chunk, grad_microbatch);
  only `auto` takes the CPU micro-batched gradient of conv nets."""
  if spec == "auto":
    kind = backend_lib.resolve_backend(
        "auto", has_conv=models.REGISTRY[name].prop("conv"))
    micro = backend_lib.resolve_grad_microbatch(
        0, batch, image_conv=models.REGISTRY[name].prop("image_conv"))
    return (kind, backend_lib.resolve_workers(0), backend_lib.resolve_chunk(0),
            micro)
  kind, _, workers = spec.partition(":")
  return kind, int(workers or 1), backend_lib.resolve_chunk(0), 0


def prepare(workload, spec, cohort):
  """Builds one configuration; returns (row, once(t)) with the first call
  (compile + warm-up) timed into row["compile_s"]."""
  name, width, shape, steps, batch = WORKLOADS[workload]
  mcfg = config_tree.component_section(ModelConfig)(
      name=name, width=width, checkpoint="minilm", pooling="mean")
  apply_fn, params, frozen = models.build_model(
      mcfg, 10, shape, jax.random.PRNGKey(0), log=lambda m: None)
  kind, workers, chunk, micro = _backend(spec, name, batch)
  fns = client_lib.make_client_fns(client_lib.cross_entropy_loss(apply_fn),
                                   optax.sgd(0.05), batch, steps,
                                   grad_microbatch=micro)
  run = backend_lib.Backend(fns, kind, workers=workers, chunk=chunk)
  data = _data(shape, cohort, tokens=name == "bert", frozen=frozen)
  root = jax.random.PRNGKey(1)
  ids = list(range(cohort))

  def once(t):
    out = run([params] * cohort, ids, [t] * cohort, root, data)
    jax.block_until_ready(client_lib.as_tree(out[-1][0]))

  t0 = time.perf_counter()
  once(0)
  row = dict(workload=workload, backend=spec,
             resolved=f"{kind}:{workers}" + (f" mb{micro}" if micro else ""),
             chunk=chunk, grad_microbatch=micro, cohort=cohort,
             compile_s=time.perf_counter() - t0)
  return row, once


def time_interleaved(entries, repeats, min_seconds):
  """Best seconds per call of each once(t) over `repeats` rounds; every
  round times each entry in turn, so load changes on a shared machine hit
  all of them alike."""
  best = [np.inf] * len(entries)
  t = 1
  for _ in range(repeats):
    for i, once in enumerate(entries):
      t0 = time.perf_counter()
      n = 0
      while True:
        once(t)
        t += 1
        n += 1
        if time.perf_counter() - t0 >= min_seconds:
          break
      best[i] = min(best[i], (time.perf_counter() - t0) / n)
  return best


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workloads", default="cnn,mlp")
  ap.add_argument("--backends", default="loop:1,vmap:1,auto")
  ap.add_argument("--cohorts", default="8,64")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--min-seconds", type=float, default=1.0)
  ap.add_argument("--baseline", default="", choices=["", "torch"],
                  help="also time a PyTorch sequential client loop")
  ap.add_argument("--out", default="benchmarks/out/throughput.json")
  args = ap.parse_args()
  rows = []
  for w in args.workloads.split(","):
    for c in map(int, args.cohorts.split(",")):
      group = []
      if args.baseline == "torch" and w in ("cnn", "mlp", "cnn_fmnist"):
        import torch_baseline  # pylint: disable=g-import-not-at-top
        name, _, shape, steps, batch = WORKLOADS[w]
        group.append((dict(workload=w, backend="torch", cohort=c,
                           compile_s=0.0),
                      torch_baseline.cohort_fn(name, shape, steps, batch, c)))
      group += [prepare(w, b, c) for b in args.backends.split(",")]
      best = time_interleaved([once for _, once in group], args.repeats,
                              args.min_seconds)
      for (r, _), sec in zip(group, best):
        r.update(updates_per_s=c / sec, seconds_per_cohort=sec)
        rows.append(r)
        print(f"  {w:4s} {r['backend']:6s} ({r.get('resolved', '-')}) "
              f"cohort {c:5d}: {r['updates_per_s']:9.1f} updates/s "
              f"(compile {r['compile_s']:.1f}s)", file=sys.stderr)
  ref = {(r["workload"], r["cohort"]): r["updates_per_s"]
         for r in rows if r.get("resolved") == "loop:1"}
  print(f"\n{jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}\n")
  torch_ref = {(r["workload"], r["cohort"]): r["updates_per_s"]
               for r in rows if r["backend"] == "torch"}
  print("| workload | backend | runs as | cohort | updates/s | vs loop:1 "
        "| vs torch |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    base = ref.get((r["workload"], r["cohort"]))
    ratio = f"{r['updates_per_s'] / base:.2f}x" if base else "-"
    tb = torch_ref.get((r["workload"], r["cohort"]))
    vs_torch = f"{r['updates_per_s'] / tb:.2f}x" if tb else "-"
    print(f"| {r['workload']} | {r['backend']} | {r.get('resolved', '-')} | "
          f"{r['cohort']} | "
          f"{r['updates_per_s']:.1f} | {ratio} | {vs_torch} |")
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  if peak:
    print(f"\npeak device memory: {peak / 2**30:.2f} GiB")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(peak_device_bytes=peak,
                   device=jax.devices()[0].device_kind,
                   platform=jax.default_backend(), jax=jax.__version__,
                   host=platform.node(), rows=rows), f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
