"""Decoding a dataset's images into uint8 arrays at the training resolution, and the decoded cache.

Decoding once is far cheaper than decoding every epoch, so each split is decoded to
a cache file keyed on the data fingerprint, split, size and channels. The cache is
built for data of any size in bounded memory:
- Images are decoded a chunk at a time (about CHUNK_BYTES of pixels) and appended to
  a .npy file, so building it never holds more than one chunk. The split comes back
  as a memory map of that file: the pages are the kernel's page cache, which it can
  drop and re-read, not the process's own (anonymous) memory. The memory decoding adds
  therefore does not grow with the number of images (benchmarks/scale.py measures it:
  +66 MiB at 5,000 and +69 MiB at 50,000 images of 224 px).
- The map is copy-on-write (numpy mmap_mode "c"): the file can never be changed
  through it, yet the array is writable, as an in-memory one was, so torch.from_numpy
  takes it without copying or warning.
- A build writes `<key>.npy.tmp` and renames it when complete, then writes the
  sidecar `<key>.meta.npz` (format version, key, labels, locations, skipped images)
  last: a cache is used only when its sidecar has this CACHE_FORMAT and key and the
  pixels have the shape it says. An interrupted build, a full disk, a cache of an
  older format (format 1: one .npz per split, loaded whole) or of other params is
  rebuilt from scratch, never half-used; a split larger than the free disk space is
  refused before decoding starts. Builds of the same key are serialised by
  a lock file, so concurrent processes (torchrun ranks on several nodes) do not
  write over each other.
Images that fail to decode are skipped, counted and recorded in `Dataset.skipped`,
never a crash.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

try:
    import fcntl
except ImportError:  # Windows: no flock, so concurrent builds of one key are not serialised there
    fcntl = None

from ..paths import CACHE_DIR as _CACHE_ROOT
from ..paths import atomic_write, display_path
from .datasets import DataError, Dataset

CACHE_DIR = _CACHE_ROOT / "decoded"
CACHE_FORMAT = 2  # 1: <key>.npz loaded whole; 2: <key>.npy memory-mapped + <key>.meta.npz
CHUNK_BYTES = 64 * 2**20  # pixels decoded between two writes: bounds the memory a build takes
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def open_image(ds: Dataset, row) -> Image.Image:
    """One manifest row as a PIL image, EXIF-rotated and cropped to its face box when it has one."""
    if ds.pixels is not None:
        return Image.fromarray(ds.pixels[int(row["location"].split(":")[1])], mode="L")
    with Image.open(ds.path(row["location"])) as im:
        im = ImageOps.exif_transpose(im)
        im.load()
    if "face_w" in row and row["face_w"] == row["face_w"] and row["face_w"] > 0:
        x, y, w, h = (int(row[k]) for k in ("face_x", "face_y", "face_w", "face_h"))
        im = im.crop((max(x, 0), max(y, 0), min(x + w, im.width), min(y + h, im.height)))
    return im


def to_eight_bit(im: Image.Image) -> Image.Image:
    """Any PIL mode as one that converts faithfully to L or RGB.

    16-bit grayscale (PNG, TIFF) is scaled to 0-255: PIL's own convert("L") clips it, which
    turns nearly every pixel white. Palette images go through RGBA so that a transparent
    colour converts without PIL's warning."""
    if im.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(im, dtype=np.float32) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    if im.mode == "P":
        return im.convert("RGBA")
    return im


def to_array(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """PIL image of any mode -> C x size x size uint8 (area interpolation when shrinking)."""
    arr = np.asarray(to_eight_bit(im).convert("L" if channels == 1 else "RGB"))
    if arr.shape[:2] != (size, size):
        shrink = arr.shape[0] > size or arr.shape[1] > size
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode_into(out: np.ndarray, j: int, ds: Dataset, row, size: int, channels: int) -> str | None:
    """Decode `row` into out[j]; returns why it failed, or None."""
    try:
        out[j] = to_array(open_image(ds, row), size, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"unreadable image: {type(err).__name__}: {err}"
    return None


def _decode_rows(ds: Dataset, rows, size: int, channels: int, workers: int | None, write):
    """Decode `rows` in order, one chunk at a time, and pass each chunk's decoded images, in order, to
    `write` (uint8 [n, C, size, size]). Returns the decoded images' labels (int64) and locations, and
    [(location, reason)] of the others. Threads suffice: PIL and OpenCV release the GIL."""
    per_chunk = max(1, CHUNK_BYTES // (channels * size * size))
    buffer = np.empty((min(per_chunk, len(rows)), channels, size, size), np.uint8)
    ok, failed = [], []
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(rows), per_chunk):
            records = rows.iloc[start:start + per_chunk].to_dict("records")
            errors = list(pool.map(lambda jr: _decode_into(buffer, jr[0], ds, jr[1], size, channels),
                                   enumerate(records)))
            good = np.array([err is None for err in errors], dtype=bool)
            ok.append(start + np.flatnonzero(good))  # arrays, not a Python int per image
            failed.extend((r["location"], err) for r, err in zip(records, errors) if err)
            if good.any():
                write(buffer[:len(records)] if good.all() else buffer[:len(records)][good])
    ok = np.concatenate([np.zeros(0, np.int64), *ok])
    return rows["label"].to_numpy()[ok].astype(np.int64), rows["location"].to_numpy()[ok].astype(str), failed


def _npy_header(shape: tuple) -> bytes:
    """The .npy header of a C-order uint8 array. numpy pads it so that its length does not depend on
    shape[0], which lets a build write it first and rewrite it with the final count."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, dict(descr="|u1", fortran_order=False, shape=shape))
    return buf.getvalue()


def _write_rows(f, block: np.ndarray) -> None:
    """Append decoded images to the open cache file (a function of its own: tests make it fail)."""
    f.write(memoryview(np.ascontiguousarray(block)).cast("B"))


@contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on `path` (created if needed) for the block: one build per key at a time."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cache(x_path: Path, meta_path: Path, key: str, image_shape: tuple):
    """(x, y, locations, failed) from a complete cache of this format and key, else None."""
    try:
        with np.load(meta_path, allow_pickle=False) as z:
            if int(z["format"]) != CACHE_FORMAT or str(z["key"]) != key:
                return None
            y, locations = z["y"], z["locations"]
            failed = list(zip(z["failed_locations"].tolist(), z["failed_reasons"].tolist()))
        x = np.load(x_path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, truncated or not ours: rebuild
        return None
    if x.dtype != np.uint8 or x.shape != (len(y), *image_shape):
        return None
    return x, y, locations, failed


def _build_cache(ds: Dataset, rows, split: str, key: str, x_path: Path, meta_path: Path, size: int,
                 channels: int, workers: int | None) -> None:
    """Decode `rows` into x_path (via a temporary file) and write the sidecar last."""
    for stale in (meta_path, x_path, CACHE_DIR / f"{key}.npz"):  # the .npz: format 1
        stale.unlink(missing_ok=True)
    shape = (len(rows), channels, size, size)
    need = int(np.prod(shape))
    tmp = x_path.with_name(x_path.name + ".tmp")  # under the lock: a killed build's is simply overwritten
    try:
        if need > shutil.disk_usage(CACHE_DIR).free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with open(tmp, "wb") as f:
            header = _npy_header(shape)
            f.write(header)
            y, locations, failed = _decode_rows(ds, rows, size, channels, workers,
                                                lambda block: _write_rows(f, block))
            if len(y) < len(rows):  # failed images left no rows: the header must say so
                final = _npy_header((len(y), *shape[1:]))
                if len(final) != len(header):
                    raise RuntimeError(f"numpy {np.__version__} does not pad .npy headers; numpy>=1.26 does")
                f.seek(0)
                f.write(final)
        os.replace(tmp, x_path)

        def save_meta(path: Path):
            with open(path, "wb") as m:
                np.savez(m, format=CACHE_FORMAT, key=key, y=y, locations=locations,
                         failed_locations=np.array([f[0] for f in failed], dtype=str),
                         failed_reasons=np.array([f[1] for f in failed], dtype=str))
        atomic_write(meta_path, save_meta)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        x_path.unlink(missing_ok=True)  # pixels without their sidecar would only take up the disk
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the disk for the decoded-image cache in {display_path(CACHE_DIR)}: the "
                f"'{split}' split needs {need / 2**30:.2f} GiB ({len(rows):,} images, {channels} x "
                f"{size} x {size} bytes each; {shutil.disk_usage(CACHE_DIR).free / 2**30:.2f} GiB free). Free "
                "space and run again; nothing half-written was kept") from err
        raise


def _cached_split(ds: Dataset, rows, split: str, size: int, channels: int, workers: int | None):
    """(x memory map, y, locations, failed) from the cache, built first if it is missing or not valid."""
    key = f"{ds.fingerprint}-{split}-{size}-{channels}"
    x_path, meta_path = CACHE_DIR / f"{key}.npy", CACHE_DIR / f"{key}.meta.npz"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE_DIR / f"{key}.lock"):
        cached = _read_cache(x_path, meta_path, key, (channels, size, size))
        if cached is None:
            _build_cache(ds, rows, split, key, x_path, meta_path, size, channels, workers)
            cached = _read_cache(x_path, meta_path, key, (channels, size, size))
    if cached is None:
        raise DataError(f"the decoded-image cache {display_path(x_path)} was rebuilt but cannot be read back")
    return cached


def load_split(ds: Dataset, split: str, size: int, channels: int = 1, cache: bool = True,
               workers: int | None = None):
    """Decode a split: returns (x uint8 [N, C, size, size], y int64 [N], locations [N]).

    With the cache (cache=True and the dataset has a fingerprint) x is a copy-on-write memory map of
    the cache file (see the module docstring); without it, an in-memory array. Same values either way."""
    rows = ds.split(split)
    if cache and ds.fingerprint:
        x, y, locations, failed = _cached_split(ds, rows, split, size, channels, workers)
    else:
        x = np.empty((len(rows), channels, size, size), np.uint8)
        filled = 0

        def write(block):
            nonlocal filled
            x[filled:filled + len(block)] = block
            filled += len(block)
        y, locations, failed = _decode_rows(ds, rows, size, channels, workers, write)
        x = x[:filled]
    ds.skip([dict(location=str(loc), split=split, reason=str(reason)) for loc, reason in failed])
    if failed:  # keep the manifest's counts equal to what can actually be used
        ds.frame = ds.frame[~ds.frame["location"].isin({str(f[0]) for f in failed})].reset_index(drop=True)
    return x, y, locations
