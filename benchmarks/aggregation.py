"""Aggregation kernel times vs numpy.median(axis=0), measured in one run.

  python benchmarks/aggregation.py                          # full default grid
  python benchmarks/aggregation.py --sizes 16 64 --dims 100000 --repeats 3
  python benchmarks/aggregation.py --points 64x1000000 --kernels median \\
      trimmed_mean --out /tmp/agg.json

Each kernel runs jitted on a [K, D] float32 matrix (a quarter of the rows
corrupted: one padding row, one NaN row, the rest honest Gaussian), after a
warm-up call that compiles it, and is timed with `block_until_ready`. The
table shows the best of `--repeats` in ms and the ratio to numpy's median of
the same valid rows (`< 1` is faster). (K, D) points whose estimated peak
memory exceeds `--max-bytes` are skipped, and the table says so.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

from afl import aggregators  # noqa: E402
import afl.server  # noqa: E402,F401  (registers the stages)
from afl.server import stages  # noqa: E402
from afl.server.rows import Rows  # noqa: E402

# label -> (registry name, kwargs). Hyperparameters are typical, not tuned.
KERNELS = {
    "mean": ("mean", {}),
    "median": ("median", {}),
    "median_w": ("median", {"weighted": True}),
    "trimmed_mean": ("trimmed_mean", {"beta": 0.1}),
    "trimmed_mean_w": ("trimmed_mean", {"beta": 0.1, "weighted": True}),
    "krum": ("krum", {"num_byzantine": 2}),
    "multi_krum": ("multi_krum", {"num_byzantine": 2, "num_selected": 4}),
    "geomed": ("geomed", {"max_iters": 20, "tol": 1e-6}),
    "centered_clip": ("centered_clip", {"tau": 1.0, "iters": 3}),
    "hybrid": ("hybrid", {}),
    # The demo's default: the server's validity stage, duplicate merging
    # (a [K, K] Gram matrix), then centered clipping at its tau.
    "dedup_cc": ("centered_clip", {"tau": 0.15, "iters": 3}),
}
# Labels whose rows first pass the validity and dedup stages.
_DEDUP = ("dedup_cc",)
# Host references on the valid rows (timed the same way, no jit).
REFERENCES = ("np.median", "scipy.trim_mean")

# Peak memory per kernel, in copies of the [K, D] float32 input: the input,
# the +inf-masked keys and the broadcast weights for the weighted sorts, and
# numpy's partition copy for the references.
_COPIES = 4


def _matrix(k, d, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((k, d), dtype=np.float32)
  mask = np.ones(k, bool)
  if k >= 4:
    mask[0] = False
    x[1, d // 2] = np.nan
  w = rng.uniform(0.5, 2.0, k).astype(np.float32)
  return x, w, mask


def _time(fn, repeats):
  out = fn()  # compile / warm-up
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def _dedup(u, w, m):
  """The rows after the server's validity and dedup stages, as an
  aggregator's (updates, weights, mask)."""
  k = u.shape[0]
  rows = Rows(flat=u, weight=w, scale=jnp.ones(k), mask=m,
              ids=jnp.arange(k, dtype=jnp.int32), malicious=jnp.zeros(k, bool),
              aggregate=jnp.zeros(u.shape[1], u.dtype))
  rows, _ = stages.validity().apply(rows, jnp.zeros((), jnp.int32))
  entry = stages.REGISTRY["dedup"]
  dedup = entry.build(entry.params(), key=jax.random.PRNGKey(0))
  rows, _ = dedup.apply(rows, ())
  return {"u": rows.flat}, rows.weight, rows.mask


def bench_point(k, d, kernels, repeats):
  """Times every kernel and reference at one (K, D); returns {label: times}."""
  x, w, mask = _matrix(k, d)
  valid = mask & np.all(np.isfinite(x), axis=1)
  res = {}
  xv = x[valid]  # the references get the clean rows, outside the timing
  res["np.median"] = _time(lambda: np.median(xv, axis=0), repeats)
  res["scipy.trim_mean"] = _time(
      lambda: scipy.stats.trim_mean(xv, 0.1, axis=0), repeats)
  del xv
  xj, wj, mj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(mask)
  del x
  for label in kernels:
    name, kw = KERNELS[label]
    agg = aggregators.get(name, **kw)
    state = agg.init({"u": xj})
    fn = jax.jit(lambda u, w, m, s, agg=agg: agg.apply({"u": u}, w, m, s)[0])
    if label in _DEDUP:
      fn = jax.jit(lambda u, w, m, s, agg=agg: agg.apply(
          *_dedup(u, w, m), s)[0])
    res[label] = _time(lambda fn=fn, s=state: fn(xj, wj, mj, s), repeats)
    print(f"  K={k} D={d} {label}: {min(res[label]) * 1e3:.1f} ms",
          file=sys.stderr, flush=True)
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256],
                 help="K values (clients per aggregation)")
  p.add_argument("--dims", type=float, nargs="+", default=[1e5, 1e6, 1e7],
                 help="D values (parameters)")
  p.add_argument("--points", nargs="+", default=None,
                 help="explicit KxD points, e.g. 64x1000000; replaces the "
                      "--sizes x --dims grid")
  p.add_argument("--kernels", nargs="+", default=list(KERNELS),
                 choices=list(KERNELS))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--max-bytes", type=float, default=6e9,
                 help="skip points whose estimated peak memory "
                      f"({_COPIES} x K x D x 4 bytes) exceeds this")
  p.add_argument("--out", default="benchmarks/out/aggregation.json")
  args = p.parse_args(argv)

  if args.points:
    points = [tuple(int(float(v)) for v in s.lower().split("x"))
              for s in args.points]
  else:
    points = [(k, int(d)) for k in args.sizes for d in args.dims]

  records, rows = [], []
  for k, d in points:
    est = _COPIES * k * d * 4
    if est > args.max_bytes:
      rows.append((k, d, None, f"skipped: ~{est / 1e9:.1f} GB > --max-bytes "
                               f"{args.max_bytes / 1e9:.1f} GB"))
      records.append(dict(K=k, D=d, skipped=True, estimated_bytes=est))
      continue
    res = bench_point(k, d, args.kernels, args.repeats)
    ref = min(res["np.median"])
    rows.append((k, d, res, None))
    for label, times in res.items():
      records.append(dict(K=k, D=d, kernel=label, times_s=times,
                          best_s=min(times),
                          ratio_vs_np_median=min(times) / ref))

  labels = list(REFERENCES) + list(args.kernels)
  print("| K | D | " + " | ".join(labels) + " |")
  print("|---|---|" + "---|" * len(labels))
  for k, d, res, note in rows:
    if res is None:
      print(f"| {k} | {d:.0e} | {note} |" + " |" * (len(labels) - 1))
      continue
    ref = min(res["np.median"])
    cells = [f"{min(res[l]) * 1e3:.1f} ms ({min(res[l]) / ref:.2f}x)"
             for l in labels]
    print(f"| {k} | {d:.0e} | " + " | ".join(cells) + " |")
  print("\nms = best of --repeats; (r x) = time / numpy.median(axis=0) time "
        "in the same run, < 1 is faster.")

  meta = dict(jax=jax.__version__, numpy=np.__version__,
              backend=jax.default_backend(),
              devices=[str(d) for d in jax.devices()],
              cpu_count=os.cpu_count(), machine=platform.machine(),
              repeats=args.repeats, time=time.strftime("%Y-%m-%d %H:%M:%S"))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(meta=meta, results=records), f, indent=1)
  print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
