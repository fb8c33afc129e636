"""The robustness table: robust pipelines against attacks on the async demo.

  python benchmarks/robustness.py --workdir runs/robustness \
      [--pipelines mean default ...] [--attacks none sign_flip ...] \
      [--fractions 0.2 0.3] [--seeds 0 1] [--set demo|tiny] \
      [--out benchmarks/out/robustness] [--merge other_machine.csv ...]

Runs the cells of `configs/robustness.py` (pipelines x attacks x attacker
fractions x seeds) that the filters select through `afl.experiments`, so a
cell whose directory already holds a complete run of the same config is
reused, and the grid can be filled piecemeal, on several machines, or
resumed after a kill. Then, from every complete cell in the workdir, writes
`<out>.csv` (one row per run), `<out>.md` (final test accuracy, mean over
seeds, per fraction; backdoor success; trust detection) and `<out>.png`
(a heatmap per fraction).
"""
import argparse
import csv
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from afl import experiments  # noqa: E402
from afl.run_records import read_json, read_jsonl  # noqa: E402
from configs import robustness as spec  # noqa: E402

COLUMNS = ("name", "pipeline", "attack", "fraction", "seed",
           "final_test_accuracy", "attack_success_rate", "num_malicious",
           "quarantined_malicious", "quarantined_honest",
           "first_quarantine_version", "diverged_at_version")


def _cells(args):
  for seed in args.seeds:
    for pipe in args.pipelines:
      if "none" in args.attacks:
        yield pipe, "none", 0.0, seed
      for fraction in args.fractions:
        for attack in args.attacks:
          if attack != "none":
            yield pipe, attack, fraction, seed


def _row(workdir, pipe, attack, fraction, seed):
  name = spec.name(pipe, attack, fraction, seed)
  d = os.path.join(workdir, name)
  s = read_json(os.path.join(d, "summary.json"))
  if s is None:
    return None
  first = None
  for r in read_jsonl(os.path.join(d, "metrics.jsonl")):
    if (r.get("num_quarantined") or 0) > 0:
      first = r["version"]
      break
  return dict(name=name, pipeline=pipe, attack=attack, fraction=fraction,
              seed=seed, final_test_accuracy=s.get("final_test_accuracy"),
              attack_success_rate=s.get("attack_success_rate"),
              num_malicious=s.get("num_malicious"),
              quarantined_malicious=s.get("quarantined_malicious"),
              quarantined_honest=s.get("quarantined_honest"),
              first_quarantine_version=first,
              diverged_at_version=s.get("diverged_at_version"))


_INTS = ("seed", "num_malicious", "quarantined_malicious",
         "quarantined_honest", "first_quarantine_version",
         "diverged_at_version")
_FLOATS = ("fraction", "final_test_accuracy", "attack_success_rate")


def read_csv(path):
  """Rows of a CSV this script wrote (another machine's share of the grid),
  typed as `_row` returns them; empty fields are None."""
  rows = []
  with open(path, newline="") as f:
    for r in csv.DictReader(f):
      if set(r) != set(COLUMNS):
        raise SystemExit(f"error: {path}: columns {sorted(r)} are not "
                         f"{list(COLUMNS)}")
      for k in _INTS + _FLOATS:
        r[k] = None if r[k] == "" else (int if k in _INTS else float)(r[k])
      rows.append(r)
  return rows


def _mean(rows, key):
  vals = [r[key] for r in rows if r.get(key) is not None]
  return float(np.mean(vals)) if vals else None


def _fmt(x, digits=3):
  return "–" if x is None else f"{x:.{digits}f}"


def _accuracy(rows):
  """A cell's mean final accuracy over seeds, or "div@v" when a seed's
  model diverged (the earliest version), or "–" without runs."""
  div = [r["diverged_at_version"] for r in rows
         if r.get("diverged_at_version") is not None]
  if div:
    return f"div@{min(div)}"
  return _fmt(_mean(rows, "final_test_accuracy"))


def tables(rows, pipelines, attacks, fractions):
  """Markdown: accuracy per fraction (with the no-attack column), backdoor
  success, and trust detection where trust ran."""
  by = {}
  for r in rows:
    by.setdefault((r["pipeline"], r["attack"], r["fraction"]), []).append(r)
  cols = [a for a in attacks if a != "none"]
  out = []
  for fraction in fractions:
    out += [f"### Final test accuracy, {round(100 * fraction)}% attackers "
            "(mean over seeds)", "",
            "| pipeline | none | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 2) + "|"]
    for p in pipelines:
      cells = [_accuracy(by.get((p, "none", 0.0), []))]
      cells += [_accuracy(by.get((p, a, fraction), [])) for a in cols]
      out.append(f"| {p} | " + " | ".join(cells) + " |")
    out.append("")
    if "backdoor" in cols:
      out += ["| pipeline | backdoor success |", "|---|---|"]
      out += [f"| {p} | " + _fmt(_mean(by.get((p, "backdoor", fraction), []),
                                       "attack_success_rate")) + " |"
              for p in pipelines]
      out.append("")
  trust = {}
  for r in rows:
    if r.get("quarantined_malicious") is not None:
      key = (r["pipeline"], r["attack"], r["fraction"])
      trust.setdefault(key, []).append(r)
  if trust:
    out += ["### Trust detection (runs with trust; per seed, seeds in order)",
            "",
            "| pipeline | attack | fraction | attackers quarantined | "
            "honest quarantined | first quarantine (version) |",
            "|---|---|---|---|---|---|"]
    cells = [("none", 0.0)] + [(a, f) for f in fractions for a in cols]
    for p in pipelines:
      for a, f in cells:
        runs = sorted(trust.get((p, a, f), []), key=lambda r: r["seed"])
        if not runs:
          continue
        caught = " / ".join(
            f"{r['quarantined_malicious']}/{r['num_malicious']}"
            if r["num_malicious"] else "–" for r in runs)
        honest = " / ".join(str(r["quarantined_honest"]) for r in runs)
        first = " / ".join(str(r["first_quarantine_version"] or "–")
                           for r in runs)
        out.append(f"| {p} | {a} | {f} | {caught} | {honest} | {first} |")
  return "\n".join(out) + "\n"


def heatmap(path, rows, pipelines, attacks, fractions):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = ["none"] + [a for a in attacks if a != "none"]
  fig, axes = plt.subplots(1, len(fractions), squeeze=False,
                           figsize=(1 + 0.8 * len(cols) * len(fractions),
                                    1 + 0.45 * len(pipelines)))
  for ax, fraction in zip(axes[0], fractions):
    grid = np.full((len(pipelines), len(cols)), np.nan)
    for i, p in enumerate(pipelines):
      for j, a in enumerate(cols):
        f = 0.0 if a == "none" else fraction
        cell = [r for r in rows
                if (r["pipeline"], r["attack"], r["fraction"]) == (p, a, f)]
        label = _accuracy(cell)
        if label.startswith("div"):
          grid[i, j] = 0.0  # a diverged model is as bad as it gets
          ax.text(j, i, "div", ha="center", va="center", fontsize=7,
                  color="white")
        elif cell:
          grid[i, j] = _mean(cell, "final_test_accuracy")
          ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                  fontsize=7)
    ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=60, fontsize=7)
    ax.set_yticks(range(len(pipelines)), pipelines, fontsize=7)
    ax.set_title(f"{round(100 * fraction)}% attackers", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--set", default="demo", choices=("demo", "tiny"))
  ap.add_argument("--pipelines", nargs="+", default=list(spec.PIPELINES),
                  choices=list(spec.PIPELINES))
  ap.add_argument("--attacks", nargs="+",
                  default=["none"] + list(spec.ATTACKS),
                  choices=["none"] + list(spec.ATTACKS))
  ap.add_argument("--fractions", nargs="+", type=float,
                  default=list(spec.FRACTIONS))
  ap.add_argument("--seeds", nargs="+", type=int, default=list(spec.SEEDS))
  ap.add_argument("--out", default="benchmarks/out/robustness")
  ap.add_argument("--no-run", action="store_true",
                  help="only tabulate the complete runs in --workdir")
  ap.add_argument("--merge", nargs="+", default=[], metavar="CSV",
                  help="also tabulate the selected cells of these CSVs "
                  "(written here on other machines) that --workdir lacks")
  args = ap.parse_args(argv)
  bad = sorted(set(args.fractions) - set(spec.FRACTIONS))
  if bad or not set(args.seeds) <= set(spec.SEEDS):
    ap.error(f"fractions must be among {spec.FRACTIONS} and seeds among "
             f"{spec.SEEDS} (configs/robustness.py)")
  cells = list(_cells(args))
  if not args.no_run:
    experiments.run_experiments(
        os.path.join(ROOT, "configs", "robustness.py"), args.workdir,
        only=[spec.name(*c) for c in cells], experiment_set=args.set)
  rows = [r for r in (_row(args.workdir, *c) for c in cells) if r]
  have = {r["name"] for r in rows}
  wanted = {spec.name(*c) for c in cells}
  for path in args.merge:
    for r in read_csv(path):
      if r["name"] in wanted and r["name"] not in have:
        rows.append(r)
        have.add(r["name"])
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out + ".csv", "w", newline="") as f:
    w = csv.DictWriter(f, COLUMNS)
    w.writeheader()
    w.writerows(rows)
  md = tables(rows, args.pipelines, args.attacks, args.fractions)
  with open(args.out + ".md", "w") as f:
    f.write(md)
  heatmap(args.out + ".png", rows, args.pipelines, args.attacks,
          args.fractions)
  print(md)
  print(f"{len(rows)} of {len(cells)} cells complete; wrote {args.out}"
        ".csv, .md, .png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
