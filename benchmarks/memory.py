"""Long-run memory: resident memory after 10,000 server versions vs 1,000.

  python benchmarks/memory.py [--versions 1000,10000] [--out ...]

Runs the tiny config in fedasync mode (one version per arrival) twice in
fresh processes and reports the peak resident set size (ru_maxrss) of each;
a leak that grows with versions shows as a ratio well above 1.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(versions: int):
  sys.path.insert(0, ROOT)
  from afl.config import build_config  # pylint: disable=g-import-not-at-top
  from afl.simulation import Simulation  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  c.server.mode = "fedasync"
  c.stop.max_versions = versions
  c.eval.every_versions = 500
  s = Simulation(build_config(c), None, log=lambda m: None).run()
  rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(dict(versions=versions, peak_rss_mb=rss_mb,
                        wall_seconds=s["wall_seconds"],
                        history_rows=len(s) and versions // 500 + 1)))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--versions", default="1000,10000")
  ap.add_argument("--out", default="benchmarks/out/memory.json")
  ap.add_argument("--child", type=int, default=0)
  args = ap.parse_args()
  if args.child:
    child(args.child)
    return
  rows = []
  for v in map(int, args.versions.split(",")):
    out = subprocess.run([sys.executable, __file__, "--child", str(v)],
                         capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = rows[0]["peak_rss_mb"]
  print("| versions | peak RSS (MB) | vs first | wall (s) |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['versions']} | {r['peak_rss_mb']:.0f} | "
          f"{r['peak_rss_mb'] / base:.3f}x | {r['wall_seconds']:.1f} |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
