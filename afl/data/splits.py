"""The train/test fields that every afl dataset has, in one base class.

`ImageDataset` (afl.data.image_dataset) and `TextDataset` (afl.data.text)
extend it with their own fields and checks, so the simulation handles both
alike.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class SplitDataset:
  """Train and test examples with int32 labels.

  Attributes:
    name: canonical dataset name.
    train_x: [N, ...] examples.
    train_y: int32 [N].
    test_x: [M, ...] examples.
    test_y: int32 [M].
    num_classes: number of classes.
  """
  name: str
  train_x: np.ndarray = dataclasses.field(repr=False)
  train_y: np.ndarray = dataclasses.field(repr=False)
  test_x: np.ndarray = dataclasses.field(repr=False)
  test_y: np.ndarray = dataclasses.field(repr=False)
  num_classes: int

  def _check_labels(self, split: str, x: np.ndarray, y: np.ndarray):
    """Raises unless `y` (the `split` labels of `x`) is int32 [len(x)]."""
    if y.shape != (x.shape[0],) or y.dtype != np.int32:
      raise ValueError(f"{self.name}: {split}_y must be int32 "
                       f"[{x.shape[0]}], got {y.dtype}{list(y.shape)}")

  @property
  def num_train(self) -> int:
    return self.train_x.shape[0]

  @property
  def num_test(self) -> int:
    return self.test_x.shape[0]
