"""Mini-ImageNet in the Ravi & Larochelle (2017) split layout, as few-shot class pools.

    from datasets.miniimagenet import load_miniimagenet
    train = load_miniimagenet("ravi", "train", root="data/miniimagenet")  # uint8 ClassPool [64, 600, 3, 84, 84]

Expected layout (``root`` defaults to $MINIIMAGENET_ROOT, else ./data/miniimagenet):

    root/images/n0153282900000005.jpg ...   every image of the three parts
    root/train.csv  root/val.csv  root/test.csv   header "filename,label"

The images cannot be downloaded automatically (ImageNet's licence): get
``images.zip`` and the three csv files of Ravi & Larochelle's split (the
files the MAML repository's data/miniImagenet/proc_images.py expects), after
accepting ImageNet's terms at https://image-net.org, and unzip images.zip
into ``root`` (``datasets.archive.safe_extract`` does it safely).

Preprocessing follows MAML's proc_images.py: each image is converted to RGB
and resized to 84x84 with PIL's LANCZOS filter. Classes are ordered by label
(WordNet id) and images by csv order. Images are kept as uint8 (the 60,000
images would take 5 GB as float32); ClassPool turns them into float in [0, 1]
per task. The cache (an uncompressed .npz per part, ~0.8 GB for train) is
keyed on the csv's md5: editing a csv rebuilds it, replacing images in place
does not (delete the cache file then).
"""
from __future__ import annotations

import csv
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import archive
from .archive import DataError, MissingDataError
from .tasks import ClassPool

SPLITS = ("ravi",)
PARTS = ("train", "val", "test")
IMAGE_SIZE = 84
CACHE_VERSION = 1

LAYOUT = """Expected Mini-ImageNet layout (Ravi & Larochelle split):
  {root}/images/<filename>.jpg   (e.g. n0153282900000005.jpg; all 60,000 images)
  {root}/train.csv, val.csv, test.csv   (header "filename,label")
Mini-ImageNet cannot be downloaded automatically (ImageNet licence): accept the terms at
https://image-net.org, obtain images.zip and the split csv files of Ravi & Larochelle (2017)
(as used by MAML's data/miniImagenet), unzip images.zip into {root}, and set MINIIMAGENET_ROOT
or pass root=."""


def read_csv(path: Path) -> dict[str, list[str]]:
    """{label: [filenames in csv order]} of one part."""
    groups: dict[str, list[str]] = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["filename", "label"]:
            raise DataError(f"{path}: expected the header 'filename,label', got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0] or not row[1]:
                raise DataError(f"{path}, line {line}: expected 'filename,label', got {row}")
            groups[row[1]].append(row[0])
    if not groups:
        raise DataError(f"{path}: no images listed")
    counts = {len(v) for v in groups.values()}
    if len(counts) != 1:
        raise DataError(f"{path}: classes have different numbers of images {sorted(counts)}; every class needs the same count.")
    return groups


def to_array(path: Path) -> np.ndarray:
    """One image -> [3, 84, 84] uint8, as MAML's proc_images.py resizes it."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.LANCZOS)
    except Exception as e:  # PIL raises many types for damaged images
        raise DataError(f"{path}: not a readable image ({e}); replace it with the original file.") from e
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def build_part(root: Path, csv_path: Path) -> dict[str, np.ndarray]:
    groups = read_csv(csv_path)
    labels = sorted(groups)
    missing = [f for lab in labels for f in groups[lab] if not (root / "images" / f).is_file()]
    if missing:
        raise MissingDataError(
            f"{len(missing)} images listed in {csv_path} are missing from {root / 'images'} (first: {missing[0]}).\n"
            + LAYOUT.format(root=root)
        )
    images = np.stack([np.stack([to_array(root / "images" / f) for f in groups[lab]]) for lab in labels])
    return {"images": images, "labels": np.array(labels)}


def _root_and_csv(part: str, root) -> tuple[Path, Path]:
    root = Path(root if root is not None else os.environ.get("MINIIMAGENET_ROOT") or Path("data") / "miniimagenet")
    csv_path = root / f"{part}.csv"
    if not root.is_dir() or not csv_path.is_file() or not (root / "images").is_dir():
        raise MissingDataError(f"Mini-ImageNet not found: {csv_path} or {root / 'images'} is missing.\n" + LAYOUT.format(root=root))
    return root, csv_path


def part_counts(split: str, part: str, root: str | os.PathLike | None = None) -> tuple[int, int]:
    """(classes, images per class) of one part, from its csv alone (no image is decoded)."""
    if split not in SPLITS or part not in PARTS:
        raise ValueError(f"unknown Mini-ImageNet split/part {split!r}/{part!r}; valid: {SPLITS} / {PARTS}")
    groups = read_csv(_root_and_csv(part, root)[1])
    return len(groups), len(next(iter(groups.values())))


def load_miniimagenet(
    split: str,
    part: str,
    root: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> ClassPool:
    """uint8 ClassPool [classes, images per class, 3, 84, 84] of one part, not rotated."""
    if split not in SPLITS:
        raise ValueError(f"unknown Mini-ImageNet split {split!r}; valid splits: {', '.join(SPLITS)}")
    if part not in PARTS:
        raise ValueError(f"unknown Mini-ImageNet part {part!r}; valid parts: {', '.join(PARTS)}")
    root, csv_path = _root_and_csv(part, root)
    meta = {"dataset": "miniimagenet", "split": split, "part": part, "version": CACHE_VERSION, "csv_md5": archive.md5_file(csv_path)}
    path = archive.cache_file(root, f"miniimagenet-{split}-{part}-v{CACHE_VERSION}.npz", cache_dir)
    arrays = archive.load_npz_checked(path, meta)
    if arrays is None or not {"images", "labels"} <= arrays.keys():
        arrays = build_part(root, csv_path)
        try:
            # Natural images barely compress; uncompressed keeps loading fast.
            archive.save_npz_atomic(path, arrays, meta, compress=False)
        except OSError as e:
            warnings.warn(f"could not write the Mini-ImageNet cache {path} ({e}); set REPTILE_BENCH_CACHE to a writable folder")
    return ClassPool(torch.from_numpy(arrays["images"]), rotations=1, name=f"miniimagenet/{split}/{part}")
