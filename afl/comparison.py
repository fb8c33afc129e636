"""The comparison of experiments: one row per run, written by
`write_comparison` as comparison.csv, comparison.md and
accuracy_vs_virtual_time.png."""
from __future__ import annotations

import csv
import os

from afl import config as config_lib
from afl.run_records import read_jsonl

# Columns of comparison.csv / comparison.md, in order.
COLUMNS = ("name", "server_mode", "aggregator", "attack", "attack_fraction",
           "dp_mode", "compression", "final_test_accuracy",
           "best_test_accuracy", "epsilon", "attack_success_rate",
           "bytes_total", "num_server_versions", "client_updates",
           "wall_seconds", "virtual_time")


def comparison_row(name: str, cfg: config_lib.ExperimentConfig,
                   summary: dict) -> dict:
  """The comparison row; None marks a cell that does not apply."""
  attack = cfg.attack.kind if cfg.attack.kind != "none" else None
  fraction = None
  if attack:  # explicit ids override the fraction (afl.attacks)
    fraction = (len(cfg.attack.ids) / cfg.num_clients if cfg.attack.ids
                else cfg.attack.fraction)
  comp = cfg.compression
  compression = None
  if comp.kind != "none":
    compression = (f"{comp.kind} {comp.ratio:g}"
                   f"{' ef' if comp.error_feedback else ''}"
                   f"{' fp16' if comp.float16 else ''}")

  def num(key):
    return _number(summary.get(key))

  return dict(
      name=name,
      server_mode=cfg.server.mode,
      # Trust scores change what an aggregator does: say so in its cell.
      aggregator=cfg.aggregator.name + (
          "+trust" if getattr(getattr(cfg, "trust", None), "enabled", False)
          else ""),
      attack=attack,
      attack_fraction=fraction,
      dp_mode=cfg.dp.mode if cfg.dp.mode != "none" else None,
      compression=compression,
      final_test_accuracy=num("final_test_accuracy"),
      best_test_accuracy=num("best_test_accuracy"),
      epsilon=num("epsilon"),
      attack_success_rate=num("attack_success_rate"),
      bytes_total=num("bytes_total"),
      num_server_versions=num("num_server_versions"),
      client_updates=num("client_updates"),
      wall_seconds=num("wall_seconds"),
      virtual_time=num("virtual_time"),
  )


def _number(x):
  if isinstance(x, str):  # "inf" as written by afl.metrics
    try:
      return float(x)
    except ValueError:
      return None
  return x


def format_cell(x, digits: int | None = None) -> str:
  """A comparison cell: empty for None, floats with `digits` decimals."""
  if x is None:
    return ""
  if isinstance(x, float) and digits is not None:
    return f"{x:.{digits}f}"
  return str(x)


# Digits shown in comparison.md (the CSV keeps full precision).
_MD_DIGITS = dict(attack_fraction=2, final_test_accuracy=4,
                  best_test_accuracy=4, epsilon=3, attack_success_rate=4,
                  wall_seconds=1, virtual_time=1)


def write_comparison(workdir: str, rows: list[dict]) -> list[str]:
  """Writes comparison.csv, comparison.md and accuracy_vs_virtual_time.png.

  Args:
    workdir: the experiments' parent directory.
    rows: comparison rows (`COLUMNS`; None is an empty cell); a `workdir`
      key, when present, locates the run's metrics.jsonl and report.md.

  Returns:
    The paths written.
  """
  csv_path = os.path.join(workdir, "comparison.csv")
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(COLUMNS)
    for r in rows:
      w.writerow(["" if r.get(c) is None else r[c] for c in COLUMNS])

  md_path = os.path.join(workdir, "comparison.md")
  lines = ["# Experiments", "",
           f"{len(rows)} experiments; accuracy is test accuracy at the end of "
           "the run (final) and at the best evaluation (best). Each name "
           "links to its run's report.", "",
           "| " + " | ".join(COLUMNS) + " |",
           "|" + "|".join("---" for _ in COLUMNS) + "|"]
  for r in rows:
    cells = []
    for c in COLUMNS:
      cell = format_cell(r.get(c), _MD_DIGITS.get(c))
      if c == "name" and r.get("workdir"):
        rel = os.path.relpath(os.path.join(r["workdir"], "report.md"),
                              workdir)
        cell = f"[{cell}]({rel})"
      cells.append(cell.replace("|", "\\|"))
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "![accuracy against virtual time]"
            "(accuracy_vs_virtual_time.png)", ""]
  with open(md_path, "w") as f:
    f.write("\n".join(lines))

  png_path = os.path.join(workdir, "accuracy_vs_virtual_time.png")
  _plot_curves(png_path, rows)
  return [csv_path, md_path, png_path]

def _plot_curves(path: str, rows: list[dict]):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(9, 5))
  # 10 colours x 4 line styles keep 40 curves apart.
  styles = ("-", "--", "-.", ":")
  for i, r in enumerate(rows):
    recs = [h for h in read_jsonl(os.path.join(r.get("workdir") or "",
                                               "metrics.jsonl"))
            if h.get("test_accuracy") is not None]
    if not recs:
      continue
    ax.plot([h["virtual_time"] for h in recs],
            [h["test_accuracy"] for h in recs], label=r["name"],
            color=f"C{i % 10}", linestyle=styles[(i // 10) % len(styles)],
            linewidth=1.2)
  ax.set_xlabel("virtual time")
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
              ncol=1 if len(ax.lines) <= 20 else 2, frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
