"""Split roles: which images train, which make the choices, which report the score; and cross-split
duplicates.

A score is honest only on images that made no choice. So every dataset gets three roles, whatever its
own split names (the engine needs no change: it trains on "train" and selects on "val"):

* "train": what the weights are fitted on.
* "val", the SELECTION split: the best epoch, early stopping, temperature, test-time augmentation and
  recipe choices are made on it.
* "test", the REPORT split: scored once per run, never used to choose.

Real data (`own_selection=False`): "val" is a seeded, stratified carve-out of the dataset's own train split
(`selection_fraction` of it); "test" is the dataset's own val split (FER2013 PublicTest, AffectNet's
validation set), or its own test split when it has no val. A dataset's own test split that is not the report
split (fer2013_csv PrivateTest, FERPlus FER2013Test) becomes "heldout": counted, not used by default. A
dataset with only a train split gets both "val" and "test" carved out of it.
The synthetic data (`own_selection=True`) were generated with a selection split (val_set) and a report split
(test_set): they keep them.

The original split name stays in the frame column `origin`; `describe_roles` writes the one-line
descriptions (`Dataset.split_roles`) that pages print. The assignment is a pure function of the frame,
the fraction and the seed, and the split column enters the data fingerprint, so caches and checkpoints
notice any change of it.

Duplicates: FER2013 holds byte-identical faces in train and PublicTest (280 PublicTest images, some with
another label). `deduplicate` compares images by a hash of their decoded pixels and moves every val / test /
heldout row whose pixels equal an image of an earlier role (train for val; train and val for test and
heldout) to "<split>_dup", so the original report split (test + test_dup) can still be scored for
comparison with published numbers; `Dataset.duplicates` lists every moved row with the image it copies.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from ..paths import CACHE_DIR, folder_cache, save_arrays

if TYPE_CHECKING:
    from .datasets import Dataset

ROLES = ("train", "val", "test", "heldout")
# the roles a split's rows are compared with: an image is a duplicate when one of these already holds it
DEDUP_AGAINST = {"val": ("train",), "test": ("train", "val"), "heldout": ("train", "val")}
DUPLICATE_COLUMNS = ["location", "split", "duplicate_of", "label", "label_of_duplicate", "conflicting"]
HASH_CACHE_DIR = CACHE_DIR / "pixel-hashes"
_CARVE_SALT = 0x5E1EC7  # mixed into the seed so the carve-out draws a stream of its own


def carve(frame: pd.DataFrame, fraction: float, seed: int, salt: int = 0) -> np.ndarray:
    """Boolean mask of a seeded, stratified `fraction` of `frame`'s rows (stratified by `emotion`).

    The total is round(fraction * len(frame)), shared among the classes by largest remainder (ties to the
    class seen first); a class of two or more images gives at least one, so no class is missing from a
    small selection split. Which rows of a class are taken is a permutation drawn from (seed, salt), over
    the class's rows sorted by location: the same rows for the same data, whatever the frame's order.
    """
    order = np.argsort(frame["location"].to_numpy(dtype=str), kind="stable")
    emotions = frame["emotion"].to_numpy()[order]
    classes = list(dict.fromkeys(emotions))
    sizes = np.array([(emotions == c).sum() for c in classes])
    exact = fraction * sizes
    quota = np.floor(exact).astype(int)
    for i in sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), i))[
            : int(round(fraction * len(frame))) - quota.sum()]:
        quota[i] += 1
    quota = np.where((quota == 0) & (sizes >= 2), 1, quota)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _CARVE_SALT, salt])))
    mask = np.zeros(len(frame), dtype=bool)
    for c, q in zip(classes, quota):
        members = order[emotions == c]
        mask[members[rng.permutation(len(members))[:q]]] = True
    return mask


def assign_roles(frame: pd.DataFrame, selection_fraction: float, seed: int,
                 own_selection: bool = False) -> pd.DataFrame:
    """A copy of a reader's frame with `origin` (the split it was read as) and `split` set to its role
    (see the module docstring). `own_selection`: the dataset's own val split is a selection split (the
    synthetic data), so it is kept, not carved."""
    frame = frame.copy()
    origin = frame["split"].to_numpy(dtype=object).copy()
    frame["origin"] = origin
    present = set(origin)
    role = origin.copy()
    if own_selection:
        carve_val = "val" not in present
        report = "test" if "test" in present else None
    else:
        carve_val = True
        report = "val" if "val" in present else ("test" if "test" in present else None)
        role[origin == "val"] = "test"
        role[origin == "test"] = "test" if report == "test" else "heldout"
    train = np.flatnonzero(origin == "train")
    fraction = selection_fraction
    if report is None and len(train):  # no held-out split at all: the report split comes from train too
        taken = carve(frame.iloc[train], selection_fraction, seed, salt=1)
        role[train[taken]] = "test"
        train = train[~taken]
        fraction = selection_fraction / (1 - selection_fraction)  # of what is left: the same share of the whole
    if carve_val and len(train):
        role[train[carve(frame.iloc[train], fraction, seed)]] = "val"
    frame["split"] = role
    return frame


def pixel_hashes(ds: Dataset, workers: int | None = None) -> pd.Series:
    """Hash of each frame row's decoded, stored pixels (mode, size and bytes; no EXIF turn, no face crop),
    indexed like `ds.frame`; "" for an image that does not decode (the decoding step counts it as skipped).

    Decoding the 32k FER2013 JPEGs takes about 20 s on 2 busy cores, so a folder dataset's hashes are kept
    in .cache/pixel-hashes/, one table per data folder, each hash valid for its file's size and modification
    time: a later call decodes only new or changed files (a FER+ subset of the same folder reuses them).
    """
    if ds.pixels is not None:
        index = ds.frame["location"].str.split(":").str[1].astype(int).to_numpy()
        digests = [hashlib.blake2b(ds.pixels[i].tobytes(), digest_size=16).hexdigest() for i in index]
        return pd.Series(digests, index=ds.frame.index, dtype=str)
    locations = sorted(set(ds.frame["location"]))
    stamps = [(lambda st: f"{st.st_size}:{st.st_mtime_ns}")(os.stat(ds.path(loc))) for loc in locations]
    cache = folder_cache(HASH_CACHE_DIR, ds.root)
    try:
        with np.load(cache, allow_pickle=False) as z:
            known = dict(zip(zip(z["location"].tolist(), z["stamp"].tolist()), z["hash"].tolist()))
    except (OSError, ValueError, KeyError):  # missing or unreadable: decode everything
        known = {}
    current = set(zip(locations, stamps))
    missing = [key for key in zip(locations, stamps) if key not in known]
    if missing:
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            known.update(zip(missing, pool.map(lambda key: _file_pixel_hash(ds.path(key[0])), missing)))
        listed = set(locations)  # a changed file's old hash goes; files of other subsets stay
        keys = [k for k in known if k[0] not in listed or k in current]
        save_arrays(cache, location=np.array([k[0] for k in keys], dtype=str),
                    stamp=np.array([k[1] for k in keys], dtype=str), hash=np.array([known[k] for k in keys], dtype=str))
    by_location = {loc: known[(loc, stamp)] for loc, stamp in zip(locations, stamps)}
    return ds.frame["location"].map(by_location).astype(str)


def _file_pixel_hash(path) -> str:
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im)
            mode = im.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return ""
    head = f"{mode}{pixels.shape}{pixels.dtype}".encode()
    return hashlib.blake2b(head + pixels.tobytes(), digest_size=16).hexdigest()


def deduplicate(ds: Dataset, hashes: pd.Series | None = None) -> None:
    """Move every val / test / heldout row whose pixels equal an image of an earlier role (DEDUP_AGAINST)
    to "<split>_dup", and list the moved rows in `ds.duplicates` (DUPLICATE_COLUMNS): `duplicate_of` is the
    first copy in frame order, `label` and `label_of_duplicate` are emotion names, `conflicting` is true when
    any earlier copy has another emotion. Run after `assign_roles`."""
    hashes = (pixel_hashes(ds) if hashes is None else hashes).to_numpy(dtype=str)
    roles = ds.frame["split"].to_numpy(dtype=object)  # compared as assigned: a val_dup row still counts
    split = roles.copy()
    location, emotion = ds.frame["location"].to_numpy(dtype=str), ds.frame["emotion"].to_numpy(dtype=object)
    rows = []
    for name, against in DEDUP_AGAINST.items():
        first, seen = {}, {}  # hash -> first earlier copy, -> the emotions of all earlier copies
        for i in np.flatnonzero(np.isin(roles, against) & (hashes != "")):
            first.setdefault(hashes[i], i)
            seen.setdefault(hashes[i], set()).add(emotion[i])
        for i in np.flatnonzero(roles == name):
            j = first.get(hashes[i])
            if j is not None:
                split[i] = f"{name}_dup"
                rows.append(dict(location=location[i], split=name, duplicate_of=location[j], label=emotion[i],
                                 label_of_duplicate=emotion[j], conflicting=bool(seen[hashes[i]] - {emotion[i]})))
    ds.frame = ds.frame.assign(split=split)
    ds.duplicates = pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)


def duplicate_counts(ds: Dataset) -> pd.DataFrame:
    """Per split that lost rows to deduplication: images moved, distinct duplicated images (groups) and
    groups whose copies disagree on the label."""
    d = ds.duplicates
    if d.empty:
        return pd.DataFrame(columns=["split", "images", "groups", "conflicting_groups"])
    group = d["split"] + "\0" + d["duplicate_of"]
    return (d.assign(group=group).groupby("split", sort=False)
            .apply(lambda g: pd.Series(dict(images=len(g), groups=g["group"].nunique(),
                                            conflicting_groups=g.loc[g["conflicting"], "group"].nunique())),
                   include_groups=False)
            .reset_index())


def describe_roles(ds: Dataset, selection_fraction: float) -> dict[str, str]:
    """One line per split present: its role, where its images come from and how many there are (what pages
    print above a score), e.g. "selection: a seeded, stratified 10% of the dataset's own train split
    (2,643 images; 228 duplicates of train images moved to val_dup)"."""
    frame = ds.frame
    n = frame["split"].value_counts()
    moved = ds.duplicates["split"].value_counts()
    carved = f"a seeded, stratified {selection_fraction:.0%} of the dataset's own train split"
    role = {"train": "training", "val": "selection", "test": "report", "heldout": "held out, not used by default"}

    def source(split: str) -> str:
        origins = sorted(frame.loc[frame["split"] == split, "origin"].unique())
        if split in ("val", "test") and origins == ["train"]:
            return carved + (" (the dataset has no held-out split)" if split == "test" else "")
        less = split == "train" and (frame["origin"].eq("train") & frame["split"].ne("train")).any()
        return " + ".join(f"the dataset's own {o} split" for o in origins) + (", less the carve-outs" if less else "")

    def count(split: str) -> str:
        dup = int(moved.get(split, 0))
        against = " and ".join(DEDUP_AGAINST.get(split, ()))
        return f"({int(n[split]):,} images" + (f"; {dup:,} duplicates of {against} images moved to {split}_dup)"
                                                 if dup else ")")

    lines = {split: f"{role[split]}: {source(split)} {count(split)}" for split in ROLES if split in n}
    for split, against in DEDUP_AGAINST.items():
        if f"{split}_dup" in n:
            lines[f"{split}_dup"] = (f"set aside: {split} images whose pixels equal a {' or '.join(against)} image "
                                     f"({int(n[split + '_dup']):,} images)")
    return lines
