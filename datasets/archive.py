"""Safe handling of downloaded data: checksums, zip archives, downloads and the preprocessing cache.

Every loader goes through these helpers so that the rules users rely on hold
everywhere: files are verified by checksum before use, archives never write
outside their destination, downloads and caches are written atomically (temp
file in the same folder, then ``os.replace``), and each failure raises a
``DataError`` whose message says what is wrong and how to fix it.

Environment variables:
    REPTILE_BENCH_OFFLINE=1   never download (tests set it); missing files raise instead.
    REPTILE_BENCH_CACHE=DIR   where preprocessing caches go (default $XDG_CACHE_HOME/reptile-bench,
                              else ~/.cache/reptile-bench); the data folder is never written to.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from contextlib import contextmanager
from typing import IO, Iterable, Iterator, Mapping

import numpy as np


class DataError(ValueError):
    """Data on disk is damaged, unsafe or not what was expected; the message says how to fix it."""


class MissingDataError(DataError, FileNotFoundError):
    """Required data files are absent; the message says which files to put where."""


def md5_file(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str, fix: str = "delete it and fetch it again") -> None:
    """Raise DataError unless ``path`` has md5 ``expected``."""
    actual = md5_file(path)
    if actual != expected.lower():
        raise DataError(
            f"{path}: md5 checksum is {actual}, expected {expected}. The file is damaged (e.g. a truncated "
            f"download) or not the official one; {fix}."
        )


def check_member_names(names: Iterable[str], archive: str | os.PathLike) -> None:
    """Reject archives with a member that would land outside the extraction folder.

    Refused: absolute paths, drive letters, backslashes (a separator on
    Windows), and any ``..`` component. The whole archive is refused, not just
    the member, because such a file is not an official archive.
    """
    for name in names:
        parts = name.split("/")
        if (
            name.startswith("/")
            or "\\" in name
            or ":" in parts[0]
            or ".." in parts
            or posixpath.isabs(name)
            or "\x00" in name
        ):
            raise DataError(
                f"{archive}: refusing the archive, member {name!r} would be written outside the extraction "
                f"folder (absolute path or '..'). Delete the file and fetch the official one."
            )


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open a zip whose member names are all safe; a damaged zip raises DataError."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable zip archive ({e}); the file is damaged, delete it and fetch it again.") from e
    try:
        check_member_names(zf.namelist(), path)
    except DataError:
        zf.close()
        raise
    return zf


def read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """Read one member; CRC and decompression errors become DataError."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"{zf.filename}: member {name!r} cannot be read ({e}); the archive is damaged, fetch it again.") from e


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract ``zip_path`` into ``dest``; nothing is written anywhere if any member is unsafe.

    Every member name is validated before the first byte is written, symbolic
    links are refused, and each extracted path is checked to resolve inside
    ``dest``. Returns the extracted file paths.
    """
    dest = Path(dest).resolve()
    with open_zip(zip_path) as zf:
        infos = zf.infolist()
        for info in infos:
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"{zip_path}: refusing the archive, member {info.filename!r} is a symbolic link.")
            target = (dest / info.filename).resolve()
            if target != dest and dest not in target.parents:
                raise DataError(f"{zip_path}: refusing the archive, member {info.filename!r} resolves outside {dest}.")
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for info in infos:
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise DataError(f"{zip_path}: member {info.filename!r} cannot be read ({e}); fetch the archive again.") from e
            written.append(target)
    return written


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit flush, fsync and rename it
    over ``path``; on any error (Ctrl-C included) remove it. ``path`` is therefore always either the
    old file or the complete new one. Every file this project writes goes through here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a shared folder needs others to read them
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def downloads_allowed(download: bool | None) -> bool:
    """An explicit argument wins; otherwise download unless REPTILE_BENCH_OFFLINE is set."""
    if download is not None:
        return download
    return os.environ.get("REPTILE_BENCH_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")


def download(url: str, dest: str | os.PathLike, md5: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to a temp file beside ``dest``, verify its md5, then rename it into place."""
    dest = Path(dest)
    with atomic_write(dest, suffix=".part") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        digest = hashlib.md5()
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != md5:  # raising here discards the temp file: nothing half-written is kept
            raise DataError(f"{dest.name}: md5 checksum is {digest.hexdigest()}, expected {md5}; "
                            f"the download from {url} is damaged; try again")
    return dest


def default_cache_dir() -> Path:
    """The one folder every preprocessing cache goes to: $REPTILE_BENCH_CACHE, else
    $XDG_CACHE_HOME/reptile-bench, else ~/.cache/reptile-bench.

    Never the data folder: writing into a user's data folder surprises people (it may be shared
    or read-only), and a cache beside the data would make behaviour depend on that folder's permissions.
    """
    explicit = os.environ.get("REPTILE_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reptile-bench"


def cache_file(data_root: str | os.PathLike, name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cache ``name`` of the data in ``data_root`` lives.

    ``cache_dir`` if given, else the shared cache folder (``default_cache_dir()``), the name tagged with a hash
    of the data folder's path so that each data folder has its own cache there (a folder without its
    data files then fails loudly instead of reusing another's cache).
    """
    if cache_dir is not None:
        return Path(cache_dir) / name
    tag = hashlib.sha1(str(Path(data_root).resolve()).encode()).hexdigest()[:10]
    stem, dot, suffix = name.partition(".")
    return default_cache_dir() / f"{stem}-{tag}{dot}{suffix}"


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping, compress: bool = True) -> Path:
    """Write arrays plus a JSON ``meta`` record to ``path`` atomically.

    An interrupted write leaves at most a stray ``.tmp`` file that is removed
    on the way out; ``path`` is either the old file or the complete new one.
    """
    path = Path(path)
    with atomic_write(path) as f:
        payload = dict(arrays, _meta=np.array(json.dumps(dict(meta), sort_keys=True)))
        (np.savez_compressed if compress else np.savez)(f, **payload)
    return path


def load_npz_checked(path: str | os.PathLike, expected_meta: Mapping) -> dict[str, np.ndarray] | None:
    """Arrays of a cache file, or None when it is absent, unreadable or built from other inputs.

    A damaged cache (truncated, bad CRC, wrong keys) is reported with a warning
    and treated as absent, so the caller rebuilds it.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop("_meta")))
    except Exception as e:  # any failure to read means the cache cannot be trusted
        warnings.warn(f"cache {path} is unreadable ({type(e).__name__}: {e}); rebuilding it", stacklevel=3)
        return None
    mismatched = {k: (meta.get(k), v) for k, v in expected_meta.items() if meta.get(k) != v}
    if mismatched:
        warnings.warn(f"cache {path} was built from other inputs {mismatched}; rebuilding it", stacklevel=3)
        return None
    return arrays
