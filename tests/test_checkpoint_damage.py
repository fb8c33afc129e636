"""Damaged checkpoints: resume falls back to the newest intact step and
ends with the same metrics as an uninterrupted run; none intact is one
line (afl/checkpoint.py)."""
import glob
import json
import os

import pytest

from afl import checkpoint
from afl.config import build_config
from afl.simulation import Simulation
from configs import tiny


def _cfg(versions):
  c = tiny.get_config()
  c.stop.max_versions = versions
  c.eval.every_versions = 2
  c.checkpoint.update(every_versions=2, max_to_keep=3)
  return build_config(c)


def _metrics(wd):
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k != "wall_time"}
            for l in f]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("straight"))
  Simulation(_cfg(12), wd, log=lambda m: None).run()
  return _metrics(wd)


def _truncate_data(step):
  files = sorted(glob.glob(os.path.join(step, "server", "**", "d", "*"),
                           recursive=True), key=os.path.getsize)
  with open(files[-1], "r+b") as f:
    f.truncate(os.path.getsize(files[-1]) // 2)


def _empty_metadata(step):
  open(os.path.join(step, "_CHECKPOINT_METADATA"), "w").close()


def _drop_manifest(step):
  os.remove(os.path.join(step, "server", "manifest.ocdbt"))


def _flip_bit(step):
  files = sorted(glob.glob(os.path.join(step, "server", "**", "d", "*"),
                           recursive=True), key=os.path.getsize)
  with open(files[-1], "r+b") as f:
    f.seek(os.path.getsize(files[-1]) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 1]))


def _drop_sums_and_truncate(step):  # orbax alone must notice
  os.remove(os.path.join(step, checkpoint.SUMS))
  _drop_manifest(step)


@pytest.mark.parametrize("damage", [_truncate_data, _empty_metadata,
                                    _drop_manifest, _flip_bit,
                                    _drop_sums_and_truncate])
def test_damaged_latest_falls_back(tmp_path, straight, damage):
  wd = str(tmp_path / "w")
  Simulation(_cfg(8), wd, log=lambda m: None).run()
  step8 = os.path.join(wd, "checkpoints", "8")
  damage(step8)
  logs = []
  Simulation(_cfg(12), wd, log=logs.append).run(resume=True)
  assert any(m.startswith(f"warning: checkpoint {step8} is damaged")
             for m in logs), logs
  assert "resumed from checkpoint at version 6" in logs
  assert os.path.isdir(os.path.join(wd, "checkpoints_damaged", "8"))
  assert _metrics(wd) == straight


def test_no_intact_checkpoint_is_one_line(tmp_path):
  wd = str(tmp_path / "w")
  Simulation(_cfg(4), wd, log=lambda m: None).run()
  for step in glob.glob(os.path.join(wd, "checkpoints", "*")):
    _empty_metadata(step)
  before = sorted(os.listdir(os.path.join(wd, "checkpoints")))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"no intact checkpoint in .*checkpoints: step 4: "
                     r"_CHECKPOINT_METADATA does not match its checksum; "
                     r"step 2: .*; start again with --overwrite$"):
    Simulation(_cfg(8), wd, log=lambda m: None).run(resume=True)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == before
