"""Dataset readers. Every format becomes the same `Dataset`: a manifest with one
row per image (location, label, emotion, split, plus valence, arousal and face
box where the format has them), the dataset's own class list, and a table of
what was skipped and why.

The manifest holds a few numbers and one string per image (about 150 bytes,
`manifest_bytes`), so that it stays small beside the decoded images at hundreds
of thousands of them;
landmarks, which would be most of it, are read from the annotations when asked
(`landmarks`). Readers build it from columns, not from a dict per image.

Nothing is dropped silently: every row a reader leaves out lands in
`Dataset.skipped` with its reason, and the book reports the counts.

A reader's `split` is the dataset's own split name (train, val, test);
`open_dataset` then gives every row its role (`splits.assign_roles`: train,
val = selection, test = report, heldout), keeps the own name in `origin`,
and moves cross-split duplicates aside (`splits.deduplicate`).
"""
from __future__ import annotations

import hashlib
import os
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.registry import DATASETS
from ..paths import CACHE_DIR, folder_cache, save_arrays
from . import labels, splits, synthetic

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {
    "train": "train", "training": "train", "train_set": "train",
    "val": "val", "valid": "val", "validation": "val", "val_set": "val", "publictest": "val",
    "test": "test", "test_set": "test", "privatetest": "test",
    # the official FERPlus release's folder names
    "fer2013train": "train", "fer2013valid": "val", "fer2013test": "test",
}
# FER+'s vote file, at the root of a FER+ copy (or beside a class-folder FER2013 copy's split folders).
FERPLUS_VOTES = "ferplus_votes.csv"
_NON_EMOTION_VOTES = ("unknown", "nf", "not_face", "notface", "no-face")
SPLIT_ORDER = ("train", "val", "test", "heldout", "val_dup", "test_dup", "heldout_dup")


class DataError(ValueError):
    pass


@dataclass
class Dataset:
    format: str
    root: Path
    classes: tuple[str, ...]
    # location, label, emotion, split, [origin, valence, arousal, face_*, clean_emotion, clean_label,
    # votes_<emotion>]; landmarks: `landmarks(ds, locations)`
    frame: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["location", "split", "reason"]))
    pixels: np.ndarray | None = None  # fer2013_csv keeps decoded rows here; location is "row:<i>"
    notes: list[str] = field(default_factory=list)  # things the book should state (e.g. empty classes)
    fingerprint: str = ""
    split_roles: dict[str, str] = field(default_factory=dict)  # split -> one line: its role and source
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=splits.DUPLICATE_COLUMNS))

    @property
    def splits(self) -> list[str]:
        present = set(self.frame["split"])
        return [s for s in SPLIT_ORDER if s in present]

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]

    def path(self, location: str) -> Path:
        return self.root / location

    def skip(self, rows: list[dict]) -> None:
        """Record rows found unusable after reading (e.g. images that fail to decode)."""
        known = set(self.skipped["location"])
        rows = [r for r in rows if r["location"] not in known]
        if rows:
            self.skipped = pd.concat([self.skipped, pd.DataFrame(rows)], ignore_index=True)

    def skip_counts(self) -> pd.DataFrame:
        """Skipped rows counted by split and reason."""
        if self.skipped.empty:
            return pd.DataFrame(columns=["split", "reason", "count"])
        reason = self.skipped["reason"].str.replace(r":.*", "", regex=True)
        return (self.skipped.assign(reason=reason).groupby(["split", "reason"]).size()
                .rename("count").reset_index())


def _missing(root: Path, fmt: str, what: str) -> DataError:
    return DataError(f"{what} in data folder '{root}'. Expected layout for dataset '{fmt}': {DATASETS[fmt]}")


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in SPLIT_ORDER, then by location: one order for the same data, whatever the reading order."""
    return frame.sort_values(["split", "location"], key=lambda s: s.map(SPLIT_ORDER.index) if s.name == "split"
                             else s, kind="stable").reset_index(drop=True)


def _finish(fmt: str, root: Path, rows: list[dict] | dict[str, list] | pd.DataFrame, skipped: list[dict],
            **kw) -> Dataset:
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise _missing(root, fmt, "no usable labelled images")
    frame = frame[frame["emotion"].notna()]
    classes = labels.class_list(frame["emotion"])
    frame["label"] = frame["emotion"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    if "clean_emotion" in frame:  # -1: a clean class that no (noisy) label uses, so the model has no output for it
        index = {c: i for i, c in enumerate(classes)}
        frame["clean_label"] = frame["clean_emotion"].map(index).fillna(-1).astype("int64")
    frame = _sorted(frame)
    skipped_df = pd.DataFrame(skipped, columns=["location", "split", "reason"])
    ds = Dataset(fmt, root, classes, frame, skipped_df, **kw)
    for split in ds.splits:
        absent = sorted(set(classes) - set(ds.split(split)["emotion"]))
        if absent:
            ds.notes.append(f"split '{split}' has no images of: {', '.join(absent)}")
    return ds


def _non_emotion(value, location, split, skipped) -> str | None:
    """AffectNet id -> emotion, recording non-emotion and unknown ids as skipped."""
    try:
        label_id = int(float(value))
    except (TypeError, ValueError):
        skipped.append(dict(location=location, split=split, reason=f"unreadable label: {value!r}"))
        return None
    name = labels.affectnet_name(label_id)
    if name is None:
        kind = labels.NON_EMOTIONS.get(label_id)
        reason = f"not an emotion: {label_id} ({kind})" if kind else f"label outside the known set: {label_id}"
        skipped.append(dict(location=location, split=split, reason=reason))
    return name


def _landmarks(text) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in str(text).replace(",", ";").split(";") if v.strip()], dtype=np.float32)
    except ValueError:
        return None
    return values.reshape(-1, 2) if values.size and values.size % 2 == 0 else None


def _annotation(image: str, kind: str) -> str:
    """An AffectNet-mini image's annotation file: <split>/annotations/<id>_<kind>.npy for <split>/images/<id>.*

    Strings, not Paths, here and in the reader's loop: pathlib interns every part of a path, so each image's
    Path objects left hundreds of bytes in the interpreter (interned names, freed memory it keeps)."""
    folder, name = os.path.split(image)
    return os.path.join(os.path.dirname(folder), "annotations", f"{os.path.splitext(name)[0]}_{kind}.npy")


def _npy_scalar(path: str):
    """The value of a 0-d .npy annotation; OSError or ValueError, naming the file, when it cannot be read."""
    try:
        return np.load(path, allow_pickle=False).item()
    except (EOFError, ValueError) as err:  # EOFError: an empty file
        raise ValueError(f"{os.path.basename(path)}: {err}") from err


def read_affectnet_mini(root: Path, fmt: str = "affectnet_mini") -> Dataset:
    """The AffectNet-mini layout: <split>/images/<id>.* with <split>/annotations/<id>_exp.npy (and
    _exp_clean, _val, _aro, _lnd beside it when present).

    Reading is one small .npy file per annotation, four or five per image: about 5 s for the default
    synthetic data's 5,600 images on 2 cores, minutes at AffectNet's 288k, and each chapter opens the data
    again. So what the annotations say is kept in .cache/manifests/ (`_cached_manifest`), valid while every
    file of the split folders has the name, size and modification time it had."""
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and SPLIT_NAMES.get(d.name.lower())
                  and (d / "images").is_dir()] if root.is_dir() else []
    if not split_dirs:
        raise _missing(root, fmt, "no train_set/images or val_set/images")
    columns, skipped = _cached_manifest(root, split_dirs, lambda: _read_mini_annotations(root, split_dirs))
    return _finish(fmt, root, columns, skipped)


def _read_mini_annotations(root: Path, split_dirs: list[Path]) -> tuple[dict, list[dict]]:
    """read_affectnet_mini's columns (location, emotion, split, clean_emotion when any image has one,
    valence, arousal) and skipped rows, from the annotation files."""
    columns = dict(location=[], emotion=[], split=[], clean_emotion=[], valence=array("d"), arousal=array("d"))
    skipped, any_clean = [], False
    for split_dir in split_dirs:
        split = SPLIT_NAMES[split_dir.name.lower()]
        for name in sorted(os.listdir(split_dir / "images")):
            location = os.path.join(split_dir.name, "images", name)
            image = os.path.join(root, location)
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                skipped.append(dict(location=location, split=split, reason="not an image file"))
                continue
            exp = _annotation(image, "exp")
            if not os.path.isfile(exp):
                skipped.append(dict(location=location, split=split, reason="no annotation"))
                continue
            try:  # any annotation file of the image unreadable: the image is skipped, with the reason
                emotion = _non_emotion(_npy_scalar(exp), location, split, skipped)
                if emotion is None:
                    continue
                clean = _annotation(image, "exp_clean")  # the synthetic data's label before label noise
                clean_emotion = np.nan
                if os.path.isfile(clean):
                    any_clean, clean_emotion = True, labels.affectnet_name(int(_npy_scalar(clean)))
                valence, arousal = (float(_npy_scalar(f)) if os.path.isfile(f) else np.nan
                                    for f in (_annotation(image, "val"), _annotation(image, "aro")))
                lnd = _annotation(image, "lnd")  # read only so that an unreadable one skips the image too
                if os.path.isfile(lnd):
                    _npy_scalar(lnd)
            except (OSError, ValueError) as err:
                skipped.append(dict(location=location, split=split, reason=f"unreadable annotation: {err}"))
                continue
            for key, value in zip(columns, (location, emotion, split, clean_emotion, valence, arousal)):
                columns[key].append(value)
    if not any_clean:
        del columns["clean_emotion"]
    return columns, skipped


def _column(name: str, values: np.ndarray):
    """A cached column as the reader builds it: floats as an array; strings as a list in which the few
    distinct labels and split names are each one shared object (as the reader's are), so the manifest stays
    at its size per image; "" in clean_emotion is a missing clean label (NaN)."""
    if values.dtype.kind == "f":
        return values
    if name == "location":
        return values.tolist()
    return [np.nan if name == "clean_emotion" and v == "" else sys.intern(v) for v in values.tolist()]


MANIFEST_CACHE_DIR = CACHE_DIR / "manifests"
MANIFEST_CACHE_VERSION = 1  # what _read_mini_annotations reads and how: a new version re-reads every folder
_SKIPPED_COLUMNS = ("location", "split", "reason")


def _folder_stamp(split_dirs: list[Path]) -> str:
    """sha256 of every entry of the split folders' images/ and annotations/: name, size, modification time."""
    h = hashlib.sha256(str(MANIFEST_CACHE_VERSION).encode())
    for split_dir in split_dirs:
        for sub in ("images", "annotations"):
            if not (split_dir / sub).is_dir():
                continue
            with os.scandir(split_dir / sub) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    st = entry.stat()
                    h.update(f"{split_dir.name}/{sub}/{entry.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cached_manifest(root: Path, split_dirs: list[Path], read) -> tuple[dict, list[dict]]:
    """`read()`'s (columns, skipped), from the folder's cache file when its stamp (`_folder_stamp`) still
    holds, else read and cached (one file per data folder, replaced; an unreadable one is read again)."""
    stamp = _folder_stamp(split_dirs)
    cache = folder_cache(MANIFEST_CACHE_DIR, root)
    try:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["stamp"]) == stamp:
                columns = {k.removeprefix("column_"): _column(k.removeprefix("column_"), z[k])
                           for k in z.files if k.startswith("column_")}
                skipped = [dict(zip(_SKIPPED_COLUMNS, row)) for row in
                           zip(*(z[f"skipped_{k}"].tolist() for k in _SKIPPED_COLUMNS))]
                return columns, skipped
    except (OSError, ValueError, KeyError):  # missing or unreadable: read the annotations
        pass
    columns, skipped = read()
    arrays = {f"column_{k}": (np.array(["" if isinstance(v, float) else v for v in values], dtype=str)
                              if k == "clean_emotion" else np.asarray(values, dtype=np.float64)
                              if isinstance(values, array) else np.array(values, dtype=str))
              for k, values in columns.items()}
    save_arrays(cache, stamp=np.array(stamp), **arrays,
                **{f"skipped_{k}": np.array([r[k] for r in skipped], dtype=str) for k in _SKIPPED_COLUMNS})
    return columns, skipped


def _affectnet_image_root(root: Path, first: str) -> Path:
    for candidate in (root, root / "Manually_Annotated_Images",
                      root / "Manually_Annotated" / "Manually_Annotated_Images"):
        if (candidate / first).is_file():
            return candidate
    return root


def _affectnet_csv_tables(root: Path, landmarks: bool = False):
    """(split, table) for training.csv and validation.csv, each table checked for the columns the reader needs
    and given the images' locations (column `location`, relative to root). The landmark column, most of a
    CSV's bytes, is read only when `landmarks`."""
    fmt = "affectnet_csv"
    files = {"train": root / "training.csv", "val": root / "validation.csv"}
    if not all(f.is_file() for f in files.values()):
        raise _missing(root, fmt, "no training.csv and validation.csv")
    for split, csv in files.items():
        table = pd.read_csv(csv, usecols=lambda column: landmarks or column != "facial_landmarks")
        need = {"subDirectory_filePath", "expression", "face_x", "face_y", "face_width", "face_height"}
        if need - set(table.columns):
            raise DataError(f"{csv} lacks columns {sorted(need - set(table.columns))}; expected {DATASETS[fmt]}")
        image_root = _affectnet_image_root(root, str(table["subDirectory_filePath"].iloc[0])) if len(table) else root
        table["location"] = [str((image_root / p).relative_to(root)) for p in table["subDirectory_filePath"]]
        yield split, table


def read_affectnet_csv(root: Path) -> Dataset:
    """The manifest is built from the tables' columns, not a dict per row (see the module docstring)."""
    parts, skipped = [], []
    for split, table in _affectnet_csv_tables(root):
        keep, emotions = np.zeros(len(table), dtype=bool), []
        for i, (location, expression) in enumerate(zip(table["location"], table["expression"])):
            emotion = _non_emotion(expression, location, split, skipped)
            if emotion is None:
                continue
            if not os.path.isfile(os.path.join(root, location)):
                skipped.append(dict(location=location, split=split, reason="file not found"))
                continue
            keep[i] = True
            emotions.append(emotion)
        kept = table[keep]
        columns = dict(location=kept["location"].to_numpy(), emotion=emotions, split=split)
        for key in ("valence", "arousal"):
            columns[key] = kept[key].astype(float).to_numpy() if key in kept else np.nan
        for key, column in (("face_x", "face_x"), ("face_y", "face_y"), ("face_w", "face_width"),
                            ("face_h", "face_height")):
            columns[key] = kept[column].astype(int).to_numpy()
        parts.append(pd.DataFrame(columns))
    return _finish("affectnet_csv", root, pd.concat(parts, ignore_index=True), skipped)


def landmarks(ds: Dataset, locations) -> list[np.ndarray | None]:
    """Each location's landmarks ((68, 2) float32: x, y in the image's pixels, iBUG order), None where its
    annotation has none or the format has no landmarks.

    Read from the annotations when asked, not kept in the manifest: one array per image was most of the
    manifest's memory (about 1 KiB of the 1.7 KiB an opened image took), and only the saliency region shares
    use them, on one split."""
    locations = [str(location) for location in locations]
    if ds.format in ("affectnet_mini", "synthetic"):
        files = (_annotation(os.path.join(ds.root, location), "lnd") for location in locations)
        return [_landmarks(_npy_scalar(f)) if os.path.isfile(f) else None for f in files]
    if ds.format == "affectnet_csv":
        wanted, found = set(locations), {}
        for _, table in _affectnet_csv_tables(ds.root, landmarks=True):
            texts = table["facial_landmarks"] if "facial_landmarks" in table else [""] * len(table)
            found.update((location, _landmarks(text)) for location, text in zip(table["location"], texts)
                         if location in wanted)
        return [found.get(location) for location in locations]
    return [None] * len(locations)


def read_fer2013_csv(root: Path) -> Dataset:
    fmt = "fer2013_csv"
    candidates = [root / "fer2013.csv", root / "fer2013.csv.gz"] if root.is_dir() else [root]
    csv = next((c for c in candidates if c.is_file()), None)
    if csv is None:
        raise _missing(root, fmt, "no fer2013.csv or fer2013.csv.gz")
    table = pd.read_csv(csv, dtype={"pixels": str, "Usage": str})
    if {"emotion", "pixels", "Usage"} - set(table.columns):
        raise DataError(f"{csv} must have columns emotion, pixels, Usage; found {list(table.columns)}")
    rows, skipped, pixels = [], [], []
    for i, rec in enumerate(table.itertuples(index=False)):
        location = f"row:{i}"
        split = SPLIT_NAMES.get(str(rec.Usage).strip().lower())
        if split is None:
            skipped.append(dict(location=location, split="?", reason=f"unknown Usage: {rec.Usage!r}"))
            continue
        try:
            label_id = int(rec.emotion)
            emotion = labels.FER2013_IDS[label_id] if 0 <= label_id < len(labels.FER2013_IDS) else None
        except (TypeError, ValueError):
            emotion = None
        if emotion is None:
            skipped.append(dict(location=location, split=split, reason=f"label outside the known set: {rec.emotion!r}"))
            continue
        try:
            values = np.array(str(rec.pixels).split(), dtype=np.int64)
        except ValueError:
            values = np.array([])
        side = int(round(np.sqrt(values.size)))
        if values.size == 0 or side * side != values.size or values.min() < 0 or values.max() > 255:
            skipped.append(dict(location=location, split=split, reason="bad pixel row"))
            continue
        rows.append(dict(location=f"row:{len(pixels)}", emotion=emotion, split=split))
        pixels.append(values.astype(np.uint8).reshape(side, side))
    if len({p.shape for p in pixels}) > 1:
        raise DataError(f"{csv}: pixel rows have different sizes")
    root = csv.parent
    return _finish(fmt, root, rows, skipped, pixels=np.stack(pixels) if pixels else None)


def read_folders(root: Path, fmt: str = "folders") -> Dataset:
    if not root.is_dir():
        raise _missing(root, fmt, "folder does not exist")
    rows, skipped, notes = [], [], []
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_NAMES]
    if not split_dirs:
        raise _missing(root, fmt, "no split folders (train/, val/, test/)")
    for split_dir in split_dirs:
        split = SPLIT_NAMES[split_dir.name.lower()]
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            emotion = labels.canonical(class_dir.name)
            files = sorted(f for f in class_dir.rglob("*") if f.is_file())
            if not files:
                notes.append(f"class folder '{class_dir.relative_to(root)}' is empty")
            for f in files:
                location = str(f.relative_to(root))
                if emotion is None:
                    skipped.append(dict(location=location, split=split,
                                        reason=f"unknown class folder: {class_dir.name}"))
                elif f.suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append(dict(location=location, split=split, reason="not an image file"))
                else:
                    rows.append(dict(location=location, emotion=emotion, split=split))
    ds = _finish(fmt, root, rows, skipped)
    ds.notes[:0] = notes
    return ds


def read_ferplus(root: Path, rule: str = "majority") -> Dataset:
    """FER+ labels from the crowd votes under `rule` (`labels.ferplus_winner`: "majority" is the FER+ paper's
    rule, "plurality" the arg-max); every face the rule drops is in `skipped` with the reason.

    The vote distribution is kept for soft-label training: columns `votes_<emotion>`, one per emotion vote
    column, are that face's raw emotion votes normalised to sum 1 (unknown and not-a-face votes left out).
    A path's first folder names its split (SPLIT_NAMES, incl. FERPlus's FER2013Train/Valid/Test); any other
    first folder is an error, never a guess: a test face taken for a train face would be trained on.
    """
    fmt = "ferplus"
    csv = root / FERPLUS_VOTES if root.is_dir() else root
    if not csv.is_file():
        raise _missing(root, fmt, f"no {FERPLUS_VOTES}")
    table, emotions, others = read_vote_table(csv)
    paths = table["path"].astype(str)
    folders = paths.map(lambda p: Path(p).parts[0] if len(Path(p).parts) > 1 else "")
    unknown = sorted(set(folders) - {f for f in folders if f.lower() in SPLIT_NAMES})
    if unknown:
        raise DataError(f"{csv}: paths must start with a split folder ({', '.join(sorted(SPLIT_NAMES))}); "
                        f"found {', '.join(repr(f) for f in unknown)} (e.g. {paths[folders == unknown[0]].iloc[0]!r})")
    vote_cols = list(emotions.values()) + others
    votes = table[vote_cols].to_numpy(dtype=np.float64)
    emotion_votes = votes[:, :len(emotions)]
    rows, skipped, names = [], [], list(emotions)
    base = csv.parent
    for i, location in enumerate(paths):
        split = SPLIT_NAMES[folders[i].lower()]
        top, reason = labels.ferplus_winner(votes[i], vote_cols, len(emotions), rule)
        if reason is None and not (base / location).is_file():
            reason = "file not found"
        if reason is not None:
            skipped.append(dict(location=location, split=split, reason=reason))
            continue
        share = emotion_votes[i] / emotion_votes[i].sum()  # > 0: the winner is an emotion with votes
        rows.append(dict(location=location, emotion=names[top], split=split,
                         **{f"votes_{e}": float(v) for e, v in zip(names, share)}))
    return _finish(fmt, base, rows, skipped)


def read_vote_table(csv: Path) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """A FER+ vote file: (its table, {emotion: vote column} in AffectNet order, the non-emotion vote columns).

    Vote columns are mapped by name (case-insensitive, synonyms allowed), never by position."""
    table = pd.read_csv(csv)
    by_name = {}
    for col in table.columns:
        name = labels.canonical(col)
        if name:
            by_name[name] = col
        elif col.lower() in _NON_EMOTION_VOTES:
            by_name[col.lower()] = col
    emotions = {e: by_name[e] for e in labels.EMOTIONS if e in by_name}
    if "path" not in table.columns or not emotions:
        raise DataError(f"{csv} must have a 'path' column and emotion vote columns; found {list(table.columns)}")
    return table, emotions, [by_name[k] for k in _NON_EMOTION_VOTES if k in by_name]


def vote_shares(ds: Dataset) -> pd.DataFrame:
    """Each face's crowd-vote distribution over `ds.classes`, indexed by location (rows sum to 1; a face with
    no vote for any of the classes is left out).

    FER+ carries its votes (`votes_<class>`). FER+ re-labelled FER2013's own faces, so a class-folder copy of
    FER2013 takes them from the FER+ vote file beside its folders (FERPLUS_VOTES, paths relative to the
    folders' root, as ../shared/data ships it). Votes for classes the dataset lacks (FER2013: contempt) and
    non-emotion votes are dropped, and the rest renormalised. Any other dataset is an error: it has no votes.
    """
    columns = [f"votes_{c}" for c in ds.classes]
    if all(c in ds.frame.columns for c in columns):
        votes = ds.frame.set_index("location")[columns].set_axis(list(ds.classes), axis=1)
    elif ds.format == "folders" and (ds.root / FERPLUS_VOTES).is_file():
        table, emotions, _ = read_vote_table(ds.root / FERPLUS_VOTES)
        votes = pd.DataFrame({c: table[emotions[c]] if c in emotions else 0.0 for c in ds.classes})
        votes.index = table["path"].astype(str)
        repeated = votes.index[votes.index.duplicated()]
        if len(repeated):
            raise DataError(f"{ds.root / FERPLUS_VOTES} repeats {len(repeated)} of its paths (e.g. "
                            f"{repeated[0]!r}): which votes a face has would be a guess")
    else:
        raise DataError(f"soft_labels=true needs a vote distribution per face: FER+ carries one, and a class-folder "
                        f"FER2013 copy takes FER+'s from {FERPLUS_VOTES} beside its folders; the '{ds.format}' "
                        f"dataset in {ds.root} has neither")
    votes = votes.astype(np.float64)
    total = votes.sum(axis=1)
    return votes[total > 0].div(total[total > 0], axis=0)


def manifest_bytes(frame: pd.DataFrame) -> int:
    """The memory a manifest holds: its columns' values, plus each Python object they refer to, counted once.

    pandas' memory_usage(deep=True) counts a string that many rows share (an emotion, a split) once per row,
    and only the header of an array that is a view; this counts what the process actually holds for it."""
    total, objects = frame.index.memory_usage(), {}
    for _, column in frame.items():
        values = column.to_numpy()  # object for Python objects and strings (pyarrow strings: new ones, an upper bound)
        total += values.nbytes
        if values.dtype == object:
            objects.update((id(v), v) for v in values)
    return int(total + sum(sys.getsizeof(v) + (v.nbytes if isinstance(v, np.ndarray) and not v.flags.owndata else 0)
                           for v in objects.values()))


def fingerprint(ds: Dataset) -> str:
    """sha256 of what defines the data: each image's location, size in bytes, label, role and original split.

    The role (split) is in it, so a new selection carve-out or deduplication is new data to a cache or a
    checkpoint. Sizes rather than contents keep this fast on 300k files; a CSV dataset hashes its pixels.
    """
    h = hashlib.sha256(ds.format.encode())
    h.update("\0".join(ds.classes).encode())
    if ds.pixels is not None:
        h.update(ds.pixels.tobytes())
    origin = ds.frame["origin"] if "origin" in ds.frame else ds.frame["split"]
    for location, emotion, split, own in zip(ds.frame["location"], ds.frame["emotion"], ds.frame["split"], origin):
        size = os.path.getsize(ds.path(location)) if ds.pixels is None else 0
        h.update(f"{location}\t{size}\t{emotion}\t{split}\t{own}\n".encode())
    return h.hexdigest()[:16]


def synthetic_dir(params: dict) -> Path:
    return CACHE_DIR / (f"synthetic-n{params['synthetic_n_train']}-v{params['synthetic_n_val']}"
                        f"-t{params['synthetic_n_test']}-s{params['synthetic_size']}"
                        f"-noise{params['synthetic_label_noise']:g}-seed{params['seed']}")


def open_dataset(params: dict) -> Dataset:
    """The dataset that a resolved params dict names (generating the synthetic one if needed), with every row
    in its role (`splits.assign_roles`: train, val = selection, test = report, heldout), cross-split
    duplicates moved to <split>_dup when params["dedup"] (`splits.deduplicate`), `split_roles` described and
    the fingerprint taken last, over all of it."""
    fmt = params["dataset"]
    if fmt == "synthetic":
        root = Path(params["data_dir"]) if params["data_dir"] else synthetic_dir(params)
        synthetic.generate(root, n_train=params["synthetic_n_train"], n_val=params["synthetic_n_val"],
                           size=params["synthetic_size"], seed=params["seed"], n_test=params["synthetic_n_test"],
                           label_noise=params["synthetic_label_noise"])
        ds = read_affectnet_mini(root, fmt="synthetic")
    else:
        if not params["data_dir"]:
            raise DataError(f"dataset '{fmt}' needs data_dir (a param) or the FER_DATA_DIR environment "
                            f"variable. Expected layout: {DATASETS[fmt]}")
        root = Path(params["data_dir"]).expanduser()
        if not root.exists():
            raise _missing(root, fmt, "the data folder does not exist")
        reader = globals()[f"read_{fmt}"]  # every config.registry.DATASETS format but synthetic has one
        ds = reader(root, rule=params["ferplus_rule"]) if fmt == "ferplus" else reader(root)
    ds.frame = splits.assign_roles(ds.frame, params["selection_fraction"], params["seed"],
                                   own_selection=fmt == "synthetic")
    if params["dedup"]:
        splits.deduplicate(ds)
    if params.get("max_per_split"):
        shuffled = ds.frame.sample(frac=1.0, random_state=params["seed"])
        keep = shuffled.groupby("split").cumcount() < params["max_per_split"]
        ds.frame = ds.frame.loc[sorted(shuffled.index[keep])]
        ds.duplicates = ds.duplicates[ds.duplicates["location"].isin(ds.frame["location"])].reset_index(drop=True)
    ds.frame = _sorted(ds.frame)
    ds.split_roles = splits.describe_roles(ds, params["selection_fraction"])
    ds.fingerprint = fingerprint(ds)
    return ds
