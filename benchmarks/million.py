"""A million clients: startup, host time per arrival, checkpoint, peak RSS.

  python benchmarks/million.py [--clients 1000000] [--versions 20]

`configs/tiny.py` with `num_clients`, `concurrency` = clients / 100,
`server.buffer_size` = clients / 1000, two synthetic 8x8 examples per
client, one local step of batch 2, `client.backend=auto` (tiny's own
`loop` is for tests), `--versions` versions and a final checkpoint, in
three variants: IID shards, Dirichlet(1.0) shards (a tenth of the clients
with 20 examples each, see VARIANTS), and the MLP widened to 100 hidden
units. Each variant runs in a fresh process (its peak RSS is its
own) and reports: build (data, partition, model, scheduler: `Simulation`'s
constructor), run (`Simulation.run`, the final checkpoint included), the
seconds inside the calls that run XLA programs (client training, server
steps, evaluation; compilation happens inside them), the checkpoint,
host milliseconds per arrival (run minus XLA calls minus checkpoint, per
arrival), arrivals per second and the share of the run outside XLA calls.
Prints a table and writes JSON.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> (clients per --clients, examples per client, config overrides).
# A Dirichlet split of two examples per client leaves many clients empty
# (every draw fails min_shard_size=1), so that variant runs a tenth of the
# clients with 20 examples each: the same 2M examples.
VARIANTS = {
    "iid": (1, 2, {}),
    "dirichlet": (0.1, 20, {"data.partition": "dirichlet",
                            "data.min_shard_size": 1}),
    "mlp100": (1, 2, {"model.width": 100}),
}


def _config(clients, versions, variant):
  sys.path.insert(0, ROOT)
  from configs import tiny  # pylint: disable=g-import-not-at-top
  share, per_client, overrides = VARIANTS[variant]
  clients = int(clients * share)
  c = tiny.get_config()
  c.num_clients, c.concurrency = clients, max(1, clients // 100)
  c.server.buffer_size = max(1, clients // 1000)
  c.data.update(synthetic_train=per_client * clients, partition="iid",
                min_shard_size=2)
  c.client.update(local_steps=1, batch_size=2, backend="auto")
  c.stop.max_versions = versions
  c.eval.every_versions = versions
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def child(clients, versions, variant, out):
  """Runs one variant in this process; writes its row to `out`."""
  t0 = time.perf_counter()
  sys.path.insert(0, HERE)
  import scheduler as sched_bench  # pylint: disable=g-import-not-at-top
  from afl import checkpoint  # pylint: disable=g-import-not-at-top
  from afl.config import build_config  # pylint: disable=g-import-not-at-top
  from afl.simulation import Simulation  # pylint: disable=g-import-not-at-top
  import_s = time.perf_counter() - t0
  cfg = build_config(_config(clients, versions, variant))
  with tempfile.TemporaryDirectory(prefix="afl_million_") as workdir:
    t0 = time.perf_counter()
    sim = Simulation(cfg, workdir, log=lambda m: None)
    build_s = time.perf_counter() - t0
    inside, saving = [0.0], [0.0]
    timed = sched_bench._timed  # pylint: disable=protected-access
    sim.c.backend = timed(sim.c.backend, inside)
    sim.c.evaluate = timed(sim.c.evaluate, inside)
    for name in ("aggregate", "window_arrival", "mix"):
      setattr(sim.server, name, timed(getattr(sim.server, name), inside))
    checkpoint.save = timed(checkpoint.save, saving, block=False)
    t0 = time.perf_counter()
    summary = sim.run()
    run_s = time.perf_counter() - t0
  arrivals = summary["client_updates"] + summary.get("dropouts", 0)
  host = run_s - inside[0] - saving[0]
  row = dict(variant=variant, clients=cfg.num_clients, versions=versions,
             arrivals=arrivals, import_s=import_s, build_s=build_s,
             run_s=run_s, inside_xla_s=inside[0], checkpoint_s=saving[0],
             host_ms_per_arrival=1e3 * host / arrivals,
             arrivals_per_s=arrivals / run_s,
             outside_fraction=1 - inside[0] / run_s,
             peak_rss_mb=resource.getrusage(
                 resource.RUSAGE_SELF).ru_maxrss / 1024,
             final_accuracy=summary.get("final_accuracy"))
  with open(out, "w") as f:
    json.dump(row, f)


def table(rows) -> str:
  lines = ["| variant | clients | arrivals | build s | run s | in XLA calls s "
           "| checkpoint s | host ms / arrival | arrivals/s | outside XLA "
           "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['variant']} | {r['clients']:,} | {r['arrivals']:,} | "
        f"{r['build_s']:.1f} | {r['run_s']:.1f} | {r['inside_xla_s']:.1f} | "
        f"{r['checkpoint_s']:.2f} | {r['host_ms_per_arrival']:.3f} | "
        f"{r['arrivals_per_s']:,.0f} | {r['outside_fraction']:.1%} | "
        f"{r['peak_rss_mb']:,.0f} |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--clients", type=int, default=1_000_000)
  ap.add_argument("--versions", type=int, default=20)
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  ap.add_argument("--out", default="benchmarks/out/million.json")
  args = ap.parse_args()
  if args.child:
    child(args.clients, args.versions, args.child, args.out)
    return
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  rows = []
  for variant in args.variants.split(","):
    if variant not in VARIANTS:
      sys.exit(f"error: --variants: unknown variant {variant!r} "
               f"(one of {', '.join(VARIANTS)})")
    out = f"{args.out}.{variant}"
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                        variant, "--clients", str(args.clients), "--versions",
                        str(args.versions), "--out", out], check=False)
    if r.returncode:
      sys.exit(f"error: variant {variant} failed (exit {r.returncode})")
    with open(out) as f:
      rows.append(json.load(f))
    os.remove(out)
    print(f"  {variant}: done", file=sys.stderr, flush=True)
  print(table(rows))
  with open(args.out, "w") as f:
    json.dump(rows, f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
