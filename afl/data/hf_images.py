"""HuggingFace datasets: the Hub, splits, images as raw arrays, labels.

`open_hub` reads any dataset id with the `datasets` package, imported only
when called; `pick_splits` chooses train and test; `load_hf` turns an
image-classification dataset into arrays. `open_hub` and `load_hf` raise
`Unavailable` (not an error: the caller tries its next source) when the data
cannot be had on this machine: downloads disabled, `datasets` missing, the
Hub unreachable, or `load_dataset` failing. Malformed data raises ValueError.
"""
import io
import os
import socket
import threading
from typing import Callable
from urllib.parse import urlparse

import numpy as np


class Unavailable(Exception):
  """A source that does not have the data here; the next one is tried."""


def _env_flag(name: str) -> bool:
  return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_offline() -> bool:
  return _env_flag("HF_DATASETS_OFFLINE") or _env_flag("HF_HUB_OFFLINE")


def _hf_reachable(timeout: float = 3.0) -> bool:
  """Whether the Hub answers a TCP connect within `timeout` seconds.

  Probed first because `load_dataset` retries for minutes on a network that
  drops packets. DNS lookups ignore socket timeouts, so the probe runs in a
  daemon thread that is simply abandoned if it overruns.
  """
  url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
  host = url.hostname or "huggingface.co"
  port = url.port or (80 if url.scheme == "http" else 443)
  ok = []

  def probe():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      ok.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout + 1.0)
  return bool(ok)


def _pil_open(d: dict):
  """Decodes an undecoded Image feature ({"bytes", "path"})."""
  from PIL import Image  # PIL comes with `datasets`.
  return Image.open(io.BytesIO(d["bytes"]) if d.get("bytes") else d["path"])


def _image_mode(img) -> str:
  """'L' for a grayscale-like image, else 'RGB' (alpha is dropped)."""
  if isinstance(img, dict):
    img = _pil_open(img)
  mode = getattr(img, "mode", None)
  if mode is None:
    arr = np.asarray(img)
    return "L" if arr.ndim == 2 or arr.shape[-1] == 1 else "RGB"
  return "L" if mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"


def _pil_to_array(img, mode: str) -> np.ndarray:
  """HWC uint8 array of a PIL image (converted to `mode`) or an array."""
  if isinstance(img, dict):
    img = _pil_open(img)
  if hasattr(img, "convert"):
    arr = np.asarray(img.convert(mode), np.uint8)
  else:
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
      arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _hf_split_arrays(hf_id: str, split, image_key: str, label_key: str):
  n = len(split)
  if n == 0:
    raise ValueError(f"{hf_id}: a split is empty")
  images = iter(split[image_key])
  first = next(images)
  mode = _image_mode(first)
  arr0 = _pil_to_array(first, mode)
  x = np.empty((n,) + arr0.shape, np.uint8)
  x[0] = arr0
  for i, img in enumerate(images, start=1):
    arr = _pil_to_array(img, mode)
    if arr.shape != arr0.shape:
      raise ValueError(f"{hf_id}: image {i} has shape {arr.shape}, image 0 "
                       f"{arr0.shape}; only fixed-size images are supported")
    x[i] = arr
  return x, list(split[label_key])


def _pick_image_key(hf_id: str, split, image_key: str) -> str:
  if image_key in split.column_names:
    return image_key
  # Datasets disagree on the column name (cifar10 uses "img"); a single
  # Image-typed column is unambiguous.
  image_cols = [c for c, f in split.features.items()
                if type(f).__name__ == "Image"]
  if len(image_cols) == 1:
    return image_cols[0]
  raise ValueError(f"{hf_id}: no image column {image_key!r}; columns are "
                   f"{split.column_names} (set hf_image_key)")


def open_hub(hf_id: str, *, allow_download: bool):
  """`datasets.load_dataset(hf_id)` (a DatasetDict); raises Unavailable when
  it cannot be had here."""
  offline = _hf_offline()
  if not allow_download and not offline:
    # Without the offline flags `datasets` would contact the Hub.
    raise Unavailable("downloads are disabled (allow_download=False; set "
                      "HF_DATASETS_OFFLINE=1 to use the local HF cache)")
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise Unavailable("the HuggingFace `datasets` package is not installed "
                      "(pip install datasets)") from None
  if not offline and not _hf_reachable():
    raise Unavailable("the HuggingFace Hub is unreachable (offline?)")
  try:
    return datasets.load_dataset(hf_id)
  except Exception as e:  # Network, auth and missing-cache errors vary.
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise Unavailable(f"load_dataset({hf_id!r}) failed: "
                      f"{type(e).__name__}: {first}") from None


HELD_OUT = 0.1
_TEST_NAMES = ("validation", "valid")


def pick_splits(name: str, dd, test_split: str, seed: int,
                log: Callable[[str], None]):
  """(train, test) splits of a DatasetDict `dd`: `train` and `test_split`;
  for the default "test" also "validation" or "valid" (logged); when `dd`
  has one split, a seeded `HELD_OUT` share of it (logged)."""
  splits = list(dd)
  if len(splits) == 1:
    only = dd[splits[0]]
    if len(only) < 2:
      raise ValueError(f"{name}: its one split {splits[0]!r} has "
                       f"{len(only)} example(s); nothing to hold out")
    log(f"data: {name} has one split ({splits[0]!r}); holding out a seeded "
        f"{HELD_OUT:.0%} of it as test (seed {seed})")
    cut = only.train_test_split(test_size=HELD_OUT, seed=seed)
    return cut["train"], cut["test"]
  if "train" not in dd:
    raise ValueError(f"{name}: no 'train' split; splits are {splits}")
  if test_split not in dd and test_split == "test":
    other = next((s for s in _TEST_NAMES if s in dd), None)
    if other is not None:
      log(f"data: {name} has no 'test' split; testing on {other!r}")
      test_split = other
  if test_split not in dd:
    raise ValueError(f"{name}: no split {test_split!r}; splits are {splits} "
                     "(set data.test_split)")
  return dd["train"], dd[test_split]


def load_hf(hf_id: str, *, image_key: str, label_key: str,
            allow_download: bool, log: Callable[[str], None]):
  """An image dataset from the Hub -> `image_arrays`' tuple; raises
  Unavailable when it cannot be had here. Without a test split, a 10%
  hold-out seeded with 0, the same in every run."""
  dd = open_hub(hf_id, allow_download=allow_download)
  train, test = pick_splits(hf_id, dd, "test", 0, log)
  return image_arrays(hf_id, train, test, image_key, label_key)


def image_arrays(name: str, train, test, image_key: str, label_key: str):
  """Two `datasets.Dataset` splits -> (train_x, train_y, test_x, test_y,
  num_classes), images as uint8 NHWC (`image_key`: the column, or the one
  Image-typed column)."""
  check_column(name, train, label_key, "hf_label_key")
  image_key = _pick_image_key(name, train, image_key)
  for split, what in ((train, "train"), (test, "test")):
    check_column(f"{name} ({what} split)", split, image_key, "hf_image_key")
    check_column(f"{name} ({what} split)", split, label_key, "hf_label_key")
  train_x, train_y = _hf_split_arrays(name, train, image_key, label_key)
  test_x, test_y = _hf_split_arrays(name, test, image_key, label_key)
  train_y, test_y, names = label_ids(train.features.get(label_key), train_y,
                                     test_y)
  return train_x, train_y, test_x, test_y, len(names)


def check_column(name: str, split, key: str, config_key: str):
  if key not in split.column_names:
    raise ValueError(f"{name}: no column {key!r}; columns are "
                     f"{split.column_names} (set data.{config_key})")


def label_ids(feature, train_y, test_y):
  """Label values -> (int64 train ids, int64 test ids, class names).

  A ClassLabel feature keeps its ids and names; plain integers are kept
  (names "0" .. str(max)); anything else is numbered in sorted order, so
  that the mapping is the same in every run.
  """
  names = getattr(feature, "names", None)
  if names:
    return (np.asarray(train_y, np.int64), np.asarray(test_y, np.int64),
            tuple(names))
  values = sorted(set(train_y) | set(test_y))
  if all(isinstance(v, (int, np.integer)) for v in values):
    if values and min(values) < 0:
      raise ValueError(f"labels must be >= 0, got {min(values)}")
    top = int(max(values)) + 1 if values else 0
    return (np.asarray(train_y, np.int64), np.asarray(test_y, np.int64),
            tuple(str(i) for i in range(top)))
  index = {v: i for i, v in enumerate(values)}
  return (np.asarray([index[v] for v in train_y], np.int64),
          np.asarray([index[v] for v in test_y], np.int64),
          tuple(str(v) for v in values))
