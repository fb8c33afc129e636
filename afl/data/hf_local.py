"""HuggingFace datasets from a local folder or the Hub, as image or text
datasets.

`data.name` may be a Hub id (`load_hub`: online, or from the HF cache with
HF_DATASETS_OFFLINE=1) or a folder holding, in this order of precedence,
  - what `Dataset.save_to_disk` or `DatasetDict.save_to_disk` wrote,
  - parquet, arrow, csv or jsonl files (one format; a file whose name
    starts with "train", "test", "validation" or "valid" belongs to that
    split, any other to train),
  - an `imagefolder` tree (class subfolders of images, optionally under
    train/ and test/ folders).
A folder is read with the `datasets` package, never contacting the Hub.
The splits are `train` and `data.test_split` ("test", else "validation");
when there is only one split, a seeded 10% of it is held out as test
(logged; `hf_images.pick_splits`). A dataset
with an image column (`data.hf_image_key`, or its one Image-typed column)
becomes an `ImageDataset` (images converted to arrays once, standardized
with train statistics); otherwise `data.text_key` names the text column,
tokenized once with the model's tokenizer into a `TextDataset`. Labels
(`data.hf_label_key`) are a ClassLabel or plain values (`hf_images.
label_ids`). A missing folder, column or split is a one-line error.
"""
import os
from typing import Callable

import numpy as np

from afl.data import hf_images
from afl.data import text as text_lib
from afl.data import tokens
from afl.data.image_dataset import make_image_dataset

_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv",
            ".jsonl": "json", ".json": "json"}
_SPLITS = ("train", "test", "validation", "valid")


def is_local(name: str) -> bool:
  """Whether `data.name` points at a folder (a path, not a Hub id)."""
  return os.path.isdir(os.path.expanduser(name))


def _split_of(filename: str) -> str:
  stem = filename.lower()
  return next((s for s in _SPLITS if stem.startswith(s)), "train")


def open_folder(path: str):
  """The folder's `datasets.DatasetDict` (module doc for the layouts)."""
  import datasets  # pylint: disable=import-outside-toplevel
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config.data.name: {path} is not a folder")
  files = sorted(os.listdir(path))
  saved = "dataset_dict.json" in files or "state.json" in files
  by_format = {}
  for f in files:
    fmt = _FORMATS.get(os.path.splitext(f)[1].lower())
    if fmt and os.path.isfile(os.path.join(path, f)):
      by_format.setdefault(fmt, {}).setdefault(_split_of(f), []).append(
          os.path.join(path, f))
  if len(by_format) > 1 and not saved:
    raise ValueError(f"{path}: files of several formats "
                     f"({', '.join(sorted(by_format))}); keep one")
  try:
    if saved:
      d = datasets.load_from_disk(path)
      return (d if isinstance(d, datasets.DatasetDict)
              else datasets.DatasetDict(train=d))
    if by_format:
      (fmt, data_files), = by_format.items()
      return datasets.load_dataset(fmt, data_files=data_files)
    if any(os.path.isdir(os.path.join(path, f)) for f in files):
      return datasets.load_dataset("imagefolder", data_dir=path)
  except Exception as e:  # datasets raises many kinds on unreadable files
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"{path}: cannot be read as a HuggingFace dataset: "
                     f"{type(e).__name__}: {first}") from None
  raise ValueError(f"{path}: no HuggingFace dataset here (expected what "
                   "save_to_disk writes, parquet/arrow/csv/jsonl files or "
                   "an imagefolder tree of class folders)")


def _has_images(split, image_key: str) -> bool:
  return image_key in split.column_names or any(
      type(f).__name__ == "Image" for f in split.features.values())


def load_folder(path: str, **kwargs):
  """A local HuggingFace dataset folder -> `ImageDataset` or `TextDataset`
  (`from_dataset_dict`'s keyword arguments)."""
  return from_dataset_dict(open_folder(path), path,
                           os.path.basename(os.path.normpath(path)),
                           f"huggingface folder {path}", **kwargs)


def load_hub(hf_id: str, *, allow_download: bool, **kwargs):
  """A HuggingFace Hub dataset id (online, or from the HF cache with
  HF_DATASETS_OFFLINE=1) -> `ImageDataset` or `TextDataset`; a dataset
  that cannot be had here is a one-line FileNotFoundError saying why."""
  try:
    dd = hf_images.open_hub(hf_id, allow_download=allow_download)
  except hf_images.Unavailable as e:
    raise FileNotFoundError(
        f"config.data.name: {hf_id!r} is not a folder, a built-in dataset "
        f"or a text corpus, and as a HuggingFace dataset id: {e}") from None
  return from_dataset_dict(dd, hf_id, hf_id.replace("/", "_"),
                           f"huggingface:{hf_id}", **kwargs)


def from_dataset_dict(dd, where: str, name: str, source: str, *,
                      image_key: str, text_key: str, label_key: str,
                      test_split: str, seed: int, max_length: int,
                      tokenizer: Callable[[], str | None],
                      train_limit: int = 0, test_limit: int = 0,
                      log: Callable[[str], None] = print):
  """A `datasets.DatasetDict` -> `ImageDataset` (when it has an image
  column) or `TextDataset`; `where` names it in errors, `tokenizer()` gives
  the tokenizer folder for text (None: the packaged MiniLM's), called only
  for text."""
  train, test = hf_images.pick_splits(where, dd, test_split, seed, log)
  if _has_images(train, image_key):
    *raw, num_classes = hf_images.image_arrays(where, train, test, image_key,
                                               label_key)
    ds = make_image_dataset(name, tuple(raw), num_classes, source,
                            train_limit=train_limit, test_limit=test_limit)
    log(f"data: {name} from {source}: {ds.num_train} train / "
        f"{ds.num_test} test, images {ds.image_shape}, {ds.num_classes} "
        "classes")
    return ds
  for split, what in ((train, "train"), (test, "test")):
    for key, config_key in ((text_key, "text_key"),
                            (label_key, "hf_label_key")):
      hf_images.check_column(f"{where} ({what} split)", split, key,
                             config_key)
  if train_limit:
    train = train.select(range(min(train_limit, len(train))))
  if test_limit:
    test = test.select(range(min(test_limit, len(test))))
  train_y, test_y, names = hf_images.label_ids(
      train.features.get(label_key), list(train[label_key]),
      list(test[label_key]))
  texts = [str(t) for t in list(train[text_key]) + list(test[text_key])]
  ids = tokens.tokenize(texts, tokenizer() or tokens.default_tokenizer_path(),
                        max_length)
  ds = text_lib.TextDataset(
      name=name, train_x=ids[:len(train_y)], train_y=train_y.astype(np.int32),
      test_x=ids[len(train_y):], test_y=test_y.astype(np.int32),
      num_classes=len(names), class_names=names, source=source,
      max_length=max_length)
  log(f"data: {name} from {source}: {ds.num_train} train / {ds.num_test} "
      f"test texts, {ds.num_classes} classes, max_length {max_length}")
  return ds
