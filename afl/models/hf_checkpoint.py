"""Finding and reading HuggingFace checkpoint files (config.json +
model.safetensors, or a sharded safetensors index).

A checkpoint is a local folder or a hub id. Only numpy + safetensors are
needed at run time; `huggingface_hub` is used, when installed, to find a hub
id in the local HF cache (offline-safe), and to download it only when asked
(`download=True`).
"""
import json
import os
import pathlib
from typing import Optional

from safetensors.numpy import load_file

# What to suggest when a checkpoint is not found.
DEFAULT_IDS = {
    "bert": "sentence-transformers/all-MiniLM-L6-v2",
    "vit": "google/vit-base-patch16-224",
}


def _not_found(model_type: str, where) -> FileNotFoundError:
  return FileNotFoundError(
      f"{model_type} checkpoint: no config.json/model.safetensors under "
      f"{where}; download {DEFAULT_IDS.get(model_type, 'a checkpoint')} to "
      "the HF cache or pass a local folder")


def _has_weights(d: pathlib.Path) -> bool:
  return ((d / "model.safetensors").is_file()
          or (d / "model.safetensors.index.json").is_file())


def _from_hf_cache(repo_id: str) -> Optional[pathlib.Path]:
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    hit = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
  except Exception:  # pylint: disable=broad-except
    # A malformed id is "not in the cache", not a crash: the caller reports
    # one FileNotFoundError for every way of not finding the checkpoint.
    return None
  if isinstance(hit, str):
    d = pathlib.Path(hit).parent
    if _has_weights(d):
      return d
  return None


def resolve_checkpoint(path_or_id, model_type: str = "bert",
                       download: bool = False) -> pathlib.Path:
  """The local folder holding config.json and model.safetensors.

  Args:
    path_or_id: a local folder, or a hub id such as
      'sentence-transformers/all-MiniLM-L6-v2' looked up in the HF cache.
    model_type: only for the error message.
    download: fetch a hub id that is not cached (needs network and
      huggingface_hub); off by default so runs and tests stay offline.

  Raises:
    FileNotFoundError: one line naming the place looked at and what to do.
  """
  p = pathlib.Path(os.path.expanduser(str(path_or_id)))
  if p.is_dir():
    if (p / "config.json").is_file() and _has_weights(p):
      return p
    raise _not_found(model_type, p)
  if p.exists():
    raise _not_found(model_type, p)
  repo_id = str(path_or_id)
  hit = _from_hf_cache(repo_id)
  if hit is not None:
    return hit
  if download:
    try:
      import huggingface_hub  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise _not_found(model_type, f"{repo_id} (huggingface_hub is not "
                       "installed, cannot download)") from e
    d = pathlib.Path(huggingface_hub.snapshot_download(
        repo_id, allow_patterns=["config.json", "model.safetensors",
                                 "model.safetensors.index.json",
                                 "model-*.safetensors"]))
    if (d / "config.json").is_file() and _has_weights(d):
      return d
  raise _not_found(model_type, f"{path_or_id} (not a folder, not in the HF "
                   "cache)")


def read_safetensors(folder) -> dict:
  """{name: np.ndarray} from model.safetensors or a sharded index."""
  folder = pathlib.Path(folder)
  index = folder / "model.safetensors.index.json"
  if index.is_file() and not (folder / "model.safetensors").is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    out = {}
    for s in shards:
      out.update(load_file(str(folder / s)))
    return out
  # bfloat16/float16 checkpoints load too (numpy dtypes via ml_dtypes); the
  # mapping casts every weight to float32.
  return load_file(str(folder / "model.safetensors"))
