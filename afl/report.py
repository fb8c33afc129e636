"""Run reports: report.md from a run's files.

`write_report(workdir)` turns a run's config.json, summary.json,
metrics.jsonl and malicious.json into a Markdown page with the plots
embedded. TensorBoard event files are `afl.tensorboard_io`'s.
"""
from __future__ import annotations

import glob
import json
import math
import os

from afl.run_records import is_number, read_json, read_jsonl
from afl.server import modes

# Settings shown in the report's key table: (dotted key, label, shown when
# this other dotted key has a value other than the given one, or always).
# A server mode's own parameter (afl.server.modes): shown for that mode.
_MODE_PARAM = object()
_KEY_SETTINGS = (
    ("seed", "seed", None), ("num_clients", "clients", None),
    ("concurrency", "concurrency", None), ("data.name", "data", None),
    ("data.partition", "partition", None),
    ("data.dirichlet_alpha", "Dirichlet alpha", None),
    ("model.name", "model", None), ("client.local_steps", "local steps", None),
    ("client.batch_size", "client batch size", None),
    ("client.lr", "client lr", None),
    ("client.optimizer", "client optimizer", None),
    ("server.mode", "server mode", None),
    ("server.buffer_size", "buffer size", _MODE_PARAM),
    ("server.mixing_alpha", "mixing alpha", _MODE_PARAM),
    ("server.staleness_fn", "staleness weighting", None),
    ("aggregator.name", "aggregator", None),
    ("trust.enabled", "trust scores", None),
    ("dp.mode", "DP", None),
    ("dp.noise_multiplier", "noise multiplier", ("dp.mode", "none")),
    ("secagg.enabled", "secure aggregation", None),
    ("attack.kind", "attack", None),
    ("attack.fraction", "malicious fraction", ("attack.kind", "none")),
    ("compression.kind", "compression", None),
    ("compression.ratio", "top-k ratio", ("compression.kind", "none")),
    ("compression.error_feedback", "error feedback",
     ("compression.kind", "none")),
    ("stop.max_versions", "max versions", None),
    ("stop.max_virtual_time", "max virtual time", None),
)


def _key_settings(config: dict) -> list[tuple[str, str]]:
  rows = []
  for key, label, unless in _KEY_SETTINGS:
    value = _get(config, key)
    if value is None:
      continue
    if unless is _MODE_PARAM:  # shown when the chosen mode has it
      mode = _get(config, "server.mode")
      if (mode not in modes.REGISTRY or key.split(".")[-1] not in
          modes.REGISTRY[mode].param_fields()):
        continue
    elif unless is not None:
      other, off = unless
      if _get(config, other) == off:
        continue
    rows.append((label, f"{value:g}" if isinstance(value, float)
                 else str(value)))
  return rows


# Keys of summary.json / metrics.jsonl that belong to trust scoring.
_TRUST_MARKERS = ("trust", "quarantin")


def _get(d: dict | None, dotted: str, default=None):
  for part in dotted.split("."):
    if not isinstance(d, dict) or part not in d:
      return default
    d = d[part]
  return d


def _fmt(x, digits: int = 4) -> str:
  if x is None:
    return "–"
  if isinstance(x, bool):
    return str(x)
  if isinstance(x, float):
    if math.isnan(x):
      return "nan"
    if x.is_integer() and abs(x) < 1e15:
      return f"{x:.1f}"
    return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits else f"{x:.3g}"
  if isinstance(x, int):
    return f"{x:,}"
  return str(x)


def _bytes(n) -> str:
  if not is_number(n):
    return _fmt(n)
  if n < 1024:
    return f"{int(n):,} B"
  size = float(n)
  for unit in ("KiB", "MiB", "GiB"):
    size /= 1024
    if size < 1024:
      break
  return f"{size:,.2f} {unit} ({int(n):,} B)"


def _table(rows, header=("", "")) -> list[str]:
  out = ["| " + " | ".join(header) + " |",
         "|" + "|".join("---" for _ in header) + "|"]
  for r in rows:
    out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
  return out + [""]


def _thin(records: list, rows: int = 20) -> list:
  """About `rows` evenly spaced records, always with the last one."""
  if not records:
    return records
  shown = records[::max(1, math.ceil(len(records) / rows))]
  if shown[-1] is not records[-1]:
    shown.append(records[-1])
  return shown


def _is_trust_key(k: str) -> bool:
  return any(m in k.lower() for m in _TRUST_MARKERS)


def write_report(workdir: str) -> str:
  """Writes `workdir/report.md` from the run's files; returns its path.

  Every input but one of config.json / summary.json / metrics.jsonl may be
  missing (an incomplete run says so); sections whose data is absent, such
  as privacy or trust scores, are left out.

  Args:
    workdir: a run directory written by `afl.run.run`.

  Returns:
    The path of report.md.

  Raises:
    FileNotFoundError: none of config.json, summary.json, metrics.jsonl.
  """
  config = read_json(os.path.join(workdir, "config.json"))
  summary = read_json(os.path.join(workdir, "summary.json"))
  history = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  malicious = read_json(os.path.join(workdir, "malicious.json"))
  if config is None and summary is None and not history:
    raise FileNotFoundError(
        f"{workdir} holds no run (no config.json, summary.json or "
        f"metrics.jsonl)")
  s = summary or {}
  last = history[-1] if history else {}

  def val(key):
    # The summary is the run's last word; an incomplete run has only metrics.
    return s.get(key, last.get(key))

  name = os.path.basename(os.path.abspath(workdir))
  lines = [f"# Run report: {name}", ""]
  if summary is None:
    lines += ["**Incomplete run**: no summary.json; figures below are from "
              f"the last evaluation (version {last.get('version', '?')}).", ""]

  # Key metrics.
  best = s.get("best_test_accuracy")
  if best is None and history:
    accs = [h["test_accuracy"] for h in history
            if is_number(h.get("test_accuracy"))]
    best = max(accs) if accs else None
  rows = [
      ("final test accuracy", _fmt(s.get("final_test_accuracy",
                                         last.get("test_accuracy")))),
      ("best test accuracy", _fmt(best)),
      ("final test loss", _fmt(s.get("final_test_loss",
                                     last.get("test_loss")))),
      ("server versions", _fmt(s.get("num_server_versions",
                                     last.get("version")))),
      ("client updates", _fmt(val("client_updates"))),
      ("dropouts", _fmt(val("dropouts"))),
      ("stale updates dropped", _fmt(val("stale_dropped"))),
      ("non-finite updates dropped", _fmt(val("non_finite_dropped"))),
      ("wall time (s)", _fmt(s.get("wall_seconds", last.get("wall_time")), 1)),
      ("virtual time", _fmt(val("virtual_time"), 1)),
      ("mean staleness", _fmt(s.get("mean_staleness"), 3)),
      ("max staleness", _fmt(s.get("max_staleness"))),
      ("mean cohort size", _fmt(val("mean_cohort_size"), 2)),
      ("backend", _fmt(s.get("backend"))),
      ("parameters", _fmt(s.get("num_params"))),
      ("stop reason", _fmt(s.get("stop_reason"))),
  ]
  lines += ["## Key metrics", ""] + _table(rows, ("metric", "value"))

  # Privacy.
  if val("epsilon") is not None or _get(config, "dp.mode", "none") != "none":
    dp = _get(config, "dp", {}) or {}
    rows = [("mode", dp.get("mode")),
            ("epsilon (final)", _fmt(val("epsilon"), 3)),
            ("delta", _fmt(val("dp_delta") or dp.get("delta"))),
            ("noise multiplier", _fmt(val("dp_noise_multiplier")
                                      or dp.get("noise_multiplier"), 3)),
            ("clip norm", _fmt(dp.get("clip_norm"))),
            ("accountant", dp.get("accountant", "–")),
            ("sampling", _fmt(val("dp_sampling"))),
            ("sampling rate (worst client)", _fmt(val("dp_sampling_rate"),
                                                  4)),
            ("mechanisms (worst client)", _fmt(val("dp_steps")))]
    if val("dp_assumption") is not None:
      rows.append(("assumption", val("dp_assumption")))
    lines += ["## Privacy", ""] + _table(rows, ("", "value"))

  # Communication.
  if val("bytes_total") is not None:
    comp = _get(config, "compression", {}) or {}
    setting = comp.get("kind", "none")
    if setting == "topk":
      setting = (f"top-k, ratio {comp.get('ratio')}, error feedback "
                 f"{'on' if comp.get('error_feedback') else 'off'}")
    rows = [("uplink compression", setting),
            ("bytes up", _bytes(val("bytes_up"))),
            ("bytes down", _bytes(val("bytes_down"))),
            ("bytes total", _bytes(val("bytes_total"))),
            ("bytes per update (up)", _bytes(val("bytes_per_update")))]
    lines += ["## Communication", ""] + _table(rows, ("", "value"))

  # Attack.
  kind = (malicious or {}).get("attack", _get(config, "attack.kind", "none"))
  ids = (malicious or {}).get("ids", [])
  if kind and kind != "none" or ids:
    shown = ", ".join(map(str, ids[:50])) + (" …" if len(ids) > 50 else "")
    rows = [("attack", kind),
            ("malicious fraction", _fmt(_get(config, "attack.fraction"))),
            ("malicious clients", _fmt(s.get("num_malicious", len(ids)))),
            ("malicious ids", shown or "–"),
            ("attack success rate (final)",
             _fmt(val("attack_success_rate")))]
    lines += ["## Attack", ""] + _table(rows, ("", "value"))

  lines += _trust_section(config, s, history, ids)

  # Evaluations, thinned to about 20 rows for long runs.
  if history:
    shown = _thin(history)
    extra = [k for k in ("epsilon", "attack_success_rate", "bytes_total")
             if any(k in h for h in history)]
    header = ("version", "virtual time", "test accuracy", "test loss",
              "mean staleness", *extra)
    rows = [(h.get("version"), _fmt(h.get("virtual_time"), 1),
             _fmt(h.get("test_accuracy")), _fmt(h.get("test_loss")),
             _fmt(h.get("mean_staleness"), 2),
             *(_fmt(h.get(k), 4) if k != "bytes_total" else _fmt(h.get(k))
               for k in extra)) for h in shown]
    lines += ["## Evaluations", ""] + _table(rows, header)

  pngs = sorted(os.path.basename(p)
                for p in glob.glob(os.path.join(workdir, "*.png")))
  if pngs:
    lines += ["## Plots", ""]
    for p in pngs:
      lines += [f"![{p}]({p})", ""]

  if config is not None:
    lines += ["## Config", ""] + _table(_key_settings(config),
                                        ("setting", "value"))
    lines += ["<details><summary>Full config (config.json)</summary>", "",
              "```json", json.dumps(config, indent=2), "```", "",
              "</details>", ""]

  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def _trust_section(config, summary, history, malicious_ids) -> list[str]:
  """Trust/quarantine figures under whatever names the run wrote: summary
  keys and metrics fields mentioning trust or quarantine."""
  skeys = [k for k in summary if _is_trust_key(k)]
  mkeys = sorted({k for h in history for k, v in h.items()
                  if _is_trust_key(k) and is_number(v)})
  if not skeys and not mkeys:
    if _get(config, "trust.enabled"):
      return ["## Trust scores", "", "Enabled, but the run reported no "
              "trust or quarantine figures.", ""]
    return []
  rows = []
  mal = set(malicious_ids or [])
  for k in skeys:
    v = summary[k]
    if isinstance(v, list) and all(isinstance(i, int) for i in v):
      # A list of client ids, e.g. those quarantined at the end.
      note = f" ({len(mal & set(v))} malicious)" if mal else ""
      rows.append((k, f"{len(v)} clients{note}: "
                      + ", ".join(map(str, v[:50]))
                      + (" …" if len(v) > 50 else "")))
    elif isinstance(v, (dict, list)):
      rows.append((k, f"`{json.dumps(v)[:200]}`"))
    else:
      rows.append((k, _fmt(v)))
  for k in mkeys:
    vals = [h[k] for h in history if is_number(h.get(k))]
    if k not in summary:
      rows.append((f"{k} (final / max over evaluations)",
                   f"{_fmt(vals[-1])} / {_fmt(max(vals))}"))
  out = ["## Trust scores", ""] + _table(rows, ("", "value"))
  if mkeys:
    header = ("version", *mkeys)
    rows = [(h.get("version"), *(_fmt(h.get(k)) for k in mkeys))
            for h in _thin([h for h in history if any(k in h for k in mkeys)])]
    out += _table(rows, header)
  return out
