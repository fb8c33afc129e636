"""PNG plots of a run: accuracy against virtual time and version, staleness."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def write_run_plots(workdir: str, history: list, staleness_hist: dict):
  """Writes accuracy.png and staleness.png into `workdir`."""
  vt = [h["virtual_time"] for h in history]
  ver = [h["version"] for h in history]
  acc = [h["test_accuracy"] for h in history]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  axes[0].plot(vt, acc, marker=".")
  axes[0].set_xlabel("virtual time")
  axes[1].plot(ver, acc, marker=".")
  axes[1].set_xlabel("server version")
  for ax in axes:
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "accuracy.png"), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 3.8))
  if staleness_hist:
    keys = sorted(staleness_hist)
    ax.bar(keys, [staleness_hist[k] for k in keys], width=0.9)
  ax.set_xlabel("staleness (versions)")
  ax.set_ylabel("updates")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "staleness.png"), dpi=110)
  plt.close(fig)


def trust_plot(path: str, versions, scores, malicious, max_lines: int = 200):
  """Trust trajectories, red for malicious clients, blue for honest ones."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.8))
  n = scores.shape[1]
  # Malicious clients first so that all of them are drawn when capped.
  order = np.concatenate([np.flatnonzero(malicious),
                          np.flatnonzero(~np.asarray(malicious))])[:max_lines]
  for c in order:
    ax.plot(versions, scores[:, c], color="tab:red" if malicious[c]
            else "tab:blue", alpha=0.6, lw=1)
  ax.plot([], [], color="tab:red", label="malicious")
  ax.plot([], [], color="tab:blue", label="honest")
  ax.set_xlabel("server version")
  ax.set_ylabel("trust")
  ax.set_ylim(-0.02, 1.02)
  ax.legend(loc="lower left")
  ax.set_title(f"trust of {min(n, max_lines)} of {n} clients")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
