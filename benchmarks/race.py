"""The race: one synchronous FedAvg experiment in afl, Flower and FedJAX.

  python benchmarks/race.py --setup     # first time: makes the venvs, runs
  python benchmarks/race.py             # later runs reuse the venvs

Fashion-MNIST, 100 Dirichlet(0.5) clients, 10 a round, the demo CNN, 5
local steps of batch 32 (SGD, lr 0.1, momentum 0.5), server SGD lr 1.0,
`--rounds` rounds, the global model evaluated on the 10k test images every
`--every` rounds. afl writes the normalized data and its partition once
(`export`) and every framework trains on those shards; each row runs in
its own process, in turn (nothing else should run meanwhile), and reports
its evaluations with the seconds since that process started.
- afl (sync): `server.mode=sync`, the mean weighted by shard size.
- afl (FedBuff): the same clients and updates asynchronously (10 in flight,
  a version every 10 arrivals, the demo's speeds and staleness weights);
  its virtual time is the simulated clock.
- Flower: `flwr.simulation.run_simulation` with torch clients (Ray, one
  CPU each) and `FedAvg`; benchmarks/race_flower.py.
- FedJAX: `fedjax.algorithms.fed_avg`; benchmarks/race_fedjax.py.
Flower and FedJAX each live in a virtualenv under `--venvs`, which
`--setup` creates with pinned packages (FedJAX's last release needs an old
JAX); a framework whose venv is missing or fails to install is skipped with
a line saying why. Wall time to finish counts from process start to exit
(imports, compilation, Ray's start-up included); the time to the target
accuracy is that of the first evaluation at or above it. Sampling differs
where the frameworks differ: afl and the Flower clients draw each batch
uniformly with replacement from the shard, FedJAX shuffles and repeats it.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

META = dict(seed=0, num_clients=100, clients_per_round=10, local_steps=5,
            batch_size=32, lr=0.1, momentum=0.5, server_lr=1.0,
            eval_batch=2000)
# name -> (pip requirements, import check); installed in that order.
VENVS = {
    "flower": (["torch==2.13.0", "flwr[simulation]==1.42.0", "numpy"],
               "import flwr, torch, ray; print('flwr', flwr.__version__, "
               "'torch', torch.__version__, 'ray', ray.__version__)"),
    "fedjax": (["fedjax==0.0.17", "jax[cpu]==0.4.30", "dm-haiku==0.0.12",
                "optax==0.2.2", "numpy<2", "scipy<1.14"],
               "import fedjax, jax, haiku; print('fedjax 0.0.17', 'jax', "
               "jax.__version__, 'haiku', haiku.__version__)"),
}
# row -> (venv or None for this interpreter, script, extra args)
ROWS = {
    "afl": (None, "race_afl.py", ["sync"]),
    "afl_fedbuff": (None, "race_afl.py", ["fedbuff"]),
    "flower": ("flower", "race_flower.py", []),
    "fedjax": ("fedjax", "race_fedjax.py", []),
}
LABELS = {"afl": "afl (sync FedAvg)", "afl_fedbuff": "afl (async FedBuff)",
          "flower": "Flower (simulation, torch)", "fedjax": "FedJAX (fed_avg)"}


def export(meta: dict, data_dir: str):
  """Writes afl's data and partition for `meta` as .npy files (what the
  workers memory-map) and meta.json; returns the partition."""
  import race_afl  # pylint: disable=g-import-not-at-top
  from afl import build  # pylint: disable=g-import-not-at-top
  from afl import config as config_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.build_config(race_afl.race_config(meta))
  ds = build.load_data(cfg, log=lambda m: None)
  part = build.make_partition(cfg, ds.train_y, build.seeds(cfg.seed)[0])
  os.makedirs(data_dir, exist_ok=True)
  arrays = dict(train_x=ds.train_x, train_y=ds.train_y, test_x=ds.test_x,
                test_y=ds.test_y, indices=part.indices, offsets=part.offsets)
  for k, v in arrays.items():
    np.save(os.path.join(data_dir, f"{k}.npy"), np.asarray(v))
  with open(os.path.join(data_dir, "meta.json"), "w") as f:
    json.dump(dict(meta, shape=list(ds.train_x.shape[1:])), f)
  return part


def _venv_python(venvs, name):
  return os.path.join(venvs, name, "bin", "python")


def setup(venvs: str, name: str):
  """Creates venv `name` if missing; returns `_check`'s pair."""
  py = _venv_python(venvs, name)
  reqs, check = VENVS[name]
  log = os.path.join(venvs, f"{name}.log")
  if not os.path.exists(py):
    os.makedirs(venvs, exist_ok=True)
    with open(log, "w") as f:
      steps = [[sys.executable, "-m", "venv", os.path.join(venvs, name)],
               [py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
               [py, "-m", "pip", "install", "-q"] + reqs]
      for cmd in steps:
        print(f"race: {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        if subprocess.run(cmd, stdout=f, stderr=f, check=False).returncode:
          return f"`{' '.join(cmd)}` failed (log: {log})", None
  return _check(venvs, name)


def _check(venvs, name):
  """(None, the packages' versions) or (why venv `name` is unusable, None)."""
  py = _venv_python(venvs, name)
  if not os.path.exists(py):
    return f"no venv at {os.path.join(venvs, name)} (run with --setup)", None
  r = subprocess.run([py, "-c", VENVS[name][1]], capture_output=True,
                     text=True, check=False)
  if r.returncode:
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return (f"{os.path.join(venvs, name)} cannot import it ({last}); "
            "remove it and rerun with --setup"), None
  print(f"race: {name}: {r.stdout.strip()}", file=sys.stderr)
  return None, r.stdout.strip()


def run_row(row, venvs, data_dir, timeout):
  """Runs one row's worker; returns its result dict (or `skipped`)."""
  venv, script, extra = ROWS[row]
  py = sys.executable if venv is None else _venv_python(venvs, venv)
  out = os.path.join(data_dir, f"result_{row}.json")
  if os.path.exists(out):
    os.remove(out)  # a stale result must not pass for this run's
  env = dict(os.environ, PYTHONPATH=HERE)
  t0 = time.perf_counter()
  try:
    r = subprocess.run([py, os.path.join(HERE, script), data_dir, out]
                       + extra, env=env, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return dict(row=row, skipped=f"did not finish in {timeout} s")
  wall = time.perf_counter() - t0
  if r.returncode or not os.path.exists(out):
    return dict(row=row, skipped=f"its worker exited with {r.returncode}")
  with open(out) as f:
    res = json.load(f)
  return dict(res, row=row, wall_s=wall)


def reached(evals, target):
  """The first evaluation with accuracy >= target, or None."""
  return next((e for e in evals if e[2] >= target), None)


def table(results, target) -> str:
  head = (f"| framework | wall to finish (s) | wall to {target:.2f} (s) | "
          f"round at {target:.2f} | final accuracy | virtual time at "
          f"{target:.2f} / end |")
  lines = [head, "|---|---|---|---|---|---|"]
  for r in results:
    name = LABELS[r["row"]]
    if "skipped" in r:
      lines.append(f"| {name} | skipped: {r['skipped']} | | | | |")
      continue
    hit, last = reached(r["evals"], target), r["evals"][-1]
    virt = "-"
    if len(last) > 3:
      virt = (f"{hit[3]:.1f}" if hit else "not reached") + f" / {last[3]:.1f}"
    lines.append(
        f"| {name} | {r['wall_s']:.1f} | "
        + (f"{hit[1]:.1f} | {hit[0]} | " if hit else "not reached | - | ")
        + f"{last[2]:.4f} | {virt} |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rounds", type=int, default=50)
  ap.add_argument("--every", type=int, default=5)
  ap.add_argument("--target", type=float, default=0.80)
  ap.add_argument("--rows", default="afl,afl_fedbuff,flower,fedjax")
  ap.add_argument("--setup", action="store_true",
                  help="create the missing Flower and FedJAX venvs first")
  ap.add_argument("--venvs", default=os.path.join(ROOT, "benchmarks", "out",
                                                  "race_venvs"))
  ap.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "out",
                                                 "race_data"))
  ap.add_argument("--timeout", type=int, default=3600,
                  help="seconds one row may take")
  ap.add_argument("--out", default="benchmarks/out/race.json")
  args = ap.parse_args()
  rows = args.rows.split(",")
  for r in rows:
    if r not in ROWS:
      sys.exit(f"error: --rows: unknown row {r!r} (one of {', '.join(ROWS)})")
  meta = dict(META, rounds=args.rounds, every=args.every)
  export(meta, args.data)
  results, versions = [], {}
  for row in rows:
    venv = ROWS[row][0]
    why = None
    if venv is not None:
      why, versions[venv] = (setup if args.setup else _check)(args.venvs,
                                                               venv)
    if why:
      print(f"race: {row} skipped: {why}", file=sys.stderr)
      results.append(dict(row=row, skipped=why))
      continue
    print(f"race: running {row}", file=sys.stderr, flush=True)
    results.append(run_row(row, args.venvs, args.data, args.timeout))
  import jax  # pylint: disable=g-import-not-at-top
  versions["afl"] = f"jax {jax.__version__}"
  print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, {args.rounds} "
        "rounds; " + "; ".join(f"{k}: {v}" for k, v in versions.items() if v)
        + f"\n\n{table(results, args.target)}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(meta=meta, target=args.target, cpus=os.cpu_count(),
                   host=platform.node(), jax=jax.__version__,
                   versions=versions, results=results), f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
