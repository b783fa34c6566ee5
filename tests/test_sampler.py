"""Tests of the task sampler (datasets/tasks.py) on synthetic pools and on the small Omniglot split.

Synthetic images carry their identity (class, example) in their pixel value
and a corner mark that shows their orientation, so every claim about a task
(labels, disjointness, rotation) is checked from the pixels alone.

    OMNIGLOT_ROOT=../shared/data/omniglot .venv/bin/python -m pytest -q tests/test_sampler.py
"""
from __future__ import annotations

import builtins
import io
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import ClassPool, load_pool
from datasets.tasks import stream_key

CLASSES, EXAMPLES, SIDE = 6, 8, 5


def identity_pool(rotations: int = 1, dtype: torch.dtype = torch.float32) -> ClassPool:
    """Image (c, e) is filled with (c * EXAMPLES + e + 1) / 255 and has 1.0 in its top-left corner."""
    ids = torch.arange(CLASSES * EXAMPLES, dtype=torch.float32).reshape(CLASSES, EXAMPLES) + 1
    images = (ids / 255)[:, :, None, None, None].expand(CLASSES, EXAMPLES, 1, SIDE, SIDE).clone()
    images[..., 0, 0] = 1.0
    if dtype == torch.uint8:
        images = (images * 255).round().to(torch.uint8)
    return ClassPool(images, rotations=rotations, name="identity")


def decode(pool: ClassPool, x: torch.Tensor) -> tuple[int, int, int]:
    """(class, example, k) such that x == rot90(stored image, k); fails if there is none."""
    stored = pool.images.float() / 255 if pool.images.dtype == torch.uint8 else pool.images
    flat = int(round(float(x.flatten().median()) * 255)) - 1
    c, e = divmod(flat, EXAMPLES)
    matches = [k for k in range(4) if torch.equal(torch.rot90(stored[c, e], k, dims=(-2, -1)), x)]
    assert len(matches) == 1, "image is no rotation of the stored one"
    return c, e, matches[0]


def test_same_arguments_give_identical_tasks_and_index_changes_them():
    pool = identity_pool(rotations=4)
    a = pool.sample_batch(ways=5, shots=2, query=3, seed=7, indices=range(4))
    b = pool.sample_batch(ways=5, shots=2, query=3, seed=7, indices=range(4))
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
    c = pool.sample_task(5, 2, 3, seed=7, index=4)
    d = pool.sample_task(5, 2, 3, seed=8, index=0)
    assert not torch.equal(a.task(0).support_x, c.support_x) and not torch.equal(a.task(0).support_x, d.support_x)
    # a batch is exactly its tasks, stacked
    assert torch.equal(a.task(2).query_x, pool.sample_task(5, 2, 3, seed=7, index=2).query_x)


def test_no_two_seed_index_pairs_share_a_task_stream():
    """Seeds must be independent however many tasks a run draws (the paper suites draw millions)."""
    pool = identity_pool(rotations=4)
    # With the old seed * 1_000_003 + index mixing these two were the same task.
    far = pool.sample_task(5, 2, 3, seed=0, index=1_000_003)
    assert not torch.equal(far.support_x, pool.sample_task(5, 2, 3, seed=1, index=0).support_x)
    # torch's CPU generator keeps 32 bits of a seed: every key must fit, and seeds own disjoint blocks.
    assert stream_key(255, 2**24 - 1) == 2**32 - 1 and stream_key(3, 2**24 - 1) + 1 == stream_key(4, 0)
    last = pool.sample_task(5, 2, 3, seed=255, index=2**24 - 1)
    assert not torch.equal(last.support_x, pool.sample_task(5, 2, 3, seed=0, index=2**24 - 1).support_x)
    for seed, index, message in [(-1, 0, "seed -1 is out of range"), (256, 0, "seeds are integers in"),
                                 (0, -1, "task index -1 is out of range"), (0, 2**24, "task indices are integers in")]:
        with pytest.raises(ValueError, match=message):
            pool.sample_task(5, 2, 3, seed=seed, index=index)


def test_shapes_labels_and_disjoint_support_query():
    pool = identity_pool()
    batch = pool.sample_batch(ways=4, shots=2, query=3, seed=0, indices=range(10))
    assert tuple(batch.support_x.shape) == (10, 8, 1, SIDE, SIDE) and tuple(batch.query_x.shape) == (10, 12, 1, SIDE, SIDE)
    assert batch.support_y.dtype == torch.int64 and batch.is_classification
    first_class = []
    for t in range(10):
        sup = [decode(pool, x) for x in batch.support_x[t]]
        qry = [decode(pool, x) for x in batch.query_x[t]]
        assert sorted(batch.support_y[t].unique().tolist()) == [0, 1, 2, 3]
        assert torch.bincount(batch.query_y[t]).tolist() == [3, 3, 3, 3]
        label_class = {}
        for (c, e, _), y in zip(sup + qry, batch.support_y[t].tolist() + batch.query_y[t].tolist()):
            assert label_class.setdefault(y, c) == c  # one class per label
        assert len(set(label_class.values())) == 4  # distinct classes
        assert not {(c, e) for c, e, _ in sup} & {(c, e) for c, e, _ in qry}  # no example in both sets
        assert len({(c, e) for c, e, _ in sup + qry}) == 20  # and none twice
        first_class.append(label_class[0])
        # labels are not the class order: the class under label 0 is not always the smallest
    assert len(set(first_class)) > 1
    assert any(first_class[t] != min(decode(pool, x)[0] for x in batch.support_x[t]) for t in range(10))


def test_rotations_are_rot90_of_the_stored_image_and_act_as_classes():
    pool = identity_pool(rotations=4)
    assert pool.num_classes == 4 * CLASSES
    seen = set()
    for index in range(30):
        task = pool.sample_task(ways=5, shots=1, query=1, seed=1, index=index)
        decoded = [decode(pool, x) for x in torch.cat([task.support_x[0], task.query_x[0]])]
        labels = task.support_y[0].tolist() + task.query_y[0].tolist()
        per_label = {}
        for (c, _, k), y in zip(decoded, labels):
            assert per_label.setdefault(y, (c, k)) == (c, k)  # a rotation is part of the class identity
        seen |= {k for _, _, k in decoded}
    assert seen == {0, 1, 2, 3}
    plain = identity_pool(rotations=1)
    assert {decode(plain, x)[2] for x in plain.sample_task(6, 2, 2, 0, 0).support_x[0]} == {0}


def test_uint8_pool_gives_the_float_tasks():
    f, u = identity_pool(4), identity_pool(4, torch.uint8)
    a, b = f.sample_batch(3, 2, 2, seed=3, indices=range(5)), u.sample_batch(3, 2, 2, seed=3, indices=range(5))
    assert b.support_x.dtype == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))


def test_check_rejects_settings_that_do_not_fit(small_omniglot):
    test, train = small_omniglot.test, small_omniglot.train
    with pytest.raises(ValueError, match="ways=107 is larger than the 106 classes"):
        test.sample_task(ways=107, shots=1, query=1, seed=0, index=0)
    with pytest.raises(ValueError, match="ways=545 is larger than the 544 classes"):
        train.check(545, 1, 0)
    train.check(544, 1, 0)
    with pytest.raises(ValueError, match="shots \\+ query = 5 \\+ 16 = 21 is larger than the 20 examples"):
        train.sample_batch(ways=5, shots=5, query=16, seed=0, indices=range(2))
    with pytest.raises(ValueError, match="need ways >= 1"):
        test.check(0, 1, 1)
    with pytest.raises(ValueError, match="uint8"):
        ClassPool(torch.zeros(2, 3, 1, 4, 4, dtype=torch.int32))


def test_omniglot_tasks_identical_across_separately_loaded_pools(omniglot_root, small_omniglot, tmp_path):
    # A second, cold load into another cache folder: the tasks must not depend on which load made the pool.
    other = load_pool("omniglot", "small", "train", root=omniglot_root, download=False, cache_dir=tmp_path)
    a = small_omniglot.train.sample_batch(ways=5, shots=1, query=15, seed=0, indices=range(5))
    b = other.sample_batch(ways=5, shots=1, query=15, seed=0, indices=range(5))
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))


def test_omniglot_task_images_are_rotations_of_stored_images(small_omniglot):
    pool = small_omniglot.train
    stored = pool.images.reshape(-1, 28, 28)
    # Binary images: their bytes identify them, which makes the lookup a set membership.
    rotated = {
        k: {img.numpy().astype(bool).tobytes() for img in torch.rot90(stored, k, dims=(-2, -1))} for k in range(4)
    }
    task = pool.sample_task(ways=5, shots=2, query=2, seed=0, index=3)
    for x, y in zip(torch.cat([task.support_x[0], task.query_x[0]]), torch.cat([task.support_y[0], task.query_y[0]])):
        key = x[0].numpy().astype(bool).tobytes()
        assert any(key in rotated[k] for k in range(4)), f"image with label {int(y)} is no rotation of any stored image"


def test_torch_rotation_is_pils_rotation_as_in_reptile(small_omniglot):
    # supervised-reptile rotates with PIL's Image.rotate(degrees), counter-clockwise.
    img = small_omniglot.train.images[3, 0, 0]
    pil = Image.fromarray((img.numpy() * 255).astype(np.uint8))
    for k in range(4):
        ref = torch.from_numpy(np.asarray(pil.rotate(90 * k)).astype(np.float32) / 255)
        assert torch.equal(torch.rot90(img, k, dims=(-2, -1)), ref)


def test_sampling_touches_no_files(omniglot_root, tmp_path, monkeypatch):
    root = tmp_path / "omni"
    root.mkdir()
    for n in ("images_background_small1.zip", "images_background_small2.zip"):
        shutil.copy(omniglot_root / n, root / n)
    pool = load_pool("omniglot", "small", "test", root=root, download=False)
    expected = pool.sample_batch(5, 1, 5, seed=2, indices=range(3))
    shutil.rmtree(root)

    def no_files(*args, **kwargs):
        raise AssertionError("sampling opened a file")

    for owner, attr in [(builtins, "open"), (io, "open"), (zipfile, "ZipFile"), (Image, "open"), (np, "load")]:
        monkeypatch.setattr(owner, attr, no_files)
    again = pool.sample_batch(5, 1, 5, seed=2, indices=range(3))
    assert all(torch.equal(x, y) for x, y in zip(expected.tensors(), again.tensors()))
