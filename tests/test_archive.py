"""Tests of datasets/archive.py: checksums, safe extraction, damaged zips, atomic writes, downloads.

    .venv/bin/python -m pytest -q tests/test_archive.py
"""
from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from datasets import archive
from datasets.archive import DataError


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_md5_matches_hashlib_and_mismatch_names_both_sums(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"omniglot" * 1000)
    expected = hashlib.md5(b"omniglot" * 1000).hexdigest()
    assert archive.md5_file(f) == expected
    archive.verify_md5(f, expected.upper())  # case-insensitive, no error
    with pytest.raises(DataError, match=f"md5 checksum is {expected}, expected 0123"):
        archive.verify_md5(f, "0123" + expected[4:])


def test_safe_extract_writes_the_members(tmp_path):
    z = make_zip(tmp_path / "ok.zip", {"top/a/one.txt": b"1", "top/b/two.txt": b"22"})
    dest = tmp_path / "out"
    written = archive.safe_extract(z, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in written) == ["top/a/one.txt", "top/b/two.txt"]
    assert (dest / "top/b/two.txt").read_bytes() == b"22"


@pytest.mark.parametrize("evil", ["../evil.png", "top/../../evil.png", "/tmp/evil_abs.png", "C:/evil.png", "top\\..\\evil.png"])
def test_safe_extract_rejects_escaping_members_and_writes_nothing(tmp_path, evil):
    work = tmp_path / "work"
    work.mkdir()
    z = make_zip(work / "evil.zip", {"top/fine.png": b"fine", evil: b"evil"})
    before = files_under(tmp_path)
    with pytest.raises(DataError, match="refusing the archive"):
        archive.safe_extract(z, work / "dest")
    # Nothing at all is written: not the escaping file, not even the harmless one before it.
    assert files_under(tmp_path) == before
    assert not Path("/tmp/evil_abs.png").exists()


def test_safe_extract_rejects_symlinks(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("top/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        archive.safe_extract(z, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_truncated_zip_is_a_clear_error(tmp_path):
    z = make_zip(tmp_path / "full.zip", {f"top/{i}.bin": os.urandom(2000) for i in range(5)})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable zip archive"):
        archive.open_zip(cut)
    with pytest.raises(DataError, match="not a readable zip archive"):
        archive.safe_extract(cut, tmp_path / "dest")


def test_corrupted_member_is_a_clear_error(tmp_path):
    payload = bytes(range(256)) * 40
    z = make_zip(tmp_path / "crc.zip", {"top/data.bin": payload})
    raw = bytearray(z.read_bytes())
    # Flip bytes inside the compressed data: the directory stays valid, the CRC/inflate does not.
    start = raw.index(b"top/data.bin") + len("top/data.bin") + 10
    for i in range(start, start + 20):
        raw[i] ^= 0xFF
    z.write_bytes(bytes(raw))
    with archive.open_zip(z) as zf, pytest.raises(DataError, match="cannot be read"):
        archive.read_member(zf, "top/data.bin")


def test_open_zip_rejects_unsafe_names_without_extracting(tmp_path):
    z = make_zip(tmp_path / "evil.zip", {"../evil.png": b"x"})
    with pytest.raises(DataError, match="'../evil.png'"):
        archive.open_zip(z)


def test_save_npz_atomic_roundtrip_and_meta_check(tmp_path):
    path = tmp_path / "c.npz"
    arrays = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4)}
    archive.save_npz_atomic(path, arrays, {"md5": {"a.zip": "abc"}, "version": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600: others can read a shared cache
    back = archive.load_npz_checked(path, {"md5": {"a.zip": "abc"}, "version": 1})
    np.testing.assert_array_equal(back["x"], arrays["x"])
    with pytest.warns(UserWarning, match="built from other inputs"):
        assert archive.load_npz_checked(path, {"md5": {"a.zip": "other"}, "version": 1}) is None
    assert archive.load_npz_checked(tmp_path / "absent.npz", {}) is None


def test_interrupted_cache_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    archive.save_npz_atomic(path, {"x": np.zeros(3, np.uint8)}, {"v": 1})
    old = path.read_bytes()

    def dies(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", dies)
    with pytest.raises(KeyboardInterrupt):
        archive.save_npz_atomic(path, {"x": np.ones(3, np.uint8)}, {"v": 2})
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_cache_reads_as_absent_with_warning(tmp_path, damage):
    path = tmp_path / "c.npz"
    archive.save_npz_atomic(path, {"x": np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8)}, {"v": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a cache")
    with pytest.warns(UserWarning, match="unreadable"):
        assert archive.load_npz_checked(path, {"v": 1}) is None


def test_cache_folder_is_env_then_xdg_then_home_and_never_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REPTILE_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert archive.default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("REPTILE_BENCH_CACHE")
    assert archive.default_cache_dir() == tmp_path / "xdg" / "reptile-bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert archive.default_cache_dir() == Path.home() / ".cache" / "reptile-bench"
    data = tmp_path / "data"
    data.mkdir()  # writable: still not used
    assert archive.cache_file(data, "x.npz").parent == Path.home() / ".cache" / "reptile-bench"


def test_download_verifies_then_renames(tmp_path):
    # A file:// URL exercises the whole path without any network.
    src = tmp_path / "src.zip"
    src.write_bytes(b"payload")
    good = hashlib.md5(b"payload").hexdigest()
    dest = tmp_path / "root" / "got.zip"
    archive.download(src.as_uri(), dest, good)
    assert dest.read_bytes() == b"payload"
    bad_dest = tmp_path / "root" / "bad.zip"
    with pytest.raises(DataError, match="download from .* is damaged"):
        archive.download(src.as_uri(), bad_dest, "0" * 32)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["got.zip"]  # no partial file left


def test_downloads_allowed_follows_argument_then_env(monkeypatch):
    monkeypatch.setenv("REPTILE_BENCH_OFFLINE", "1")
    assert archive.downloads_allowed(None) is False
    assert archive.downloads_allowed(True) is True
    monkeypatch.delenv("REPTILE_BENCH_OFFLINE")
    assert archive.downloads_allowed(None) is True
    assert archive.downloads_allowed(False) is False


def test_cache_file_keeps_data_folders_apart_in_the_shared_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPTILE_BENCH_CACHE", str(tmp_path / "cache"))
    a, b = archive.cache_file(tmp_path / "a", "omniglot-small-v1.npz"), archive.cache_file(tmp_path / "b", "omniglot-small-v1.npz")
    assert a.parent == b.parent == tmp_path / "cache" and a != b
    assert a.name.startswith("omniglot-small-v1-") and a.suffix == ".npz"
    (tmp_path / "c").mkdir()
    assert archive.cache_file(tmp_path / "c", "x.npz").parent == tmp_path / "cache"  # writable data: still the cache
    assert archive.cache_file(tmp_path / "a", "x.npz", cache_dir=tmp_path / "d") == tmp_path / "d" / "x.npz"
