"""Dataset readers. Every format becomes the same `Dataset`: a manifest with one
row per image (location, label, emotion, split, plus valence, arousal,
landmarks and face box where the format has them), the dataset's own class
list, and a table of what was skipped and why.

Nothing is dropped silently: every row a reader leaves out lands in
`Dataset.skipped` with its reason, and the book reports the counts.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.registry import DATASETS
from ..paths import CACHE_DIR
from . import labels, synthetic

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {
    "train": "train", "training": "train", "train_set": "train",
    "val": "val", "valid": "val", "validation": "val", "val_set": "val", "publictest": "val",
    "test": "test", "test_set": "test", "privatetest": "test",
}
SPLIT_ORDER = ("train", "val", "test")
class DataError(ValueError):
    pass


@dataclass
class Dataset:
    format: str
    root: Path
    classes: tuple[str, ...]
    frame: pd.DataFrame            # location, label, emotion, split, [valence, arousal, landmarks, face_*]
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["location", "split", "reason"]))
    pixels: np.ndarray | None = None  # fer2013_csv keeps decoded rows here; location is "row:<i>"
    notes: list[str] = field(default_factory=list)  # things the book should state (e.g. empty classes)
    fingerprint: str = ""

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


def _finish(fmt: str, root: Path, rows: list[dict], skipped: list[dict], **kw) -> Dataset:
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise _missing(root, fmt, "no usable labelled images")
    frame = frame[frame["emotion"].notna()]
    classes = labels.class_list(frame["emotion"])
    frame["label"] = frame["emotion"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    frame = frame.sort_values(["split", "location"], key=lambda s: s.map(SPLIT_ORDER.index)
                              if s.name == "split" else s, kind="stable").reset_index(drop=True)
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


def _npy_scalar(path: Path):
    return np.load(path, allow_pickle=False).item()


def read_affectnet_mini(root: Path, fmt: str = "affectnet_mini") -> Dataset:
    rows, skipped = [], []
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and SPLIT_NAMES.get(d.name.lower())
                  and (d / "images").is_dir()] if root.is_dir() else []
    if not split_dirs:
        raise _missing(root, fmt, "no train_set/images or val_set/images")
    for split_dir in split_dirs:
        split = SPLIT_NAMES[split_dir.name.lower()]
        ann = split_dir / "annotations"
        for image in sorted((split_dir / "images").iterdir()):
            location = str(image.relative_to(root))
            if image.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(dict(location=location, split=split, reason="not an image file"))
                continue
            exp = ann / f"{image.stem}_exp.npy"
            if not exp.is_file():
                skipped.append(dict(location=location, split=split, reason="no annotation"))
                continue
            try:
                emotion = _non_emotion(_npy_scalar(exp), location, split, skipped)
            except (OSError, ValueError) as err:
                skipped.append(dict(location=location, split=split, reason=f"unreadable annotation: {err}"))
                continue
            if emotion is None:
                continue
            row = dict(location=location, emotion=emotion, split=split)
            for key, suffix in (("valence", "val"), ("arousal", "aro")):
                f = ann / f"{image.stem}_{suffix}.npy"
                row[key] = float(_npy_scalar(f)) if f.is_file() else np.nan
            f = ann / f"{image.stem}_lnd.npy"
            row["landmarks"] = _landmarks(_npy_scalar(f)) if f.is_file() else None
            rows.append(row)
    return _finish(fmt, root, rows, skipped)


def _affectnet_image_root(root: Path, first: str) -> Path:
    for candidate in (root, root / "Manually_Annotated_Images",
                      root / "Manually_Annotated" / "Manually_Annotated_Images"):
        if (candidate / first).is_file():
            return candidate
    return root


def read_affectnet_csv(root: Path) -> Dataset:
    fmt = "affectnet_csv"
    files = {"train": root / "training.csv", "val": root / "validation.csv"}
    if not all(f.is_file() for f in files.values()):
        raise _missing(root, fmt, "no training.csv and validation.csv")
    rows, skipped = [], []
    for split, csv in files.items():
        table = pd.read_csv(csv)
        need = {"subDirectory_filePath", "expression", "face_x", "face_y", "face_width", "face_height"}
        if need - set(table.columns):
            raise DataError(f"{csv} lacks columns {sorted(need - set(table.columns))}; expected {DATASETS[fmt]}")
        image_root = _affectnet_image_root(root, str(table["subDirectory_filePath"].iloc[0])) if len(table) else root
        for rec in table.itertuples(index=False):
            location = str((image_root / rec.subDirectory_filePath).relative_to(root))
            emotion = _non_emotion(rec.expression, location, split, skipped)
            if emotion is None:
                continue
            if not (root / location).is_file():
                skipped.append(dict(location=location, split=split, reason="file not found"))
                continue
            rows.append(dict(location=location, emotion=emotion, split=split,
                             valence=float(getattr(rec, "valence", np.nan)),
                             arousal=float(getattr(rec, "arousal", np.nan)),
                             landmarks=_landmarks(getattr(rec, "facial_landmarks", "")),
                             face_x=int(rec.face_x), face_y=int(rec.face_y),
                             face_w=int(rec.face_width), face_h=int(rec.face_height)))
    return _finish(fmt, root, rows, skipped)


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


FERPLUS_COLUMNS = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
                   "anger": "anger", "disgust": "disgust", "fear": "fear", "contempt": "contempt"}
FERPLUS_NON_EMOTIONS = ("unknown", "NF")


def read_ferplus(root: Path) -> Dataset:
    """FER+ majority labels: arg-max of the 10 vote columns; ties and unknown/not-a-face winners dropped."""
    fmt = "ferplus"
    csv = root / "ferplus_votes.csv" if root.is_dir() else root
    if not csv.is_file():
        raise _missing(root, fmt, "no ferplus_votes.csv")
    table = pd.read_csv(csv)
    # Map vote columns by name (case-insensitive, synonyms allowed), never by position.
    by_name = {}
    for col in table.columns:
        name = labels.canonical(col)
        if name:
            by_name[name] = col
        elif col.lower() in ("unknown", "nf", "not_face", "notface", "no-face"):
            by_name[col.lower()] = col
    emotions = [e for e in labels.EMOTIONS if e in by_name]
    others = [by_name[k] for k in ("unknown", "nf", "not_face", "notface", "no-face") if k in by_name]
    if "path" not in table.columns or not emotions:
        raise DataError(f"{csv} must have a 'path' column and emotion vote columns; found {list(table.columns)}")
    vote_cols = [by_name[e] for e in emotions] + others
    votes = table[vote_cols].to_numpy(dtype=np.float64)
    winners = votes.max(axis=1)
    ties = (votes == winners[:, None]).sum(axis=1) > 1
    top = votes.argmax(axis=1)
    rows, skipped = [], []
    base = csv.parent
    for i, location in enumerate(table["path"].astype(str)):
        split = SPLIT_NAMES.get(Path(location).parts[0].lower(), "train")
        if winners[i] <= 0:
            reason = "no votes"
        elif ties[i]:
            reason = "tied vote"
        elif top[i] >= len(emotions):
            reason = f"majority vote is not an emotion: {vote_cols[top[i]]}"
        elif not (base / location).is_file():
            reason = "file not found"
        else:
            rows.append(dict(location=location, emotion=emotions[top[i]], split=split))
            continue
        skipped.append(dict(location=location, split=split, reason=reason))
    return _finish(fmt, base, rows, skipped)


def fingerprint(ds: Dataset) -> str:
    """sha256 of what defines the data: each image's location, size in bytes, label and split.

    Sizes rather than contents keep this fast on 300k files; a CSV dataset hashes the CSV itself.
    """
    h = hashlib.sha256(ds.format.encode())
    h.update("\0".join(ds.classes).encode())
    if ds.pixels is not None:
        h.update(ds.pixels.tobytes())
    cols = ds.frame[["location", "emotion", "split"]].itertuples(index=False)
    for location, emotion, split in cols:
        size = os.path.getsize(ds.path(location)) if ds.pixels is None else 0
        h.update(f"{location}\t{size}\t{emotion}\t{split}\n".encode())
    return h.hexdigest()[:16]


def synthetic_dir(params: dict) -> Path:
    return CACHE_DIR / (f"synthetic-n{params['synthetic_n_train']}-v{params['synthetic_n_val']}"
                        f"-s{params['synthetic_size']}-seed{params['seed']}")


def open_dataset(params: dict) -> Dataset:
    """The dataset that a resolved params dict names (generating the synthetic one if needed)."""
    fmt = params["dataset"]
    if fmt == "synthetic":
        root = Path(params["data_dir"]) if params["data_dir"] else synthetic_dir(params)
        synthetic.generate(root, n_train=params["synthetic_n_train"], n_val=params["synthetic_n_val"],
                           size=params["synthetic_size"], seed=params["seed"])
        ds = read_affectnet_mini(root, fmt="synthetic")
    else:
        if not params["data_dir"]:
            raise DataError(f"dataset '{fmt}' needs data_dir (a param) or the FER_DATA_DIR environment "
                            f"variable. Expected layout: {DATASETS[fmt]}")
        root = Path(params["data_dir"]).expanduser()
        if not root.exists():
            raise _missing(root, fmt, "the data folder does not exist")
        ds = globals()[f"read_{fmt}"](root)  # every config.registry.DATASETS format but synthetic has one
    if params.get("max_per_split"):
        shuffled = ds.frame.sample(frac=1.0, random_state=params["seed"])
        keep = shuffled.groupby("split").cumcount() < params["max_per_split"]
        ds.frame = ds.frame.loc[sorted(shuffled.index[keep])].reset_index(drop=True)
    ds.fingerprint = fingerprint(ds)
    return ds
