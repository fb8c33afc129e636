"""An explicit data.dir is used or refused (never silently replaced), and
damaged copies of the real Fashion-MNIST files fail with one line naming
the file (afl/data/loaders.py, afl/data/image_files.py)."""
import gzip
import os
import shutil

import numpy as np
import pytest

from afl.data import image_files
from afl.data import loaders as L

DEBIAN = L.DEBIAN_FASHION_MNIST_DIR
pytestmark = pytest.mark.skipif(
    image_files.find_idx_files(DEBIAN) is None,
    reason="Debian dataset-fashion-mnist not installed")
_quiet = lambda m: None
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _copy(tmp, skip=()):
  for stem in STEMS:
    if stem not in skip:
      shutil.copy(os.path.join(DEBIAN, stem + ".gz"), tmp)
  return str(tmp)


def _load(d):
  return L.load_image_dataset("fashion_mnist", d, allow_download=False,
                              log=_quiet)


def _one_line(err):
  msg = str(err.value)
  assert "\n" not in msg
  return msg


def test_empty_data_dir_is_refused_not_replaced(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    _load(str(tmp_path))
  msg = _one_line(e)
  assert msg.startswith(f"config.data.dir: {tmp_path} lacks the "
                        "fashion_mnist IDX file(s) train-images-idx3-ubyte")
  assert "clear data.dir" in msg


def test_three_of_four_files_names_the_missing_one(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    _load(_copy(tmp_path, skip=("t10k-labels-idx1-ubyte",)))
  msg = _one_line(e)
  assert "lacks the fashion_mnist IDX file(s) t10k-labels-idx1-ubyte[.gz] " \
      in msg and "train-images" not in msg


def test_data_dir_that_is_not_a_folder(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(FileNotFoundError,
                     match=r"config.data.dir: .*/f is not a folder"):
    _load(str(tmp_path / "f"))


def test_a_complete_copy_loads_from_data_dir(tmp_path):
  logs = []
  ds = L.load_image_dataset("fashion_mnist", _copy(tmp_path),
                            allow_download=False, log=logs.append)
  assert ds.num_train == 60000 and ds.source == str(tmp_path)


def _damage_truncate(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])


def _damage_bitflip(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


def _damage_header(path):  # plain file whose header declares more rows
  raw = bytearray(gzip.decompress(open(path, "rb").read()))
  raw[7] += 1  # low byte of the first dimension
  os.remove(path)
  open(path[:-3], "wb").write(bytes(raw))


def _damage_bad_magic(path):
  raw = bytearray(gzip.decompress(open(path, "rb").read()))
  raw[2] = 0x42
  open(path, "wb").write(gzip.compress(bytes(raw), compresslevel=1))


@pytest.mark.parametrize("stem", ["train-images-idx3-ubyte",
                                  "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize("damage,match", [
    (_damage_truncate, "corrupt gzip stream"),
    (_damage_bitflip, "corrupt gzip stream"),
    (_damage_header, "IDX header declares shape"),
    (_damage_bad_magic, "not an IDX file"),
])
def test_damaged_real_file_names_it(tmp_path, stem, damage, match):
  d = _copy(tmp_path)
  damage(os.path.join(d, stem + ".gz"))
  with pytest.raises(ValueError) as e:
    _load(d)
  msg = _one_line(e)
  assert stem in msg and match in msg, msg


def test_mismatched_counts_name_both_files(tmp_path):
  d = _copy(tmp_path)
  # The test labels (10,000) in place of the train labels (60,000).
  shutil.copy(os.path.join(DEBIAN, "t10k-labels-idx1-ubyte.gz"),
              os.path.join(d, "train-labels-idx1-ubyte.gz"))
  with pytest.raises(ValueError) as e:
    _load(d)
  msg = _one_line(e)
  assert "train-images-idx3-ubyte.gz has shape (60000, 28, 28)" in msg
  assert "train-labels-idx1-ubyte.gz has shape (10000,)" in msg


def test_labels_out_of_range_name_the_file(tmp_path):
  d = _copy(tmp_path)
  path = os.path.join(d, "t10k-labels-idx1-ubyte.gz")
  raw = bytearray(gzip.decompress(open(path, "rb").read()))
  raw[8 + 123] = 12
  open(path, "wb").write(gzip.compress(bytes(raw), compresslevel=1))
  with pytest.raises(ValueError) as e:
    _load(d)
  msg = _one_line(e)
  assert msg == f"{path}: labels must be in [0, 10), found 0..12"
  assert np.frombuffer(raw, np.uint8, offset=8).max() == 12


def test_front_door_damaged_file_is_one_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  d = _copy(tmp_path)
  _damage_bitflip(os.path.join(d, "train-images-idx3-ubyte.gz"))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "launch.py", "--config",
                      "configs/fmnist_hybrid.py", f"--config.data.dir={d}"],
                     cwd=root, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: data: ") and "train-images" in last, last
  assert "Traceback" not in r.stderr
