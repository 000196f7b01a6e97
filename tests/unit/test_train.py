"""The train CLI's dataset handling and a short real run (tiny images, few steps)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from harness.helpers import PYTHON, ROOT
from harness.synthetic import PATTERNS, pattern_dataset
from training.train import DatasetError, find_splits


def test_classes_come_from_folders_and_the_split_is_stratified(tmp_path: Path) -> None:
    data = pattern_dataset(tmp_path / "d", 10, seed=0)
    splits = find_splits(data, val_fraction=0.2, seed=0)
    assert splits.classes == ["checker", "horizontal", "vertical"]
    assert len(splits.train) == 24 and len(splits.val) == 6
    assert sorted(s.target for s in splits.val) == [0, 0, 1, 1, 2, 2]
    assert not {s.path for s in splits.train} & {s.path for s in splits.val}
    assert find_splits(data, val_fraction=0.2, seed=0) == splits, "deterministic for a seed"


def test_train_and_val_folders_are_used_as_given(tmp_path: Path) -> None:
    pattern_dataset(tmp_path / "d" / "train", 4, seed=0, kinds=PATTERNS[:2], names=("a", "b"))
    pattern_dataset(tmp_path / "d" / "val", 2, seed=1, kinds=PATTERNS[:2], names=("a", "b"))
    splits = find_splits(tmp_path / "d", val_fraction=0.5, seed=0)
    assert splits.classes == ["a", "b"] and len(splits.train) == 8 and len(splits.val) == 4


@pytest.mark.parametrize(
    ("names", "message"),
    [(("only",), "at least 2"), (("a,b", "c"), "may not contain")],
)
def test_unusable_datasets_are_refused(tmp_path: Path, names: tuple[str, ...], message: str) -> None:
    pattern_dataset(tmp_path / "d", 2, seed=0, kinds=PATTERNS[: len(names)], names=names)
    with pytest.raises(DatasetError, match=message):
        find_splits(tmp_path / "d", val_fraction=0.2, seed=0)


def test_empty_class_is_named(tmp_path: Path) -> None:
    pattern_dataset(tmp_path / "d", 3, seed=0, kinds=PATTERNS[:1], names=("a",))
    (tmp_path / "d" / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        find_splits(tmp_path / "d", val_fraction=0.2, seed=0)


def test_cli_writes_a_checkpoint_the_exporter_takes(tmp_path: Path) -> None:
    data = pattern_dataset(tmp_path / "d", 6, seed=0, kinds=PATTERNS[:2], names=("a", "b"))
    out = tmp_path / "run"
    r = subprocess.run(  # noqa: PLW1510 - asserted below
        [PYTHON, "-m", "training.train", str(data), "--out", str(out), "--weights", "random", "--epochs", "1",
         "--batch-size", "4", "--workers", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "validation accuracy:" in r.stdout and "--version next" in r.stdout
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["classifier.3.weight"].shape[0] == 2
    assert (out / "labels.txt").read_text() == "a\nb\n"
    report = json.loads((out / "train.json").read_text())
    assert report["train_images"] == 8 and report["val_images"] == 4 and report["final_val_accuracy"] is not None
    exported = subprocess.run(  # noqa: PLW1510
        [PYTHON, "-m", "export", "mobilenet_v3_small", "--weights", str(out / "model.pt"), "--labels",
         str(out / "labels.txt"), "--repo", str(tmp_path / "repo")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "dims: [ 2 ]" in (tmp_path / "repo" / "mobilenet_v3_small" / "config.pbtxt").read_text()


def test_offline_pretrained_weights_fail_clearly(tmp_path: Path) -> None:
    data = pattern_dataset(tmp_path / "d", 2, seed=0, kinds=PATTERNS[:2], names=("a", "b"))
    env = {
        "TORCH_HOME": str(tmp_path / "torch"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    r = subprocess.run(  # noqa: PLW1510
        [PYTHON, "-m", "training.train", str(data), "--out", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip
    assert r.returncode == 1 and "--weights random" in r.stderr and "Traceback" not in r.stderr, r.stderr
