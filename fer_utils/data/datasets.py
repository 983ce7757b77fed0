"""Dataset readers. Every format becomes the same `Dataset`: a manifest with one
row per image (location, label, emotion, split, plus valence, arousal,
landmarks and face box where the format has them), the dataset's own class
list, and a table of what was skipped and why.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.registry import DATASETS
from ..paths import CACHE_DIR
from . import labels, splits, synthetic

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {
    "train": "train", "training": "train", "train_set": "train",
    "val": "val", "valid": "val", "validation": "val", "val_set": "val", "publictest": "val",
    "test": "test", "test_set": "test", "privatetest": "test",
    # the official FERPlus release's folder names
    "fer2013train": "train", "fer2013valid": "val", "fer2013test": "test",
}
SPLIT_ORDER = ("train", "val", "test", "heldout", "val_dup", "test_dup", "heldout_dup")


class DataError(ValueError):
    pass


@dataclass
class Dataset:
    format: str
    root: Path
    classes: tuple[str, ...]
    # location, label, emotion, split, [origin, valence, arousal, landmarks, face_*, clean_emotion,
    # clean_label, votes_<emotion>]
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


def _finish(fmt: str, root: Path, rows: list[dict], skipped: list[dict], **kw) -> Dataset:
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


def _npy_scalar(path: Path):
    """The value of a 0-d .npy annotation; OSError or ValueError, naming the file, when it cannot be read."""
    try:
        return np.load(path, allow_pickle=False).item()
    except (EOFError, ValueError) as err:  # EOFError: an empty file
        raise ValueError(f"{path.name}: {err}") from err


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
            try:  # any annotation file of the image unreadable: the image is skipped, with the reason
                emotion = _non_emotion(_npy_scalar(exp), location, split, skipped)
                if emotion is None:
                    continue
                row = dict(location=location, emotion=emotion, split=split)
                clean = ann / f"{image.stem}_exp_clean.npy"  # the synthetic data's label before label noise
                if clean.is_file():
                    row["clean_emotion"] = labels.affectnet_name(int(_npy_scalar(clean)))
                for key, suffix in (("valence", "val"), ("arousal", "aro")):
                    f = ann / f"{image.stem}_{suffix}.npy"
                    row[key] = float(_npy_scalar(f)) if f.is_file() else np.nan
                f = ann / f"{image.stem}_lnd.npy"
                row["landmarks"] = _landmarks(_npy_scalar(f)) if f.is_file() else None
            except (OSError, ValueError) as err:
                skipped.append(dict(location=location, split=split, reason=f"unreadable annotation: {err}"))
                continue
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


def read_ferplus(root: Path, rule: str = "majority") -> Dataset:
    """FER+ labels from the crowd votes under `rule` (`labels.ferplus_winner`: "majority" is the FER+ paper's
    rule, "plurality" the arg-max); every face the rule drops is in `skipped` with the reason.

    The vote distribution is kept for soft-label training: columns `votes_<emotion>`, one per emotion vote
    column, are that face's raw emotion votes normalised to sum 1 (unknown and not-a-face votes left out).
    A path's first folder names its split (SPLIT_NAMES, incl. FERPlus's FER2013Train/Valid/Test); any other
    first folder is an error, never a guess: a test face taken for a train face would be trained on.
    """
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
    paths = table["path"].astype(str)
    folders = paths.map(lambda p: Path(p).parts[0] if len(Path(p).parts) > 1 else "")
    unknown = sorted(set(folders) - {f for f in folders if f.lower() in SPLIT_NAMES})
    if unknown:
        raise DataError(f"{csv}: paths must start with a split folder ({', '.join(sorted(SPLIT_NAMES))}); "
                        f"found {', '.join(repr(f) for f in unknown)} (e.g. {paths[folders == unknown[0]].iloc[0]!r})")
    vote_cols = [by_name[e] for e in emotions] + others
    votes = table[vote_cols].to_numpy(dtype=np.float64)
    emotion_votes = votes[:, :len(emotions)]
    rows, skipped = [], []
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
        rows.append(dict(location=location, emotion=emotions[top], split=split,
                         **{f"votes_{e}": float(v) for e, v in zip(emotions, share)}))
    return _finish(fmt, base, rows, skipped)


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
