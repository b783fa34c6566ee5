"""Omniglot (Lake et al. 2015) from the official zips, as few-shot class pools.

    from datasets.omniglot import load_omniglot
    train = load_omniglot("small", "train", root="../shared/data/omniglot")   # ClassPool, rotations=4
    test = load_omniglot("small", "test", root="../shared/data/omniglot")     # ClassPool, not rotated

Splits (a fixed function of the data, never of a run seed):
  paper  images_background.zip + images_evaluation.zip, the 1623 characters
         sorted by "alphabet/character", shuffled with ``random.Random(0)``;
         first 1200 train, remaining 423 test. This is the order in which
         supervised-reptile (read_dataset: sorted listings, then
         random.shuffle after random.seed(0)) splits them.
  small  images_background_small1.zip (5 alphabets) is train; test is the
         characters of images_background_small2.zip's alphabets that small1
         does not hold (Japanese_(katakana), Sanskrit, Tagalog). For tests and CI.
Train characters count four times (rotations by 0/90/180/270 degrees, applied
by ClassPool at sampling time); test characters are not rotated. No val part.

Image preprocessing, checked against both reference codes: the 105x105 1-bit
PNG is resized to 28x28 with ``resize((28, 28), LANCZOS)`` as MAML's
resize_images.py does. Pillow resizes 1-bit images by nearest neighbour
whatever filter is asked, so the result is binary and identical to
supervised-reptile's ``resize((28, 28))`` (tests check both equalities).
Polarity follows supervised-reptile: pixels are used as read, background 1.0
and strokes 0.0 (MAML's code inverts them; with batch norm after the first
convolution this is close to a change of sign of the first-layer weights).

Preprocessing runs once per split; the result is cached as a compressed .npz
of uint8 in the cache folder ($REPTILE_BENCH_CACHE, else
$XDG_CACHE_HOME/reptile-bench or ~/.cache/reptile-bench; see ``datasets.archive``),
never beside the zips. The cache records the zips' checksums; once built,
loading needs only the cache file (the zips may be moved away).
"""
from __future__ import annotations

import io
import os
import random
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from PIL import Image

from . import archive
from .archive import DataError, MissingDataError
from .tasks import ClassPool

URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
CHECKSUMS = {  # md5, see SETTINGS.md
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
}
SPLITS = {
    "paper": ("images_background.zip", "images_evaluation.zip"),
    "small": ("images_background_small1.zip", "images_background_small2.zip"),
}
PARTS = ("train", "test")
NUM_TRAIN = 1200  # paper split: characters in the train part
SHUFFLE_SEED = 0  # paper split: the seed of supervised-reptile's default run
IMAGE_SIZE = 28
TRAIN_ROTATIONS = 4
CACHE_VERSION = 1  # bump when preprocessing changes, so old caches are rebuilt


def missing_message(root: Path, names: list[str]) -> str:
    lines = "\n".join(f"  {root / n}    from {URL.format(name=n)}" for n in names)
    return (
        f"Omniglot files missing (downloads are off or failed). Put these files there:\n{lines}\n"
        f"or set OMNIGLOT_ROOT / pass root= to the folder that holds them "
        f"(downloads happen when REPTILE_BENCH_OFFLINE is unset and download is not False)."
    )


def ensure_zips(root: Path, names: tuple[str, ...], checksums: Mapping[str, str], download: bool | None) -> list[Path]:
    """Paths of the verified zips, downloading missing ones when allowed."""
    missing = [n for n in names if not (root / n).is_file()]
    if missing and archive.downloads_allowed(download):
        try:
            for n in missing:
                archive.download(URL.format(name=n), root / n, checksums[n])
            missing = []
        except (OSError, DataError) as e:  # offline, HTTP error, read-only root, bad download
            still = [n for n in names if not (root / n).is_file()]
            raise MissingDataError(f"downloading Omniglot failed ({e}).\n" + missing_message(root, still)) from e
    if missing:
        raise MissingDataError(missing_message(root, missing))
    for n in names:
        archive.verify_md5(root / n, checksums[n], fix=f"delete it and fetch it again from {URL.format(name=n)}")
    return [root / n for n in names]


def to_array(png: bytes, where: str) -> np.ndarray:
    """One PNG -> [1, 28, 28] uint8 in {0, 255}, as the reference codes preprocess it."""
    try:
        img = Image.open(io.BytesIO(png))
        img.load()
    except Exception as e:  # PIL raises many types for damaged images
        raise DataError(f"{where}: not a readable PNG ({e}); the archive is damaged, fetch it again.") from e
    if img.mode != "1":
        raise DataError(f"{where}: expected a 1-bit Omniglot image, got mode {img.mode!r}; this is not an official Omniglot zip.")
    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.LANCZOS)
    return (np.asarray(small, dtype=np.uint8) * 255)[None]


def read_characters(zip_path: Path) -> dict[str, np.ndarray]:
    """{"Alphabet/characterNN": uint8 [drawings, 1, 28, 28]} from one official zip, drawings sorted by file name."""
    top = zip_path.stem
    groups: dict[str, list[str]] = defaultdict(list)
    with archive.open_zip(zip_path) as zf:
        for name in zf.namelist():
            if not name.endswith(".png"):
                continue
            parts = name.split("/")
            if len(parts) != 4 or parts[0] != top:
                raise DataError(f"{zip_path}: unexpected member {name!r}; expected {top}/<alphabet>/<character>/<drawing>.png")
            groups[f"{parts[1]}/{parts[2]}"].append(name)
        if not groups:
            raise DataError(f"{zip_path}: no PNG images inside; this is not an official Omniglot zip.")
        chars = {}
        for char in sorted(groups):
            members = sorted(groups[char])
            chars[char] = np.stack([to_array(archive.read_member(zf, m), f"{zip_path}:{m}") for m in members])
    counts = {v.shape[0] for v in chars.values()}
    if len(counts) != 1:
        raise DataError(f"{zip_path}: characters have different numbers of drawings {sorted(counts)}; the archive is damaged.")
    return chars


def paper_split(characters: list[str]) -> tuple[list[str], list[str]]:
    """Sorted, shuffled by ``random.Random(SHUFFLE_SEED)``, first NUM_TRAIN train, the rest test."""
    if len(characters) <= NUM_TRAIN:
        raise DataError(f"paper split needs more than {NUM_TRAIN} characters, the zips hold {len(characters)}.")
    order = sorted(characters)
    random.Random(SHUFFLE_SEED).shuffle(order)
    return order[:NUM_TRAIN], order[NUM_TRAIN:]


def small_split(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Train: all of small1. Test: small2's characters from alphabets that small1 does not hold."""
    seen = {c.split("/")[0] for c in first}
    return sorted(first), sorted(c for c in second if c.split("/")[0] not in seen)


def build_split(zips: list[Path], split: str) -> dict[str, np.ndarray]:
    first, second = (read_characters(z) for z in zips)
    if split == "paper":
        overlap = set(first) & set(second)
        if overlap:
            raise DataError(f"{zips[0]} and {zips[1]} share characters {sorted(overlap)[:3]}...; they are not the official zips.")
        chars = {**first, **second}
        train, test = paper_split(list(chars))
    else:
        chars = {**second, **first}
        train, test = small_split(first, second)
    return {
        "train": np.stack([chars[c] for c in train]),
        "test": np.stack([chars[c] for c in test]),
        "train_names": np.array(train),
        "test_names": np.array(test),
    }


def load_arrays(
    split: str,
    root: str | os.PathLike,
    *,
    download: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """The cached uint8 arrays of a split (both parts), building the cache if needed."""
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; valid splits: {', '.join(SPLITS)}")
    root = Path(root)
    names = SPLITS[split]
    sums = {n: (checksums or {}).get(n, CHECKSUMS[n]) for n in names}
    meta = {"dataset": "omniglot", "split": split, "version": CACHE_VERSION, "md5": sums}
    path = archive.cache_file(root, f"omniglot-{split}-v{CACHE_VERSION}.npz", cache_dir)
    arrays = archive.load_npz_checked(path, meta)
    if arrays is not None and {"train", "test", "train_names", "test_names"} <= arrays.keys():
        return arrays
    arrays = build_split(ensure_zips(root, names, sums, download), split)
    try:
        archive.save_npz_atomic(path, arrays, meta)
    except OSError as e:  # a cache that cannot be written costs time, not correctness
        warnings.warn(f"could not write the Omniglot cache {path} ({e}); set REPTILE_BENCH_CACHE to a writable folder")
    return arrays


def load_omniglot(
    split: str,
    part: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
) -> ClassPool:
    """ClassPool of one part: images float32 [characters, 20, 1, 28, 28] in {0, 1}.

    ``root`` defaults to $OMNIGLOT_ROOT, else ./data/omniglot. ``checksums``
    overrides the official md5s (tests with hand-made zips only).
    """
    if part not in PARTS:
        raise ValueError(
            f"unknown Omniglot part {part!r}; valid parts: {', '.join(PARTS)} "
            f"(Omniglot has no val part: the published splits are train/test only)"
        )
    root = root if root is not None else os.environ.get("OMNIGLOT_ROOT") or Path("data") / "omniglot"
    arrays = load_arrays(split, root, download=download, cache_dir=cache_dir, checksums=checksums)
    images = torch.from_numpy(arrays[part]).float().div_(255)
    return ClassPool(images, rotations=TRAIN_ROTATIONS if part == "train" else 1, name=f"omniglot/{split}/{part}")
