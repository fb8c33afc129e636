"""Host-side speed of the discrete-event engine, and a full run's host share.

  python benchmarks/scheduler.py [--events 1000000] [--clients 100000]

1. Engine alone: pops an arrival and dispatches a replacement, as the async
   server does, with no training; events/s, one event being one pop and
   its dispatch (target: >= 1M/s). Rows: the pure-Python engine afl had
   before (tests/reference_scheduler.py), and the compiled one through
   `pop`/`dispatch` with the time inside its windows (the numba kernel and
   the conversion of its records to Python tuples) shown apart, in one run.
2. A full run (`--run-config`, default configs/tiny.py scaled to
   `--run-clients` clients and `--run-versions` versions): wall time, the
   time inside the calls that run XLA programs (client training, server
   aggregation, evaluation; each timed to completion, so it includes their
   own dispatch), and the fraction of wall time outside them.
Prints a table and writes JSON.
"""
import argparse
import functools
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

import jax  # noqa: E402

from afl.config import SchedulerConfig, build_config  # noqa: E402
from afl.scheduler import Scheduler  # noqa: E402
from afl.simulation import Simulation  # noqa: E402
from reference_scheduler import ReferenceScheduler  # noqa: E402


def engine_rate(events, clients, concurrency, reference=False):
  """(events/s through pop and dispatch, seconds inside the engine's
  windows or None)."""
  make = ReferenceScheduler if reference else functools.partial(
      Scheduler, pattern="replace")
  s = make(SchedulerConfig(dropout_prob=0.05), clients, concurrency, 5,
           np.random.default_rng(0))
  inside = [0.0]
  if not reference:
    s._run = _timed(s._run, inside, block=False)  # pylint: disable=protected-access
  for _ in range(concurrency):
    s.dispatch(0.0, 0)
  inside[0] = 0.0
  t0 = time.perf_counter()
  for i in range(events):
    t = s.pop()
    s.dispatch(t.arrival_time, i)
  return events / (time.perf_counter() - t0), (None if reference
                                                 else inside[0])


def _timed(fn, box, block=True):
  def wrapped(*args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if block:
      out = jax.block_until_ready(out)
    box[0] += time.perf_counter() - t0
    return out
  return wrapped


def host_share(config_path, clients, versions):
  """A full run with its XLA-running calls timed: (wall, inside, summary)."""
  spec = importlib.util.spec_from_file_location("cfg", config_path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.num_clients = clients
  c.concurrency = max(c.concurrency, clients // 10)
  c.data.update(synthetic_train=max(c.data.synthetic_train, 16 * clients),
                partition="iid")
  c.stop.max_versions = versions
  c.eval.every_versions = max(1, versions // 4)
  sim = Simulation(build_config(c), None, log=lambda m: None)
  inside = [0.0]
  sim.c.backend = _timed(sim.c.backend, inside)
  sim.c.evaluate = _timed(sim.c.evaluate, inside)
  for name in ("aggregate", "window_arrival", "mix"):
    setattr(sim.server, name, _timed(getattr(sim.server, name), inside))
  t0 = time.perf_counter()
  summary = sim.run()
  return time.perf_counter() - t0, inside[0], summary


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--events", type=int, default=200_000)
  ap.add_argument("--clients", type=int, default=100_000)
  ap.add_argument("--concurrency", type=int, default=1000)
  ap.add_argument("--run-config", default="configs/tiny.py")
  ap.add_argument("--run-clients", type=int, default=1000)
  ap.add_argument("--run-versions", type=int, default=300)
  ap.add_argument("--out", default="benchmarks/out/scheduler.json")
  args = ap.parse_args()
  old, _ = engine_rate(args.events, args.clients, args.concurrency, True)
  rate, inside_engine = engine_rate(args.events, args.clients,
                                    args.concurrency)
  window_rate = args.events / inside_engine
  print(f"| engine | events | clients | concurrency | events/s | vs before "
        f"|\n|---|---|---|---|---|---|\n"
        f"| pure Python (before) | {args.events} | {args.clients} | "
        f"{args.concurrency} | {old:,.0f} | 1.00x |\n"
        f"| compiled, through pop/dispatch | {args.events} | {args.clients} "
        f"| {args.concurrency} | {rate:,.0f} | {rate / old:.2f}x |\n"
        f"| compiled, inside its windows | {args.events} | {args.clients} "
        f"| {args.concurrency} | {window_rate:,.0f} | {window_rate / old:.2f}x"
        " |")
  wall, inside, summary = host_share(args.run_config, args.run_clients,
                                     args.run_versions)
  events = summary["client_updates"] + summary.get("dropouts", 0)
  print(f"\n| run | clients | versions | arrivals | wall s | in XLA calls s "
        f"| outside |\n|---|---|---|---|---|---|---|\n"
        f"| {args.run_config} | {args.run_clients} | {args.run_versions} | "
        f"{events} | {wall:.2f} | {inside:.2f} | {1 - inside / wall:.1%} |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(events=args.events, clients=args.clients,
                   concurrency=args.concurrency, events_per_s=rate,
                   events_per_s_before=old,
                   events_per_s_inside_windows=window_rate,
                   run=dict(config=args.run_config, clients=args.run_clients,
                            versions=args.run_versions, arrivals=events,
                            wall_s=wall, inside_xla_calls_s=inside,
                            outside_fraction=1 - inside / wall)), f)


if __name__ == "__main__":
  main()
