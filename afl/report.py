"""Run reports (report.md) and TensorBoard event files.

`write_report(workdir)` turns a run's config.json, summary.json,
metrics.jsonl and malicious.json into a Markdown page with the plots
embedded. `TensorBoardWriter` writes one scalar per numeric metrics field
(step = server version) with `tensorboardX`, imported only when used, so
TensorFlow is never needed; `read_tensorboard` parses the files back.
"""
from __future__ import annotations

import glob
import json
import math
import numbers
import os
import struct
import time

# Settings shown in the report's key table: (dotted key, label, shown when
# this other dotted key has a value other than the given one, or always).
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
    ("server.buffer_size", "buffer size", ("server.mode", "fedasync")),
    ("server.mixing_alpha", "mixing alpha", ("server.mode", "fedbuff")),
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
    if unless is not None:
      other, off = unless
      # fedasync has no buffer; sync has neither buffer nor mixing alpha.
      if _get(config, other) == off or (
          key.startswith("server.") and _get(config, other) == "sync"):
        continue
    rows.append((label, f"{value:g}" if isinstance(value, float)
                 else str(value)))
  return rows


# Keys of summary.json / metrics.jsonl that belong to trust scoring.
_TRUST_MARKERS = ("trust", "quarantin")


def read_json(path: str):
  """The JSON in `path`, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _read_jsonl(path: str) -> list[dict]:
  out = []
  try:
    with open(path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except ValueError:  # a torn last line of a killed run
          continue
  except OSError:
    pass
  return out


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
  if not _numeric(n):
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


def _numeric(x) -> bool:
  return isinstance(x, numbers.Number) and not isinstance(x, bool)


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
  history = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
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
            if _numeric(h.get("test_accuracy"))]
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
            ("noise multiplier", _fmt(val("noise_multiplier")
                                      or dp.get("noise_multiplier"), 3)),
            ("clip norm", _fmt(dp.get("clip_norm"))),
            ("accountant", dp.get("accountant", "–"))]
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
                  if _is_trust_key(k) and _numeric(v)})
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
    vals = [h[k] for h in history if _numeric(h.get(k))]
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


# TensorBoard.


class TensorBoardWriter:
  """Writes metrics records as TensorBoard scalars (tensorboardX, no TF).

  One scalar per numeric field of each record, tagged with the field name,
  at step = the record's `version`.

  >>> w = TensorBoardWriter("/tmp/afl_tb_doc", purge_step=0)
  >>> w.write({"version": 0, "test_accuracy": 0.5})
  >>> w.close()
  >>> read_tensorboard("/tmp/afl_tb_doc")["test_accuracy"][-1]
  (0, 0.5)
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    """Args:
      logdir: the event files' directory (created).
      purge_step: when set, TensorBoard discards events of earlier files
        at this step or later; a resumed run passes its first new version
        so that records written after the checkpoint are not shown twice.
    """
    try:
      # pylint: disable-next=g-import-not-at-top
      from tensorboardX import SummaryWriter
    except ImportError as e:
      raise ImportError("logging.tensorboard needs the tensorboardX package "
                        "(pip install tensorboardX)") from e
    os.makedirs(logdir, exist_ok=True)
    # Files are named by the second they were opened; a unique suffix keeps
    # a second writer in the same second from truncating the first's file.
    self._writer = SummaryWriter(
        logdir, purge_step=purge_step, flush_secs=10,
        filename_suffix=f".{time.time_ns()}.{os.getpid()}")
    self.logdir = logdir

  def write(self, record: dict):
    step = int(record["version"])
    for key, value in record.items():
      if key == "version" or not _numeric(value):
        continue
      self._writer.add_scalar(key, float(value), step)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def write_tensorboard(workdir: str, history: list[dict] | None = None,
                      logdir: str | None = None) -> str:
  """Writes `history` (default: workdir/metrics.jsonl) as TensorBoard
  scalars into `logdir` (default: workdir/tensorboard); returns logdir.

  Earlier events in logdir are superseded (purge from step 0).
  """
  if history is None:
    history = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  logdir = logdir or os.path.join(workdir, "tensorboard")
  writer = TensorBoardWriter(logdir, purge_step=0)
  for record in history:
    writer.write(record)
  writer.close()
  return logdir


def _records(path: str):
  """The payloads of a TFRecord file, checking both CRCs."""
  # pylint: disable-next=g-import-not-at-top
  from tensorboardX.record_writer import masked_crc32c
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    if hcrc != masked_crc32c(header):
      raise ValueError(f"{path}: corrupt record header at byte {pos}")
    body = data[pos + 12:pos + 12 + length]
    end = pos + 12 + length + 4
    if end > len(data):
      break  # a record cut short by a crash
    (bcrc,) = struct.unpack("<I", data[end - 4:end])
    if bcrc != masked_crc32c(body):
      raise ValueError(f"{path}: corrupt record at byte {pos}")
    yield body
    pos = end


def read_tensorboard(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Reads the scalars of every event file in `logdir` back.

  Files are read in the order they were started; a session-start event
  with a step (`purge_step`) drops what earlier files logged at that step
  or later, as TensorBoard does.

  Returns:
    {tag: [(step, value), ...]} in write order.
  """
  # pylint: disable-next=g-import-not-at-top
  from tensorboardX.proto import event_pb2
  files = []
  for path in glob.glob(os.path.join(logdir, "*tfevents*")):
    events = [event_pb2.Event.FromString(b) for b in _records(path)]
    if events:
      files.append((events[0].wall_time, path, events))
  scalars: dict[str, list[tuple[int, float]]] = {}
  for _, _, events in sorted(files):
    for ev in events:
      if (ev.HasField("session_log")
          and ev.session_log.status == ev.session_log.START):
        for tag in scalars:
          scalars[tag] = [(s, v) for s, v in scalars[tag] if s < ev.step]
      if ev.HasField("summary"):
        for v in ev.summary.value:
          if v.HasField("simple_value"):
            scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return scalars
