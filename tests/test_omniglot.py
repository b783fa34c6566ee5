"""Tests of datasets/omniglot.py: splits, preprocessing against the reference codes, cache, bad input.

Uses the two official "background small" zips ($OMNIGLOT_ROOT); zips for the
failure cases and the 1623-character paper split are built in tmp_path.

    OMNIGLOT_ROOT=../shared/data/omniglot .venv/bin/python -m pytest -q tests/test_omniglot.py
"""
from __future__ import annotations

import hashlib
import io
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DataError, MissingDataError, load_pool
from datasets import omniglot
from datasets.omniglot import CHECKSUMS, load_arrays, load_omniglot, paper_split

SMALL1, SMALL2 = "images_background_small1.zip", "images_background_small2.zip"


def png(pixels: np.ndarray, mode: str = "1") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def fake_zip(path: Path, characters: dict[str, int], drawings: int = 2, data: bytes | None = None) -> str:
    """An Omniglot-shaped zip: {"Alphabet/characterNN": n} -> top/Alphabet/characterNN/<k>.png. Returns its md5."""
    data = data if data is not None else png(np.eye(8, dtype=bool))
    with zipfile.ZipFile(path, "w") as zf:
        for char in characters:
            for k in range(drawings):
                zf.writestr(f"{path.stem}/{char}/{k:04d}_{k:02d}.png", data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def copy_small(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in (SMALL1, SMALL2):
        shutil.copy(src / n, dest / n)
    return dest


# ---- the small split on the official zips -------------------------------------------------------

def test_small_split_sizes_and_alphabets(small_omniglot):
    train, test = small_omniglot.train, small_omniglot.test
    assert tuple(train.images.shape) == (136, 20, 1, 28, 28) and train.rotations == 4 and train.num_classes == 544
    assert tuple(test.images.shape) == (106, 20, 1, 28, 28) and test.rotations == 1 and test.num_classes == 106
    for pool in (train, test):
        assert pool.images.dtype == torch.float32
        assert set(pool.images.unique().tolist()) == {0.0, 1.0}  # binary, as in both reference codes


def test_small_split_parts_follow_the_documented_alphabets(omniglot_root, small_omniglot):
    arrays = load_arrays("small", omniglot_root, download=False, cache_dir=small_omniglot.cache_dir)
    alphabets = lambda names: sorted({n.split("/")[0] for n in names})
    assert alphabets(arrays["train_names"]) == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert alphabets(arrays["test_names"]) == ["Japanese_(katakana)", "Sanskrit", "Tagalog"]


def test_preprocessing_matches_both_reference_codes(omniglot_root, small_omniglot):
    # First character of the sorted train part, first drawing by file name.
    with zipfile.ZipFile(omniglot_root / SMALL1) as zf:
        first = sorted(n for n in zf.namelist() if n.startswith("images_background_small1/Balinese/character01/") and n.endswith(".png"))[0]
        raw = zf.read(first)
    img = Image.open(io.BytesIO(raw))
    reptile = np.array(img.resize((28, 28))).astype("float32")  # supervised-reptile/omniglot.py
    maml = np.array(img.resize((28, 28), resample=Image.LANCZOS)).astype("float32")  # MAML resize_images.py, before its inversion
    ours = small_omniglot.train.images[0, 0, 0].numpy()
    np.testing.assert_array_equal(ours, reptile)
    np.testing.assert_array_equal(ours, maml)
    assert 0.7 < ours.mean() < 1.0  # background is 1, strokes 0 (not inverted)


def test_warm_load_reads_the_cache_and_is_equal(omniglot_root, small_omniglot, monkeypatch):
    def no_rebuild(*args, **kwargs):
        raise AssertionError("the warm load decoded the zips again instead of reading its cache")

    monkeypatch.setattr(omniglot, "build_split", no_rebuild)
    train = load_omniglot("small", "train", omniglot_root, download=False, cache_dir=small_omniglot.cache_dir)
    test = load_omniglot("small", "test", omniglot_root, download=False, cache_dir=small_omniglot.cache_dir)
    assert torch.equal(train.images, small_omniglot.train.images) and torch.equal(test.images, small_omniglot.test.images)


def test_registry_reads_root_from_env_and_cache_records_checksums(omniglot_root, monkeypatch, hermetic_cache):
    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    pool = load_pool("omniglot", "small", "test")
    assert pool.num_classes == 106
    cache = omniglot.archive.cache_file(omniglot_root, "omniglot-small-v1.npz")
    assert cache.parent == hermetic_cache  # the cache folder, whatever the data folder's permissions
    assert cache.is_file()
    assert not any(p.suffix == ".npz" for p in omniglot_root.iterdir())  # nothing written beside the zips
    with np.load(cache) as npz:
        meta = str(npz["_meta"])
    assert CHECKSUMS[SMALL1] in meta and CHECKSUMS[SMALL2] in meta


def test_cache_is_never_written_beside_writable_data_and_is_rebuilt_when_corrupted(omniglot_root, tmp_path):
    root = copy_small(omniglot_root, tmp_path / "omni")
    first = load_omniglot("small", "test", root, download=False)
    assert sorted(p.name for p in root.iterdir()) == [SMALL1, SMALL2]  # a writable data folder is left alone too
    cache = omniglot.archive.cache_file(root, "omniglot-small-v1.npz")
    assert cache.is_file() and cache.stat().st_size < 1_000_000
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        again = load_omniglot("small", "test", root, download=False)
    assert torch.equal(first.images, again.images)
    with np.load(cache) as npz:  # the rebuilt cache is whole again
        assert npz["test"].shape == (106, 20, 1, 28, 28)


def test_interrupted_build_leaves_no_cache(omniglot_root, tmp_path, monkeypatch):
    root = copy_small(omniglot_root, tmp_path / "omni")

    def interrupted(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_omniglot("small", "train", root, download=False)
    assert sorted(p.name for p in root.iterdir()) == [SMALL1, SMALL2]
    cache = omniglot.archive.cache_file(root, "omniglot-small-v1.npz")
    assert not cache.exists() and not list(cache.parent.glob(f".{cache.name}.*"))  # no partial cache, no temp file


# ---- the paper split ----------------------------------------------------------------------------

def test_paper_split_is_a_fixed_function_of_the_names():
    names = [f"A{a:02d}/character{c:02d}" for a in range(50) for c in range(1, 34)][:1623]
    random.seed(123)  # the global RNG must not matter
    train, test = paper_split(list(reversed(names)))
    assert len(train) == 1200 and len(test) == 423 and not set(train) & set(test)
    expected = sorted(names)
    random.Random(0).shuffle(expected)
    assert train + test == expected
    assert paper_split(names) == (train, test)
    assert train[:50] != sorted(names)[:50]  # actually shuffled
    with pytest.raises(DataError, match="more than 1200 characters"):
        paper_split(names[:1200])


def test_paper_split_end_to_end_on_hand_made_zips(tmp_path):
    root = tmp_path / "omni"
    root.mkdir()
    background = {f"Bg{a:02d}/character{c:02d}": 1 for a in range(30) for c in range(1, 33)}  # 960
    evaluation = {f"Ev{a:02d}/character{c:02d}": 1 for a in range(20) for c in range(1, 35)}  # 680 -> 1640 total
    sums = {
        "images_background.zip": fake_zip(root / "images_background.zip", background),
        "images_evaluation.zip": fake_zip(root / "images_evaluation.zip", evaluation),
    }
    arrays = load_arrays("paper", root, download=False, checksums=sums)
    expected_train, expected_test = paper_split(list(background) + list(evaluation))
    assert arrays["train_names"].tolist() == expected_train and arrays["test_names"].tolist() == expected_test
    train = load_omniglot("paper", "train", root, download=False, checksums=sums)
    test = load_omniglot("paper", "test", root, download=False, checksums=sums)
    assert train.num_classes == 4 * 1200 and train.images.shape[:2] == (1200, 2)
    assert test.num_classes == 1640 - 1200 and test.rotations == 1


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args, message",
    [
        (("omniglot", "tiny", "train"), "valid splits: paper, small"),
        (("omniglot", "small", "val"), "has no val part"),
        (("omniglot", "small", "dev"), "valid parts: train, test"),
    ],
)
def test_unknown_names_list_the_valid_ones(args, message):
    with pytest.raises(ValueError, match=message):
        load_pool(*args, root="/nonexistent", download=False)
    with pytest.raises(ValueError, match=message.split(":")[0]):
        load_omniglot(*args[1:], root="/nonexistent", download=False)


def test_missing_zips_say_which_files_where_and_the_url(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_omniglot("paper", "train", tmp_path, download=False)
    text = str(err.value)
    for name in ("images_background.zip", "images_evaluation.zip"):
        assert str(tmp_path / name) in text
        assert f"https://github.com/brendenlake/omniglot/raw/master/python/{name}" in text
    assert isinstance(err.value, FileNotFoundError)


def test_default_root_is_env_then_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIGLOT_ROOT", str(tmp_path / "from_env"))
    with pytest.raises(MissingDataError, match="from_env"):
        load_pool("omniglot", "small", "train", download=False)
    monkeypatch.delenv("OMNIGLOT_ROOT")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingDataError, match=r"data/omniglot/images_background_small1\.zip"):
        load_pool("omniglot", "small", "train", download=False)


def test_failed_download_falls_back_to_the_message(tmp_path, monkeypatch):
    monkeypatch.delenv("REPTILE_BENCH_OFFLINE")

    def offline(url, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(omniglot.archive.urllib.request, "urlopen", offline)
    with pytest.raises(MissingDataError, match="downloading Omniglot failed .*network is unreachable"):
        load_omniglot("small", "train", tmp_path / "root")
    assert not list((tmp_path / "root").glob("*.zip*"))  # nothing half-downloaded left


def test_download_fetches_verifies_and_loads(omniglot_root, tmp_path, monkeypatch):
    # The "server" is the local shared folder: the code path is the real one, the network is not used.
    monkeypatch.setattr(omniglot, "URL", omniglot_root.as_uri() + "/{name}")
    pool = load_omniglot("small", "test", tmp_path / "root", download=True)
    assert pool.num_classes == 106
    assert sorted(p.name for p in (tmp_path / "root").glob("*.zip")) == [SMALL1, SMALL2]


def test_checksum_mismatch_is_refused(omniglot_root, tmp_path):
    root = copy_small(omniglot_root, tmp_path / "omni")
    with open(root / SMALL2, "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match=f"{SMALL2}: md5 checksum is .*expected {CHECKSUMS[SMALL2]}"):
        load_omniglot("small", "train", root, download=False)


def test_truncated_zip_caught_by_checksum_and_by_zip_reader(omniglot_root, tmp_path):
    root = copy_small(omniglot_root, tmp_path / "omni")
    data = (root / SMALL1).read_bytes()
    (root / SMALL1).write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="md5 checksum"):
        load_omniglot("small", "train", root, download=False)
    # Even when told to expect this truncated file, the zip reader's failure is a clear message.
    sums = {SMALL1: hashlib.md5(data[: len(data) // 3]).hexdigest()}
    with pytest.raises(DataError, match="not a readable zip archive"):
        load_omniglot("small", "train", root, download=False, checksums=sums)


def test_escaping_member_rejects_the_archive_and_writes_nothing(tmp_path):
    root = tmp_path / "omni"
    root.mkdir()
    bad = root / SMALL1
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("images_background_small1/A/character01/0001_01.png", png(np.eye(8, dtype=bool)))
        zf.writestr("../evil.png", b"evil")
    sums = {SMALL1: hashlib.md5(bad.read_bytes()).hexdigest(), SMALL2: fake_zip(root / SMALL2, {"B/character01": 1}, 1)}
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError, match="'../evil.png'"):
        load_omniglot("small", "train", root, download=False, checksums=sums)
    assert sorted(tmp_path.rglob("*")) == before


def test_non_binary_images_are_refused(tmp_path):
    root = tmp_path / "omni"
    root.mkdir()
    grey = png(np.full((8, 8), 128, np.uint8), mode="L")
    sums = {SMALL1: fake_zip(root / SMALL1, {"A/character01": 1}, 2, data=grey), SMALL2: fake_zip(root / SMALL2, {"B/character01": 1})}
    with pytest.raises(DataError, match="expected a 1-bit Omniglot image, got mode 'L'"):
        load_omniglot("small", "train", root, download=False, checksums=sums)
