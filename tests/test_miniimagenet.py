"""Tests of datasets/miniimagenet.py on a tiny Mini-ImageNet generated in the Ravi & Larochelle layout.

    .venv/bin/python -m pytest -q tests/test_miniimagenet.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DataError, MissingDataError, load_pool
from datasets import archive, miniimagenet
from datasets.miniimagenet import load_miniimagenet

PARTS = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"], "test": ["n01930112", "n01981276"]}
PER_CLASS = 4


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("filename,label\n" + "".join(f"{f},{label}\n" for f, label in rows))


def make_tiny(root: Path) -> Path:
    """A few classes x a few random JPEGs of odd sizes, some greyscale, in the official layout."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for part, labels in PARTS.items():
        rows = []
        for label in reversed(labels):  # csv order is not label order
            for k in range(PER_CLASS):
                name = f"{label}{k + 1:08d}.jpg"
                h, w = rng.integers(60, 140, size=2)
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                img = Image.fromarray(pixels)
                (img.convert("L") if k == 0 else img).save(root / "images" / name, quality=90)
                rows.append((name, label))
        write_csv(root / f"{part}.csv", rows)
    return root


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_tiny(tmp_path / "mini")


def test_parts_shapes_dtype_and_class_order(tiny):
    for part, labels in PARTS.items():
        pool = load_miniimagenet("ravi", part, tiny)
        assert tuple(pool.images.shape) == (len(labels), PER_CLASS, 3, 84, 84)
        assert pool.images.dtype == torch.uint8 and pool.rotations == 1
    arrays = np.load(archive.cache_file(tiny, "miniimagenet-ravi-train-v1.npz"))
    assert arrays["labels"].tolist() == sorted(PARTS["train"])


def test_pixels_match_maml_preprocessing(tiny):
    pool = load_miniimagenet("ravi", "train", tiny)
    label = sorted(PARTS["train"])[1]
    for k in (0, 2):  # a greyscale and a colour file
        with Image.open(tiny / "images" / f"{label}{k + 1:08d}.jpg") as img:
            ref = np.asarray(img.convert("RGB").resize((84, 84), resample=Image.LANCZOS))
        np.testing.assert_array_equal(pool.images[1, k].permute(1, 2, 0).numpy(), ref)


def test_tasks_are_float_in_unit_range_and_equal_to_stored_bytes(tiny):
    pool = load_miniimagenet("ravi", "test", tiny)
    batch = pool.sample_batch(ways=2, shots=1, query=3, seed=0, indices=range(3))
    assert batch.support_x.dtype == torch.float32 and tuple(batch.support_x.shape) == (3, 2, 3, 84, 84)
    assert 0.0 <= batch.query_x.min() and batch.query_x.max() <= 1.0
    stored = pool.images.reshape(-1, 3, 84, 84).float() / 255
    for img in batch.support_x.reshape(-1, 3, 84, 84):
        assert (stored == img).all(dim=(1, 2, 3)).any()


def test_cache_is_reused_and_rebuilt_when_the_csv_changes(tiny, monkeypatch):
    first = load_miniimagenet("ravi", "val", tiny)
    real = miniimagenet.to_array
    monkeypatch.setattr(miniimagenet, "to_array", lambda path: pytest.fail("cache not reused"))
    assert torch.equal(load_miniimagenet("ravi", "val", tiny).images, first.images)
    write_csv(tiny / "val.csv", [(f"{PARTS['val'][0]}{k + 1:08d}.jpg", PARTS["val"][0]) for k in range(PER_CLASS)])
    monkeypatch.setattr(miniimagenet, "to_array", real)
    with pytest.warns(UserWarning, match="built from other inputs"):
        assert load_miniimagenet("ravi", "val", tiny).images.shape[0] == 1


def test_registry_uses_env_root(tiny, monkeypatch):
    monkeypatch.setenv("MINIIMAGENET_ROOT", str(tiny))
    assert load_pool("miniimagenet", "ravi", "val").num_classes == 2


def test_missing_root_names_layout_and_how_to_obtain(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIIMAGENET_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingDataError) as err:
        load_pool("miniimagenet", "ravi", "train")
    text = str(err.value)
    assert "data/miniimagenet/train.csv" in text and "images/<filename>.jpg" in text
    assert "cannot be downloaded" in text and "image-net.org" in text


def test_missing_image_is_named(tiny):
    victim = f"{PARTS['test'][1]}{3:08d}.jpg"
    (tiny / "images" / victim).unlink()
    with pytest.raises(MissingDataError, match=f"1 images listed in .*test.csv are missing .*first: {victim}"):
        load_miniimagenet("ravi", "test", tiny)


def test_damaged_image_is_named(tiny):
    victim = tiny / "images" / f"{PARTS['test'][0]}{2:08d}.jpg"
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"{victim.name}: not a readable image"):
        load_miniimagenet("ravi", "test", tiny)


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,class\nx.jpg,n1\n", "expected the header 'filename,label'"),
        ("filename,label\nx.jpg\n", "line 2: expected 'filename,label'"),
        ("filename,label\na.jpg,n1\nb.jpg,n1\nc.jpg,n2\n", r"different numbers of images \[1, 2\]"),
        ("filename,label\n", "no images listed"),
    ],
)
def test_bad_csv_is_a_clear_error(tiny, content, message):
    (tiny / "test.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        load_miniimagenet("ravi", "test", tiny)


def test_unknown_names(tiny):
    with pytest.raises(ValueError, match="valid splits: ravi"):
        load_pool("miniimagenet", "vinyals", "train", root=tiny)
    with pytest.raises(ValueError, match="valid parts: train, val, test"):
        load_pool("miniimagenet", "ravi", "trainval", root=tiny)
