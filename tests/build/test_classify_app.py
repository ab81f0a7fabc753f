"""The pytorch target's worker, run natively on CPU with small models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

APP = Path(__file__).resolve().parents[2] / "dockerfiles" / "pytorch" / "app" / "classify.py"


@pytest.fixture(scope="module")
def classify() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classify", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_weights(classify: ModuleType, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(classify.TinyNet().eval()), str(path))
    return path


def make_images(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8")).save(
            directory / f"img{i:02d}.jpg")


def test_slices_cover_everything_once(classify: ModuleType) -> None:
    items = list(range(10))
    parts = [classify.my_slice(items, i, 3) for i in range(3)]
    assert [x for part in parts for x in part] == items
    assert [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(classify.WorkerError):
        classify.my_slice(items, 3, 3)


def test_worker_takes_its_slice_and_skips_corrupt(
    classify: ModuleType, tiny_weights: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "nfs"
    make_images(images, 8)
    (images / "img03.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setenv("TOTAL_JOBS", "2")
    code = classify.main(["--images", str(images), "--weights", str(tiny_weights),
                          "--output", str(out), "--device", "cpu", "--batch-size", "3"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "worker-0.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == ["img00.jpg", "img01.jpg", "img02.jpg"]
    assert all(0 <= r["class"] < 10 and 0 < r["score"] <= 1 for r in rows)
    err = capsys.readouterr().err
    assert "worker 0/2: 3 images" in err and "1 skipped" in err and "images/s on cpu" in err


def test_synthetic_images_without_a_directory(
    classify: ModuleType, tiny_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    code = classify.main(["--weights", str(tiny_weights), "--synthetic", "5", "--output",
                          str(out), "--device", "cpu"])
    assert code == 0
    assert len(out.read_text().splitlines()) == 5


def test_resnet50_state_dict_loads(classify: ModuleType, tmp_path: Path) -> None:
    model = classify.ResNet50(num_classes=7)
    path = tmp_path / "resnet50.pth"
    torch.save(model.state_dict(), str(path))
    loaded = classify.load_model(str(path), torch.device("cpu"))
    assert not loaded.training
    with torch.no_grad():
        assert loaded(torch.zeros(1, 3, 224, 224)).shape == (1, 7)
    names = set(model.state_dict())
    assert {"conv1.weight", "layer4.2.bn3.running_var", "fc.bias"} <= names


def test_missing_or_wrong_weights_are_clear_errors(
    classify: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert classify.main(["--weights", str(tmp_path / "nope.pt"), "--device", "cpu"]) == 2
    assert "weights file" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(2)}, str(wrong))
    assert classify.main(["--weights", str(wrong), "--device", "cpu"]) == 2
    assert "does not hold ResNet-50 weights" in capsys.readouterr().err


def test_self_test_passes(classify: ModuleType) -> None:
    classify.self_test()
