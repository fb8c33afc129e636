"""Runs a set of named experiments and compares them.

  python -m afl.experiments --experiments configs/experiments.py \
      --workdir runs/experiments [--only NAME ...] [--set tiny] [--overwrite]

A spec (see configs/experiments.py) names experiments as overrides of base
configs. Each selected experiment runs in `workdir/<name>` through
`afl.run.run`; a directory that already holds a complete run of the same
validated config is reused, not rerun (a run is a function of its config:
the seed fixes everything but wall time). Afterwards `comparison.csv`,
`comparison.md` and `accuracy_vs_virtual_time.png` in `workdir` compare
every experiment of the spec that has a complete run there.
"""
from __future__ import annotations

import argparse
import collections.abc
import csv
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import types
from typing import Any, Callable

import ml_collections

from afl import config as config_lib
from afl import metrics as metrics_lib
from afl.report import read_json as _read_json

# Columns of comparison.csv / comparison.md, in order.
COLUMNS = ("name", "server_mode", "aggregator", "attack", "attack_fraction",
           "dp_mode", "compression", "final_test_accuracy",
           "best_test_accuracy", "epsilon", "attack_success_rate",
           "bytes_total", "num_server_versions", "client_updates",
           "wall_seconds", "virtual_time")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One named experiment: `make_config()` returns its ConfigDict."""
  name: str
  make_config: Callable[[], ml_collections.ConfigDict]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict,
                    name: str = "") -> ml_collections.ConfigDict:
  """Returns a copy of `config` with nested `overrides` applied.

  Sections (dataclass-valued fields of `afl.config.ExperimentConfig`) are
  merged key by key; any other value, dict-valued leaves such as
  `client.optimizer_kwargs` included, is replaced whole. Dotted keys
  ("server.mode") are accepted too.

  Args:
    config: the base config; not modified.
    overrides: e.g. `{"server": {"mode": "sync"}, "attack.fraction": 0.3}`.
    name: the experiment's name, for error messages.

  Returns:
    The new ConfigDict.

  Raises:
    ConfigError: a key that `config` does not have, or a value whose type
      the ConfigDict refuses; one line naming the experiment and the key.

  >>> from configs import tiny
  >>> c = apply_overrides(tiny.get_config(), {"server": {"mode": "sync"}})
  >>> c.server.mode
  'sync'
  """
  out = ml_collections.ConfigDict(config.to_dict())
  where = f"experiment {name}: " if name else ""
  _merge(out, overrides, config_lib.ExperimentConfig(), "", where)
  return out


def _merge(node, overrides, schema, path, where):
  for key, value in overrides.items():
    if "." in key:  # "a.b": value  ==  {"a": {"b": value}}
      head, rest = key.split(".", 1)
      _merge(node, {head: {rest: value}}, schema, path, where)
      continue
    full = f"{path}.{key}" if path else key
    if key not in node:
      raise config_lib.ConfigError(
          f"{where}config.{full}: unknown key in the base config; known keys "
          f"here: {sorted(node.keys())}")
    if schema is not None and hasattr(schema, key):
      sub_schema = getattr(schema, key)
      is_section = dataclasses.is_dataclass(sub_schema)
    else:  # a key afl.config does not know: trust the ConfigDict's shape
      sub_schema = None
      is_section = isinstance(node[key], ml_collections.ConfigDict)
    if is_section:
      if not isinstance(value, collections.abc.Mapping):
        raise config_lib.ConfigError(
            f"{where}config.{full}: is a section; override it with a dict, "
            f"got {value!r}")
      _merge(node[key], value, sub_schema, full, where)
      continue
    try:
      node[key] = dict(value) if isinstance(
          value, collections.abc.Mapping) else value
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(
          f"{where}config.{full}: cannot set {value!r}: "
          f"{str(e).splitlines()[0]}") from None


def _base_factory(base) -> Callable[[], ml_collections.ConfigDict]:
  if isinstance(base, types.ModuleType):
    return base.get_config
  if isinstance(base, ml_collections.ConfigDict):
    return lambda: ml_collections.ConfigDict(base.to_dict())
  if callable(base):
    return base
  raise config_lib.ConfigError(
      f"experiment base must be a config module, a ConfigDict or a "
      f"function, got {base!r}")


def _normalize(spec) -> list[Experiment]:
  """Accepts `[(name, base, overrides)]` or `{name: ConfigDict}`."""
  if isinstance(spec, collections.abc.Mapping):
    spec = [(name, cfg, {}) for name, cfg in spec.items()]
  exps, seen = [], set()
  for entry in spec:
    name, base, overrides = entry
    if not name or "/" in name or name in (".", ".."):
      raise config_lib.ConfigError(
          f"experiment name {name!r} is not a directory name")
    if name in seen:
      raise config_lib.ConfigError(f"experiment {name} is defined twice")
    seen.add(name)
    factory = _base_factory(base)
    exps.append(Experiment(name, lambda f=factory, o=overrides, n=name:
                           apply_overrides(f(), o, n)))
  return exps


def load_experiments(spec_path_or_module, arg: str | None = None
                     ) -> list[Experiment]:
  """Loads a spec: a file path, a module name, or a module object with
  `get_experiments(arg)`; returns its experiments in order."""
  spec = spec_path_or_module
  if isinstance(spec, str):
    if spec.endswith(".py") or os.sep in spec:
      spec = _load_file(spec)
    else:
      try:
        spec = importlib.import_module(spec)
      except ImportError as e:
        raise config_lib.ConfigError(
            f"--experiments: cannot import {spec}: {e}") from None
  if not hasattr(spec, "get_experiments"):
    raise config_lib.ConfigError(
        f"--experiments: {getattr(spec, '__name__', spec)} has no "
        f"get_experiments()")
  try:
    exps = spec.get_experiments(arg)
  except ValueError as e:  # e.g. an unknown --set
    raise config_lib.ConfigError(f"--set: {e}") from None
  return _normalize(exps)


def _load_file(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--experiments: no such file {path}")
  # Specs import their base configs as `configs.<name>` (as config files do
  # under launch.py): make the folder above the spec's folder importable.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    mod_spec = importlib.util.spec_from_file_location(
        "_afl_experiments_spec", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
  finally:
    if added:
      sys.path.remove(root)
  return module


def _json_config(cfg: config_lib.ExperimentConfig) -> Any:
  # Exactly what MetricsWriter writes to config.json, read back.
  return metrics_lib.config_record(cfg)


def _state(exp_dir: str, want) -> str:
  """"empty", "complete", "incomplete" (same config), "different" or
  "foreign" (files but no readable config.json)."""
  old = _read_json(os.path.join(exp_dir, "config.json"))
  if old is None:
    if os.path.isdir(exp_dir) and os.listdir(exp_dir):
      # A run that died before writing its config, or someone else's files.
      return "foreign"
    return "empty"
  if old != want:
    return "different"
  if os.path.exists(os.path.join(exp_dir, "summary.json")):
    return "complete"
  return "incomplete"


def run_experiments(spec_path_or_module, workdir: str,
                    only: list[str] | None = None, overwrite: bool = False,
                    log: Callable[[str], None] = print,
                    experiment_set: str | None = None) -> list[dict]:
  """Runs the selected experiments of a spec, then writes the comparison.

  Every selected config is validated, and every experiment directory
  checked, before the first run starts, so a bad spec fails at once.

  Args:
    spec_path_or_module: see `load_experiments`.
    workdir: experiment `name` runs in `workdir/name`.
    only: names to run (default: all, in spec order).
    overwrite: replace directories holding a run of a different config (or
      of nothing recognisable); complete runs of the same config are
      always reused.
    log: called with one line per step.
    experiment_set: passed to the spec's `get_experiments`.

  Returns:
    One dict per selected experiment, in spec order: the comparison row
    (`COLUMNS`, None where not applicable) plus `workdir` and `status`
    ("ran", "resumed" or "skipped").

  Raises:
    ConfigError: an unknown name, a bad override or config, or a directory
      holding another config's run without `overwrite`.
  """
  from afl import run as run_lib  # pylint: disable=g-import-not-at-top
  from afl import report  # pylint: disable=g-import-not-at-top
  exps = load_experiments(spec_path_or_module, experiment_set)
  known = [e.name for e in exps]
  if only:
    unknown = [n for n in only if n not in known]
    if unknown:
      raise config_lib.ConfigError(
          f"unknown experiment(s) {', '.join(unknown)}; known: "
          f"{', '.join(known)}")
  selected = [e for e in exps if not only or e.name in only]

  plan = []
  for exp in selected:
    config = exp.make_config()
    try:
      cfg = config_lib.build_config(config)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"experiment {exp.name}: {e}") from None
    exp_dir = os.path.join(workdir, exp.name)
    state = _state(exp_dir, _json_config(cfg))
    if state in ("different", "foreign") and not overwrite:
      what = ("a run of a different config than" if state == "different"
              else "files but no config.json of")
      raise config_lib.ConfigError(
          f"{exp_dir} holds {what} experiment {exp.name}; pass --overwrite "
          f"to replace it or choose another --workdir")
    plan.append((exp, config, cfg, exp_dir, state))

  os.makedirs(workdir, exist_ok=True)
  results = []
  try:
    for i, (exp, config, cfg, exp_dir, state) in enumerate(plan, 1):
      head = f"[{i}/{len(plan)}] {exp.name}"
      if state == "complete":
        log(f"{head}: skipped, {exp_dir} holds a complete run of this "
            f"config")
        status = "skipped"
      else:
        status = "resumed" if state == "incomplete" else "ran"
        log(f"{head}: {'resuming' if status == 'resumed' else 'running'} in "
            f"{exp_dir}")
        run_lib.run(config, exp_dir,
                    overwrite=state in ("different", "foreign"),
                    resume=state == "incomplete")
      summary = _read_json(os.path.join(exp_dir, "summary.json")) or {}
      report.write_report(exp_dir)
      results.append(dict(_row(exp.name, cfg, summary), workdir=exp_dir,
                          status=status))
      log(f"{head}: final test accuracy "
          f"{_fmt(summary.get('final_test_accuracy'), 4)}")
  finally:
    # Also when a run fails: the comparison then shows the runs finished so
    # far, and a rerun reuses them.
    paths = _compare_all(exps, results, workdir)
    log(f"wrote {', '.join(paths)}")
  return results


def _compare_all(exps: list[Experiment], results: list[dict],
                 workdir: str) -> list[str]:
  """Compares every experiment of the spec with a complete run in
  `workdir`, not only those run now, so that a sweep can be run piecemeal
  with --only."""
  done = {r["name"]: r for r in results}
  rows = []
  for exp in exps:
    row = done.get(exp.name) or _existing_row(
        exp, os.path.join(workdir, exp.name))
    if row is not None:
      rows.append(row)
  return write_comparison(workdir, rows)


def _existing_row(exp: Experiment, exp_dir: str) -> dict | None:
  if not os.path.exists(os.path.join(exp_dir, "summary.json")):
    return None
  try:
    cfg = config_lib.build_config(exp.make_config())
  except config_lib.ConfigError:
    return None  # e.g. a key not in this version of afl: not comparable
  if _state(exp_dir, _json_config(cfg)) != "complete":
    return None
  summary = _read_json(os.path.join(exp_dir, "summary.json")) or {}
  return dict(_row(exp.name, cfg, summary), workdir=exp_dir, status="skipped")


def _row(name: str, cfg: config_lib.ExperimentConfig, summary: dict) -> dict:
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


def _fmt(x, digits: int | None = None) -> str:
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
      cell = _fmt(r.get(c), _MD_DIGITS.get(c))
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


def read_metrics(run_dir: str) -> list[dict]:
  """The records of `run_dir/metrics.jsonl` ([] when absent); a torn last
  line (a run killed mid-write) is ignored."""
  path = os.path.join(run_dir, "metrics.jsonl")
  records = []
  if not os.path.exists(path):
    return records
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def _plot_curves(path: str, rows: list[dict]):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(9, 5))
  # 10 colours x 4 line styles keep 40 curves apart.
  styles = ("-", "--", "-.", ":")
  for i, r in enumerate(rows):
    recs = [h for h in read_metrics(r.get("workdir") or "")
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


class _Parser(argparse.ArgumentParser):
  """Bad arguments print one line, not usage plus a message."""

  def error(self, message):
    raise config_lib.ConfigError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m afl.experiments",
              description="Run named experiments and compare them.")
  p.add_argument("--experiments", required=True,
                 help="spec file (e.g. configs/experiments.py) or module")
  p.add_argument("--workdir", help="parent directory of the runs")
  p.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                 help="run only these experiments")
  p.add_argument("--set", dest="experiment_set", default=None,
                 help="argument of the spec's get_experiments, e.g. tiny")
  p.add_argument("--overwrite", action="store_true",
                 help="replace directories holding another config's run")
  p.add_argument("--list", action="store_true",
                 help="print the experiments' names and exit")
  return p


def main(argv: list[str] | None = None) -> int:
  """The command line; `argv` excludes the program name. Returns the exit
  status (2 on bad input, with one line on stderr)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args = _parser().parse_args(argv)
    if args.list:
      for exp in load_experiments(args.experiments, args.experiment_set):
        print(exp.name)
      return 0
    if not args.workdir:
      raise config_lib.ConfigError("--workdir is required")
    run_experiments(args.experiments, args.workdir, only=args.only,
                    overwrite=args.overwrite,
                    log=lambda m: print(f"[experiments] {m}", flush=True),
                    experiment_set=args.experiment_set)
  except (config_lib.ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
