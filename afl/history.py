"""The metrics a run accumulates: counters, staleness, evaluation records.

`History` builds the records `metrics.jsonl` gets (one per evaluation) and
the summary; it is checkpointed through the `afl.state` protocol.
"""
from __future__ import annotations

import collections

import numpy as np


class History:

  def __init__(self, malicious: np.ndarray):
    self.malicious = malicious
    self.counters = collections.Counter()
    self.staleness_hist = collections.Counter()
    self.since_eval = collections.defaultdict(list)  # reset at evaluations
    self.records: list[dict] = []
    self.trust_snapshots: list[tuple[int, np.ndarray]] = []  # per eval

  def arrival(self, staleness: int, loss: float):
    self.counters["client_updates"] += 1
    self.staleness_hist[int(staleness)] += 1
    self.since_eval["staleness"].append(staleness)
    self.since_eval["train_loss"].append(float(loss))

  def cohort(self, size: int):
    self.counters["cohorts"] += 1
    self.counters["trained"] += size

  def record(self, base: dict, *extras: dict) -> dict:
    """One evaluation record: `base` (version, times, test metrics), the
    window's staleness and loss, the counters, then `extras`."""
    w, c = self.since_eval, self.counters
    rec = dict(
        base,
        mean_staleness=float(np.mean(w["staleness"])) if w["staleness"]
        else None,
        train_loss=float(np.mean(w["train_loss"])) if w["train_loss"]
        else None,
        client_updates=c["client_updates"], dropouts=c["dropouts"],
        stale_dropped=c["stale_dropped"], cohorts=c["cohorts"],
        mean_cohort_size=(c["trained"] / c["cohorts"] if c["cohorts"]
                          else None),
        non_finite_dropped=c["non_finite"])
    for extra in extras:
      rec.update(extra)
    self.since_eval.clear()
    self.records.append(rec)
    return rec

  def trust_metrics(self, version: int, trust) -> dict:
    """Quarantine counts and mean trust by group; snapshots the scores."""
    if trust is None:
      return {}
    score = np.asarray(trust.score)
    q = np.asarray(trust.quarantined)
    bad = self.malicious
    honest = ~bad
    self.trust_snapshots.append((version, score.copy()))
    return dict(num_quarantined=int(q.sum()),
                quarantined_malicious=int((q & bad).sum()),
                quarantined_honest=int((q & honest).sum()),
                quarantine_entries=self.counters["quarantine_entries"],
                quarantine_exits=self.counters["quarantine_exits"],
                mean_trust_honest=float(score[honest].mean())
                if honest.any() else None,
                mean_trust_malicious=float(score[bad].mean())
                if bad.any() else None)

  def summary(self, version: int, now: float, wall: float) -> dict:
    last = self.records[-1]
    hist, c = self.staleness_hist, self.counters
    total = sum(hist.values())
    return dict(
        final_test_accuracy=last["test_accuracy"],
        final_test_loss=last["test_loss"],
        best_test_accuracy=max(h["test_accuracy"] for h in self.records),
        num_server_versions=version,
        client_updates=c["client_updates"], dropouts=c["dropouts"],
        stale_dropped=c["stale_dropped"],
        mean_staleness=(sum(k * v for k, v in hist.items()) / total
                        if total else None),
        max_staleness=max(hist) if hist else None,
        virtual_time=now, wall_seconds=wall, cohorts=c["cohorts"],
        mean_cohort_size=last["mean_cohort_size"],
        non_finite_dropped=c["non_finite"],
        num_malicious=int(self.malicious.sum()),
        **{k: v for k, v in last.items() if k.startswith(
            ("quarantine", "num_quarantined", "mean_trust"))},
        **{k: v for k, v in last.items() if k == "attack_success_rate"})

  # The checkpoint protocol (afl.state).
  def state_dict(self):
    arrays = {}
    if self.trust_snapshots:
      arrays["trust"] = np.stack([t for _, t in self.trust_snapshots])
    host = dict(counters=dict(self.counters),
                staleness_hist={str(k): v
                                for k, v in self.staleness_hist.items()},
                since_eval={k: list(v) for k, v in self.since_eval.items()},
                records=self.records,
                trust_versions=[v for v, _ in self.trust_snapshots])
    return arrays, host

  def load_state_dict(self, arrays: dict, host: dict):
    self.counters = collections.Counter(host["counters"])
    self.staleness_hist = collections.Counter(
        {int(k): v for k, v in host["staleness_hist"].items()})
    self.since_eval = collections.defaultdict(list, host["since_eval"])
    self.records = host["records"]
    self.trust_snapshots = [
        (v, np.asarray(t)) for v, t in zip(host["trust_versions"],
                                           arrays.get("trust", []))]
