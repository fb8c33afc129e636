"""One-line explanations of command-line flag errors (config overrides)."""
from __future__ import annotations

import importlib.util
import os

from afl import checkpoint
from afl import divergence
from afl import interrupt
from afl import workdir
from afl.validate import ConfigError


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location("_afl_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# Exit codes of launch.py and the experiments command (README, "Errors").
EXIT_CONFIG = 2  # a bad config, flag, experiment spec or data input
EXIT_WORKDIR = 3  # a workdir that cannot be used, or a failed write into it
EXIT_DIVERGED = 4  # the global model diverged (afl.divergence)
EXIT_CHECKPOINT = 5  # --resume found no intact checkpoint
EXIT_OUT_OF_MEMORY = 6  # the host or an accelerator ran out of memory
EXIT_INTERRUPTED = 130  # Ctrl-C (afl.interrupt), as shells report SIGINT


class FlagError(ValueError):
  pass


# Expected failures and their exit codes, in order: a WorkdirError is an
# OSError, so it comes before anything broader.
_EXPECTED = ((workdir.WorkdirError, EXIT_WORKDIR),
             (checkpoint.CheckpointError, EXIT_CHECKPOINT),
             (divergence.Diverged, EXIT_DIVERGED),
             (interrupt.Interrupted, EXIT_INTERRUPTED),
             ((ConfigError, FileNotFoundError), EXIT_CONFIG))


def expected_failure(err: BaseException) -> tuple[int, str] | None:
  """(exit code, one line) for an expected failure of a run or sweep, else
  None: an unexpected error keeps its traceback."""
  for kinds, code in _EXPECTED:
    if isinstance(err, kinds):
      return code, f"error: {err}"
  oom = out_of_memory(err)
  return None if oom is None else (EXIT_OUT_OF_MEMORY, f"error: {oom}")


def out_of_memory(err: BaseException) -> str | None:
  """A one-line explanation when `err` is an out-of-memory failure (numpy's
  MemoryError, XLA's RESOURCE_EXHAUSTED or "Out of memory"), else None."""
  text = str(err)
  if not (isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in text
          or "Out of memory" in text):
    return None
  first = next((ln.strip() for ln in text.splitlines()
                if "memory" in ln.lower() or "RESOURCE_EXHAUSTED" in ln),
               type(err).__name__)
  return (f"out of memory: {first[:300]}; use a smaller model, "
          "concurrency, client.vmap_chunk or eval.batch_size")


def _split_args(argv):
  cfg_path = None
  overrides = []
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith("--config="):
      cfg_path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      cfg_path = argv[i + 1]
    elif arg.startswith("--config."):
      overrides.append(arg[len("--config."):].split("=", 1)[0])
  return cfg_path, overrides


def check_config_path(argv: list[str]):
  """Fails early (before absl prints a traceback) on a missing config file."""
  cfg_path, _ = _split_args(argv)
  path = cfg_path.split(":")[0] if cfg_path else None
  if path and not os.path.exists(path):
    raise FlagError(f"--config: no such file {cfg_path}")
  if path and os.path.isdir(path):
    raise FlagError(f"--config: {path} is a folder, not a config file")


def explain_flag_error(argv: list[str], err: Exception) -> str:
  """Names the offending `--config.a.b=v` override when one is unknown."""
  if isinstance(err, FlagError):
    return str(err)
  cfg_path, overrides = _split_args(argv)
  if cfg_path:
    try:
      cfg = _load_config(cfg_path.split(":")[0])
    except Exception as e:  # pylint: disable=broad-except
      # The file itself fails: that, not the overrides, is the error.
      first = (str(e).strip().splitlines() or [""])[0]
      return (f"--config: {cfg_path} failed to load: {type(e).__name__}"
              + (f": {first}" if first else ""))
    for key in overrides:
      node = cfg
      for part in key.split("."):
        if node is None or not hasattr(node, "keys") or part not in node:
          return f"config.{key}: unknown key (in override --config.{key})"
        node = node[part]
  msg = str(err).strip().splitlines()
  return msg[0] if msg else type(err).__name__
