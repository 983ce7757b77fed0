"""Numbers for the data-exploration chapter: class counts, imbalance, what a
majority-class guess scores, image sizes and modes, sample faces."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from ..metrics import scores
from .datasets import Dataset
from .images import open_image, to_array


def class_counts(ds: Dataset) -> pd.DataFrame:
    """Images per class (rows, in the dataset's class order) and split (columns)."""
    table = pd.crosstab(ds.frame["emotion"], ds.frame["split"])
    return table.reindex(index=list(ds.classes), columns=ds.splits, fill_value=0)


def imbalance_ratio(counts: pd.Series) -> float:
    """Largest over smallest class; inf when a class has no images."""
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


def majority_baseline(ds: Dataset, counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Scores of always answering the train split's most frequent class, on every split (`metrics.scores`;
    macro-F1 over the classes present in the split, so a guessed class the split lacks does not count)."""
    counts = class_counts(ds) if counts is None else counts
    reference = "train" if "train" in counts else counts.columns[0]
    majority = counts[reference].idxmax()
    label = ds.classes.index(majority)
    rows = []
    for split in counts.columns:
        y = ds.split(split)["label"].to_numpy()
        accuracy, balanced_accuracy, macro_f1 = scores(y, np.full_like(y, label), f1_over="true")
        rows.append(dict(split=split, images=len(y), guess=majority, accuracy=accuracy,
                         balanced_accuracy=balanced_accuracy, macro_f1=macro_f1))
    return pd.DataFrame(rows)


def image_stats(ds: Dataset, limit: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Width, height and mode counts, from image headers of up to `limit` random images."""
    if ds.pixels is not None:
        h, w = ds.pixels.shape[1:]
        return pd.DataFrame([dict(width=w, height=h, mode="L", images=len(ds.frame))])
    sample = ds.frame.sample(min(limit, len(ds.frame)), random_state=seed)
    rows = []
    for location in sample["location"]:
        try:
            with Image.open(ds.path(location)) as im:  # header only: no pixel decoding
                rows.append(dict(width=im.width, height=im.height, mode=im.mode))
        except (OSError, SyntaxError, ValueError):
            rows.append(dict(width=None, height=None, mode="unreadable"))
    return (pd.DataFrame(rows).value_counts(dropna=False).rename("images").reset_index()
            .sort_values("images", ascending=False, ignore_index=True))


def sample_faces(ds: Dataset, split: str, per_class: int, size: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Up to `per_class` decoded faces (size x size, grayscale or RGB as stored) per class."""
    frame = ds.split(split)
    out = {}
    for emotion in ds.classes:
        rows = frame[frame["emotion"] == emotion]
        faces = []
        for _, row in rows.sample(min(len(rows), 4 * per_class), random_state=seed).iterrows():
            try:
                im = open_image(ds, row)
            except (OSError, SyntaxError, ValueError):
                continue  # corrupt files are counted by the decoding step, not shown
            arr = to_array(im, size, 1 if im.mode in ("L", "I", "I;16") else 3)
            faces.append(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
            if len(faces) == per_class:
                break
        out[emotion] = faces
    return out
