"""The standardized image-classification dataset and how one is made.

`make_image_dataset` turns raw arrays from any source (afl.data.image_files,
afl.data.hf_images, or `synthetic_raw`) into an `ImageDataset`: float32 NHWC
images scaled to [0, 1], then standardized with the per-channel mean/std of
the (possibly limited) train split, which are stored on the result; int32
labels.
"""
import dataclasses

import numpy as np

from afl import aligned
from afl.data.splits import SplitDataset


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset(SplitDataset):
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
  source: str
  mean: np.ndarray = dataclasses.field(repr=False)
  std: np.ndarray = dataclasses.field(repr=False)

  def __post_init__(self):
    for split in ("train", "test"):
      x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
      if x.ndim != 4 or x.dtype != np.float32:
        raise ValueError(f"{self.name}: {split}_x must be float32 NHWC, got "
                         f"{x.dtype}{list(x.shape)}")
      self._check_labels(split, x, y)
    if self.train_x.shape[1:] != self.test_x.shape[1:]:
      raise ValueError(f"{self.name}: train and test image shapes differ: "
                       f"{self.train_x.shape[1:]} vs {self.test_x.shape[1:]}")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_x.shape[1:])


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
  if x.dtype == np.uint8:  # = x.astype(float32) * (1/255), bit for bit
    out = aligned.aligned_empty(x.shape)
    return np.multiply(x, np.float32(1.0 / 255.0), out=out, dtype=np.float32)
  return np.asarray(x, np.float32)


def make_image_dataset(name: str, raw, num_classes: int, source: str, *,
                       train_limit: int = 0,
                       test_limit: int = 0) -> ImageDataset:
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
  return make_image_dataset("synthetic", *synthetic_raw(
      num_train, num_test, shape, num_classes, seed, noise))


def synthetic_raw(num_train, num_test, shape=(8, 8, 1), num_classes=4,
                  seed=0, noise=0.3):
  """(raw arrays in [0, 1], num_classes, source) for `make_image_dataset`."""
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
    # protos[y] + noise * N(0, 1), computed in place and in row blocks (the
    # same float32 values; no full-size temporaries at millions of rows).
    x = rng.standard_normal((n,) + shape, np.float32,
                            out=aligned.aligned_empty((n,) + shape))
    x *= np.float32(noise)
    for lo in range(0, n, 65536):
      x[lo:lo + 65536] += protos[y[lo:lo + 65536]]
    return np.clip(x, 0.0, 1.0, out=x), y

  train_x, train_y = draw(num_train)
  test_x, test_y = draw(num_test)
  return ((train_x, train_y, test_x, test_y), num_classes,
          f"synthetic(seed={seed}, noise={noise})")
