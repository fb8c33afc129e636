"""Host-side speed of the discrete-event engine alone (events per second).

  python benchmarks/scheduler.py [--events 1000000] [--clients 100000]

Pops an arrival and dispatches a replacement, as the async server does,
with no training; prints events/s (target: >= 1M/s) and writes JSON.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from afl.config import SchedulerConfig  # noqa: E402
from afl.scheduler import Scheduler  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--events", type=int, default=200_000)
  ap.add_argument("--clients", type=int, default=100_000)
  ap.add_argument("--concurrency", type=int, default=1000)
  ap.add_argument("--out", default="benchmarks/out/scheduler.json")
  args = ap.parse_args()
  s = Scheduler(SchedulerConfig(dropout_prob=0.05), args.clients,
                args.concurrency, 5, np.random.default_rng(0))
  for _ in range(args.concurrency):
    s.dispatch(0.0, 0)
  t0 = time.perf_counter()
  for i in range(args.events):
    t = s.pop()
    s.dispatch(t.arrival_time, i)
  dt = time.perf_counter() - t0
  rate = args.events / dt
  print(f"| events | clients | concurrency | events/s |\n|---|---|---|---|\n"
        f"| {args.events} | {args.clients} | {args.concurrency} | "
        f"{rate:,.0f} |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(events=args.events, clients=args.clients,
                   concurrency=args.concurrency, events_per_s=rate), f)


if __name__ == "__main__":
  main()
