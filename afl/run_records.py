"""The records a run writes (config.json, summary.json, metrics.jsonl,
malicious.json): reading them back, and telling which values are numbers."""
from __future__ import annotations

import json
import numbers


def read_json(path: str):
  """The JSON in `path`, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file ([] when it is missing or unreadable);
  lines that do not parse are skipped."""
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


def is_number(x) -> bool:
  """Whether a record value is a number (a bool is not)."""
  return isinstance(x, numbers.Number) and not isinstance(x, bool)
