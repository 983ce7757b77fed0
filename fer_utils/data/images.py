"""Decoding a dataset's images into in-memory uint8 arrays at the training resolution.

Small FER images (48-96 px) fit in memory many times over, and decoding them
once is far cheaper than decoding every epoch; the arrays are cached on disk
keyed on the data fingerprint, split, size and channels. Images that fail to
decode are skipped, counted and recorded in `Dataset.skipped`, never a crash.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from ..paths import CACHE_DIR as _CACHE_ROOT
from .datasets import Dataset

CACHE_DIR = _CACHE_ROOT / "decoded"


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


def to_array(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """PIL image -> C x size x size uint8 (area interpolation when shrinking)."""
    arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    if arr.shape[:2] != (size, size):
        shrink = arr.shape[0] > size or arr.shape[1] > size
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode(args):
    ds, row, size, channels = args
    try:
        return to_array(open_image(ds, row), size, channels), None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return None, f"unreadable image: {type(err).__name__}: {err}"


def load_split(ds: Dataset, split: str, size: int, channels: int = 1, cache: bool = True,
               workers: int | None = None):
    """Decode a split: returns (x uint8 [N, C, size, size], y int64 [N], locations [N])."""
    rows = ds.split(split)
    path = CACHE_DIR / f"{ds.fingerprint}-{split}-{size}-{channels}.npz"
    if cache and ds.fingerprint and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            x, y, locations = z["x"], z["y"], z["locations"]
            failed = list(zip(z["failed_locations"], z["failed_reasons"]))
    else:
        records = rows.to_dict("records")
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(_decode, [(ds, r, size, channels) for r in records], chunksize=256))
        ok = [i for i, (a, _) in enumerate(decoded) if a is not None]
        failed = [(records[i]["location"], err) for i, (_, err) in enumerate(decoded) if err]
        x = (np.stack([decoded[i][0] for i in ok]) if ok
             else np.zeros((0, channels, size, size), np.uint8))
        y = rows["label"].to_numpy()[ok].astype(np.int64)
        locations = rows["location"].to_numpy()[ok].astype(str)
        if cache and ds.fingerprint:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, x=x, y=y, locations=locations,
                     failed_locations=np.array([f[0] for f in failed], dtype=str),
                     failed_reasons=np.array([f[1] for f in failed], dtype=str))
            os.replace(tmp, path)
    ds.skip([dict(location=str(loc), split=split, reason=str(reason)) for loc, reason in failed])
    if failed:  # keep the manifest's counts equal to what can actually be used
        ds.frame = ds.frame[~ds.frame["location"].isin({str(f[0]) for f in failed})].reset_index(drop=True)
    return x, y, locations
