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

The spec is loaded by `afl.experiment_spec`; the comparison files are
written by `afl.comparison`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from afl import cli_errors
from afl import comparison
from afl import config as config_lib
from afl import divergence
from afl import interrupt
from afl import metrics as metrics_lib
from afl import workdir as workdir_lib
from afl.experiment_spec import Experiment, load_experiments
from afl.run_records import read_json


def _json_config(cfg: config_lib.ExperimentConfig) -> Any:
  # Exactly what MetricsWriter writes to config.json, read back.
  return metrics_lib.config_record(cfg)


def _state(exp_dir: str, want) -> str:
  """"empty", "complete", "incomplete" (same config), "different",
  "partial" (only afl's files, no readable config.json: a run that died
  before writing it) or "foreign" (someone else's files, no config.json)."""
  old = read_json(os.path.join(exp_dir, "config.json"))
  if old is None:
    if not (os.path.isdir(exp_dir) and os.listdir(exp_dir)):
      return "empty"
    return "foreign" if workdir_lib.foreign_entries(exp_dir) else "partial"
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
    overwrite: replace directories holding a run of a different config
      (removing only afl's files, `afl.workdir`); complete runs of the same
      config are always reused, and a directory holding only afl's files
      without a config.json (a run killed before writing it) is redone.
    log: called with one line per step.
    experiment_set: passed to the spec's `get_experiments`.

  Returns:
    One dict per selected experiment, in spec order: the comparison row
    (`comparison.COLUMNS`, None where not applicable) plus `workdir` and
    `status`
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
    if state == "foreign":
      raise workdir_lib.WorkdirError(
          f"{exp_dir} (experiment {exp.name}) holds "
          f"{workdir_lib.foreign_entries(exp_dir)[0]}, which afl did not "
          "write, and no config.json; move it or choose another --workdir")
    if state == "different" and not overwrite:
      raise config_lib.ConfigError(
          f"{exp_dir} holds a run of a different config than experiment "
          f"{exp.name}; pass --overwrite to replace it or choose another "
          "--workdir")
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
        verb = dict(incomplete="resuming", partial="redoing (it stopped "
                    "before writing config.json)").get(state, "running")
        log(f"{head}: {verb} in {exp_dir}")
        # --overwrite and partial runs remove only afl's own files.
        try:
          run_lib.run(config, exp_dir,
                      overwrite=state in ("different", "partial"),
                      resume=state == "incomplete")
        except divergence.Diverged as e:
          log(f"{head}: {e}")  # a result like any other: the sweep goes on
          status = "diverged"
      summary = read_json(os.path.join(exp_dir, "summary.json")) or {}
      report.write_report(exp_dir)
      results.append(dict(comparison.comparison_row(exp.name, cfg, summary),
                          workdir=exp_dir, status=status))
      log(f"{head}: final test accuracy "
          f"{comparison.format_cell(summary.get('final_test_accuracy'), 4)}")
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
  return comparison.write_comparison(workdir, rows)


def _existing_row(exp: Experiment, exp_dir: str) -> dict | None:
  if not os.path.exists(os.path.join(exp_dir, "summary.json")):
    return None
  try:
    cfg = config_lib.build_config(exp.make_config())
  except config_lib.ConfigError:
    return None  # e.g. a key not in this version of afl: not comparable
  if _state(exp_dir, _json_config(cfg)) != "complete":
    return None
  summary = read_json(os.path.join(exp_dir, "summary.json")) or {}
  return dict(comparison.comparison_row(exp.name, cfg, summary),
              workdir=exp_dir, status="skipped")


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
  except interrupt.Interrupted as e:
    print(f"error: {e}; rerun the sweep to go on", file=sys.stderr)
    return cli_errors.EXIT_INTERRUPTED
  except Exception as e:  # pylint: disable=broad-except
    failure = cli_errors.expected_failure(e)
    if failure is None:
      raise  # unexpected: keep the traceback
    print(failure[1], file=sys.stderr)
    return failure[0]
  return 0


if __name__ == "__main__":
  sys.exit(main())
