"""Evaluation: predictions of a trained checkpoint, per-split summaries, per-class tables.

`run` is the evaluation step (the chapter calls it and displays what it returns); it writes the run
folder's predictions_<split>.csv and metrics.json, which later chapters, the book's pages and the export of
a model read.

Split roles (`data.splits`): every choice is made on the selection split "val" (the checkpoint's epoch,
whether flip test-time augmentation is the protocol: `decide_tta`); the headline is the report split
"test", scored once per run. Where deduplication set report images aside (test_dup), the original report
split (test + test_dup, "test_original") is scored beside it, labelled for comparison with published
numbers, which were measured on it.

Every score is computed by scikit-learn from (true, predicted) labels, and every
summary says which split it was measured on and what that split looks like:

- accuracy, balanced accuracy and macro-F1 are `fer_utils.metrics.scores`, the
  definitions training's per-epoch validation uses, so the two can be compared
  number for number. Accuracy rewards the majority class on an imbalanced split,
  so each summary carries what always answering the training set's most
  frequent class scores on the same split. Balanced accuracy is the mean
  per-class recall over the classes present in the split (the balanced
  protocol; on a balanced split it equals accuracy). Macro-F1 is over the
  classes present or predicted.
- weighted-F1: F1 averaged with the class supports as weights.

Classes absent from a split are listed by name in the summary; nothing divides
by zero and no average is NaN.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from ..data.datasets import Dataset
from ..data.images import load_split, open_image, to_array
from ..engine.checkpoint import CheckpointError, load_model
from ..engine.inference import predict
from ..engine.train import has_valence_arousal
from ..metrics import VA_NAMES, VA_SCORES, scores, scores_from_confusion, valence_arousal_scores
from ..paths import REPO_ROOT, atomic_write, write_text

BALANCED_RATIO = 1.1  # a split is "balanced" when its largest class is at most 10% above its smallest
VA_GUESSES = tuple(f"{name}_rmse_mean_guess" for name in VA_NAMES)  # valence_arousal_summary


def is_balanced(counts) -> bool:
    """Every class present and the largest at most BALANCED_RATIO times the smallest."""
    counts = np.asarray(counts)
    return bool(counts.min() > 0 and counts.max() <= BALANCED_RATIO * counts.min())


# -- predictions --------------------------------------------------------------

def predictions_frame(locations, y_true, probs: np.ndarray, classes, va: np.ndarray | None = None) -> pd.DataFrame:
    """One row per image: location, true, predicted (class names), confidence, prob_<class> per class, and
    with `va` (a valence/arousal head's (N, 2) output) predicted_valence, predicted_arousal."""
    classes = list(classes)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs has shape {probs.shape}; expected (N, {len(classes)}) for classes {classes}")
    y_true = _as_ids(y_true, classes)
    if len(y_true) != len(probs) or len(locations) != len(probs):
        raise ValueError(f"{len(locations)} locations, {len(y_true)} labels and {len(probs)} probability rows")
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    frame = pd.DataFrame(dict(location=np.asarray(locations).astype(str),
                              true=np.asarray(classes, dtype=object)[y_true] if len(y_true) else [],
                              predicted=np.asarray(classes, dtype=object)[pred] if len(pred) else [],
                              confidence=probs.max(1) if len(probs) else [],))
    for i, c in enumerate(classes):
        frame[f"prob_{c}"] = probs[:, i]
    if va is not None:
        for i, name in enumerate(VA_NAMES):
            frame[f"predicted_{name}"] = np.asarray(va, dtype=np.float64)[:, i]
    return frame


def prob_columns(frame: pd.DataFrame, classes) -> np.ndarray:
    """The (N, K) probability matrix of a predictions frame, in `classes` order."""
    return frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)


def save_predictions(frame: pd.DataFrame, run_dir, split: str) -> Path:
    """Write `predictions_<split>.csv` into the run folder (atomically); returns its path."""
    return atomic_write(Path(run_dir) / f"predictions_{split}.csv",
                        lambda tmp: frame.to_csv(tmp, index=False, float_format="%.8g"))


def load_predictions(run_dir, split: str) -> pd.DataFrame:
    path = Path(run_dir) / f"predictions_{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no predictions at {path}: run the evaluation chapter (03_evaluation) first")
    return pd.read_csv(path, dtype=dict(location=str, true=str, predicted=str))


def _as_ids(labels_, classes) -> np.ndarray:
    """Class names or integer ids -> integer ids in `classes` order (unknown names are an error)."""
    arr = np.asarray(labels_)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(arr.tolist()) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    return np.array([index[v] for v in arr.tolist()], dtype=np.int64)


# -- summaries ----------------------------------------------------------------

def _confusion_cells(y_true, *predictions) -> tuple[int, list[np.ndarray]]:
    """(k, each prediction's confusion-matrix cells): the k labels that y_true or any prediction uses, and for
    each prediction ((n,) or (seeds, n), of the images of y_true) the cell true * k + predicted of every
    image, so that np.bincount(cells, weights, k * k) counts a resample's confusion matrix."""
    y_true = np.asarray(y_true)
    predictions = [np.asarray(p) for p in predictions]
    if any(p.shape[-1] != y_true.size for p in predictions):
        raise ValueError(f"predictions of shapes {[p.shape for p in predictions]} do not match {y_true.size} labels")
    labels, codes = np.unique(np.concatenate([y_true.ravel(), *(p.ravel() for p in predictions)]),
                              return_inverse=True)
    k, n = len(labels), y_true.size
    parts = np.split(codes[n:], np.cumsum([p.size for p in predictions])[:-1])
    return k, [codes[:n] * k + c.reshape(p.shape) for c, p in zip(parts, predictions)]


def _draws(n: int, n_boot: int, seed: int):
    """The bootstrap's resamples of n images, as how often each image is drawn (n_boot draws with replacement,
    seeded: `bootstrap_ci` and `paired_bootstrap` draw the same images for the same seed)."""
    if n_boot < 2:
        raise ValueError(f"bootstrap needs at least 2 resamples, got {n_boot}")
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def bootstrap_ci(y_true, y_pred, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap CIs (resampling images with replacement, `n_boot` times) for accuracy, balanced
    accuracy and macro-F1: {metric: (low, high)}, each resample scored as `metrics.scores` scores a split
    (`metrics.scores_from_confusion`, from the resample's confusion matrix)."""
    k, (cells,) = _confusion_cells(y_true, y_pred)
    values = np.array([scores_from_confusion(np.bincount(cells, weights, k * k).reshape(k, k))
                       for weights in _draws(cells.size, n_boot, seed)])
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha], axis=0)
    return {name: (float(lo), float(hi)) for name, lo, hi in
            zip(("accuracy", "balanced_accuracy", "macro_f1"), low, high)}


def paired_bootstrap(y_true, pred_a, pred_b, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired percentile bootstrap of the macro-F1 difference b - a on the same images.

    Two models scored on one split share its hard and easy images; separate CIs ignore that and are too
    wide to tell small steps apart. Here each resample draws the images with replacement (the draws of
    `bootstrap_ci`) and scores both predictions on that same draw. `pred_a`, `pred_b`: predictions of the
    images of `y_true`, (n,) or (seeds, n); with several seeds a side's score is the mean of its seeds'
    macro-F1 on the draw. Returns difference (on all images), low, high, n_boot, level, and verdict:
    "better" or "worse" when the CI excludes 0, else "noise".
    """
    k, cells = _confusion_cells(y_true, *(np.atleast_2d(np.asarray(p)) for p in (pred_a, pred_b)))

    def difference(weights: np.ndarray) -> float:
        a, b = ([scores_from_confusion(np.bincount(row, weights, k * k).reshape(k, k))[2] for row in c]
                for c in cells)
        return float(np.mean(b) - np.mean(a))

    n = np.asarray(y_true).size
    values = np.array([difference(weights) for weights in _draws(n, n_boot, seed)])
    alpha = (1 - level) / 2
    low, high = (float(v) for v in np.quantile(values, [alpha, 1 - alpha]))
    verdict = "better" if low > 0 else "worse" if high < 0 else "noise"
    return dict(difference=difference(np.ones(n)), low=low, high=high, n_boot=int(n_boot), level=level,
                verdict=verdict)


def train_majority(ds: Dataset) -> str:
    """The training split's most frequent class (the first split's if there is no train split)."""
    split = "train" if "train" in ds.splits else ds.splits[0]
    counts = ds.split(split)["emotion"].value_counts()
    return str(max(counts.index, key=lambda c: (counts[c], -ds.classes.index(c))))


def protocol_text(s: dict) -> str:
    """One sentence that says which protocol a split summary follows and which number to read."""
    if s["balanced"]:
        per_class = (f"{s['min_count']:,}" if s["min_count"] == s["max_count"]
                     else f"{s['min_count']:,}-{s['max_count']:,}")
        return (f"balanced split ({per_class} images per class): accuracy equals "
                f"balanced accuracy, the protocol of published AffectNet-8 results")
    absent = f"; no images of {', '.join(s['absent_classes'])}" if s["absent_classes"] else ""
    return (f"imbalanced split (largest/smallest class {s['imbalance']:.1f}x{absent}): accuracy rewards the "
            f"majority class (always '{s['majority_class']}' scores {s['majority_accuracy']:.1%}); balanced "
            f"accuracy (mean per-class recall) is the balanced protocol")


def split_summary(y_true, y_pred, classes, train_majority: str | int, n_boot: int = 1000, seed: int = 0,
                  split: str | None = None) -> dict:
    """Headline scores of one split, the majority-class guess's scores on it, bootstrap 95% CIs and the
    split's shape. Labels may be class names or ids. Keys: split, n, accuracy, balanced_accuracy, macro_f1,
    weighted_f1, accuracy_ci, balanced_accuracy_ci, macro_f1_ci, majority_class, majority_accuracy,
    majority_balanced_accuracy, majority_macro_f1, balanced, imbalance, min_count, max_count,
    absent_classes (names), present_classes, f1_extra_classes, protocol.

    Balanced accuracy averages over present_classes; macro-F1 over present_classes plus f1_extra_classes
    (predicted but absent, each with F1 0): the two share one class set exactly when f1_extra_classes is
    empty, which pages state rather than assume."""
    classes = list(classes)
    y_true, y_pred = _as_ids(y_true, classes), _as_ids(y_pred, classes)
    if y_true.size == 0:
        raise ValueError(f"split {split or ''} has no images: nothing to score".replace("  ", " "))
    majority = train_majority if isinstance(train_majority, (int, np.integer)) else classes.index(train_majority)
    accuracy, balanced_accuracy, macro_f1 = scores(y_true, y_pred)
    guess = np.full_like(y_true, majority)
    m_acc, m_bal, m_f1 = scores(y_true, guess)
    counts = np.bincount(y_true, minlength=len(classes))
    present = counts[counts > 0]
    absent = [c for c, n in zip(classes, counts) if n == 0]
    ci = bootstrap_ci(y_true, y_pred, n_boot, seed)
    s = dict(split=split, n=int(y_true.size), accuracy=accuracy, balanced_accuracy=balanced_accuracy,
             macro_f1=macro_f1,
             weighted_f1=float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
             accuracy_ci=ci["accuracy"], balanced_accuracy_ci=ci["balanced_accuracy"], macro_f1_ci=ci["macro_f1"],
             n_boot=int(n_boot), majority_class=classes[majority], majority_accuracy=m_acc,
             majority_balanced_accuracy=m_bal, majority_macro_f1=m_f1,
             balanced=is_balanced(counts),
             imbalance=float(present.max() / present.min()), min_count=int(present.min()),
             max_count=int(present.max()), absent_classes=absent,
             present_classes=[c for c, n in zip(classes, counts) if n > 0],
             f1_extra_classes=[classes[i] for i in sorted(set(np.unique(y_pred).tolist()) - set(np.unique(y_true).tolist()))])
    s["protocol"] = protocol_text(s)
    return s


def summary_table(summaries: list[dict]) -> pd.DataFrame:
    """Model and majority-guess rows per split, with the CIs as 'low-high' columns (for display)."""
    rows = []
    for s in summaries:
        ci = {k: s[f"{k}_ci"] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
        rows.append(dict(split=s["split"], predictor="model", images=s["n"], accuracy=s["accuracy"],
                         accuracy_95ci=_fmt_ci(ci["accuracy"], "{:.1%}"),
                         balanced_accuracy=s["balanced_accuracy"],
                         balanced_accuracy_95ci=_fmt_ci(ci["balanced_accuracy"], "{:.1%}"),
                         macro_f1=s["macro_f1"], macro_f1_95ci=_fmt_ci(ci["macro_f1"], "{:.3f}"),
                         weighted_f1=s["weighted_f1"]))
        rows.append(dict(split=s["split"], predictor=f"always '{s['majority_class']}'", images=s["n"],
                         accuracy=s["majority_accuracy"], accuracy_95ci="",
                         balanced_accuracy=s["majority_balanced_accuracy"], balanced_accuracy_95ci="",
                         macro_f1=s["majority_macro_f1"], macro_f1_95ci="", weighted_f1=np.nan))
    return pd.DataFrame(rows)


def percent_pair(a: float, b: float) -> tuple[str, str, str]:
    """Two shares as pages compare them: both as "66.2%" and their gap in percentage points, all from the
    same rounding to 0.1 point, so equal numbers never read "66.2% vs 66.3%" and the gap is the
    difference of the numbers shown."""
    ra, rb = round(100 * a, 1), round(100 * b, 1)
    return f"{ra:.1f}%", f"{rb:.1f}%", f"{abs(ra - rb):.1f}"


def _fmt_ci(ci, fmt: str) -> str:
    return f"{fmt.format(ci[0])} – {fmt.format(ci[1])}"


def per_class_table(y_true, y_pred, classes) -> pd.DataFrame:
    """precision, recall, F1, support (true images) and predicted count per class (sklearn), plus a note.

    Undefined values are NaN *and* explained in `note`, never silent: recall of a class with no images in
    the split, precision of a class never predicted. F1 is NaN only for a class neither present nor
    predicted, so the mean of the F1 column over its non-NaN values equals the summary's macro-F1.
    """
    classes = list(classes)
    y_true, y_pred = _as_ids(y_true, classes), _as_ids(y_pred, classes)
    ids = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average=None, zero_division=np.nan)
    _, _, f1_zero, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
    predicted = np.bincount(y_pred, minlength=len(classes))
    notes = []
    for i in ids:
        note = []
        if support[i] == 0:
            note.append("no images in this split: recall undefined")
        if predicted[i] == 0:
            note.append("never predicted: precision undefined")
        notes.append("; ".join(note))
    seen = (support > 0) | (predicted > 0)
    return pd.DataFrame(dict(emotion=classes, precision=precision, recall=np.where(support > 0, recall, np.nan),
                             f1=np.where(seen, f1_zero, np.nan), support=support.astype(int),
                             predicted=predicted.astype(int), note=notes))


def confusion(y_true, y_pred, classes) -> pd.DataFrame:
    """Confusion counts: rows = true class, columns = predicted class, all classes (sklearn)."""
    classes = list(classes)
    cm = confusion_matrix(_as_ids(y_true, classes), _as_ids(y_pred, classes), labels=np.arange(len(classes)))
    return pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def confused_pairs(cm: pd.DataFrame) -> pd.DataFrame:
    """Off-diagonal cells ranked by count: true, predicted, count, share of the true class's images."""
    rows = []
    totals = cm.sum(axis=1)
    for t in cm.index:
        for p in cm.columns:
            if t != p and cm.loc[t, p] > 0:
                rows.append(dict(true=t, predicted=p, count=int(cm.loc[t, p]),
                                 share_of_true=float(cm.loc[t, p] / totals[t])))
    frame = pd.DataFrame(rows, columns=["true", "predicted", "count", "share_of_true"])
    return frame.sort_values(["count", "share_of_true"], ascending=False, ignore_index=True)


def headline(summary: dict) -> dict:
    """The part of a split summary that metrics.json (and the book's front page) shows."""
    keys = ("n", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "accuracy_ci", "balanced_accuracy_ci",
            "macro_f1_ci", "majority_class", "majority_accuracy", "majority_balanced_accuracy", "majority_macro_f1",
            "balanced", "absent_classes", "f1_extra_classes", "protocol")
    optional = ("role", "tta", "clean_accuracy", "label_agreement", *VA_SCORES, "va_n",
                *VA_GUESSES)  # set by `run`, not by split_summary
    return {k: (list(summary[k]) if isinstance(summary[k], tuple) else summary[k])
            for k in keys + tuple(k for k in optional if k in summary)}


def save_metrics(summaries: list[dict], run_dir, **extra) -> Path:
    """metrics.json in the run folder: {split: headline(summary)}, plus `extra` top-level entries."""
    data = {s["split"]: headline(s) for s in summaries}
    data.update(extra)
    return write_text(Path(run_dir) / "metrics.json", json.dumps(data, indent=2))


# -- the checkpoint -------------------------------------------------------------

def checkpoint_path(params: dict, run_dir) -> Path:
    """params["checkpoint"]: 'best' or 'last' (in run_dir), or a path (absolute, or relative to the
    working directory, the run folder or the repository)."""
    choice = str(params.get("checkpoint") or "best")
    if choice in ("best", "last"):
        return Path(run_dir) / f"{choice}.pt"
    path = Path(choice).expanduser()
    if path.is_absolute():
        return path
    for base in (Path.cwd(), Path(run_dir), REPO_ROOT):
        if (base / path).is_file():
            return base / path
    return path


def load_for_evaluation(params: dict, run_dir, ds: Dataset | None = None, device="cpu"):
    """Load the checkpoint params["checkpoint"] names (weights_only, via the training engine) into its own
    model, in eval mode on `device`. Returns (model, checkpoint dict).

    The checkpoint's classes must equal the dataset's (same names, same order): otherwise
    CheckpointError names both lists. A checkpoint trained on other data of the same classes is
    allowed (cross-dataset evaluation); checkpoint["notes"] says so.
    """
    path = checkpoint_path(params, run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (checkpoint={params.get('checkpoint')!r}); run the "
                                f"training chapter (02_training) first or point `checkpoint` at a .pt file")
    model, ckpt = load_model(path, device)
    notes = []
    if ds is not None:
        if list(ckpt["classes"]) != list(ds.classes):
            raise CheckpointError(
                f"checkpoint {path} was trained on classes {list(ckpt['classes'])}, but dataset "
                f"'{ds.format}' has classes {list(ds.classes)}: a model can only be scored on the classes "
                f"(names and order) it was trained on")
        if ckpt.get("fingerprint") and ds.fingerprint and ckpt["fingerprint"] != ds.fingerprint:
            notes.append(f"the checkpoint was trained on other data (fingerprint {ckpt['fingerprint']}) than "
                         f"the data evaluated here ({ds.fingerprint})")
    ckpt["path"] = path
    ckpt["notes"] = notes
    return model, ckpt


def reported_by_training(ckpt: dict) -> tuple[float, float, float] | None:
    """(accuracy, balanced accuracy, macro-F1) on val that training logged for the checkpoint's epoch."""
    history = ckpt.get("history") or {}
    if ckpt.get("epoch") not in history.get("epoch", []):
        return None
    i = history["epoch"].index(ckpt["epoch"])
    return tuple(float(history[k][i]) for k in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1"))


def predict_split(model, ckpt: dict, ds: Dataset, split: str, batch_size: int = 256, device="cpu",
                  amp: bool = False, flip: bool = False):
    """Decode `split` at the checkpoint's image size and channels, predict it (flip: test-time
    augmentation, see `predict`). Returns (predictions frame, x uint8, y, locations)."""

    config = ckpt["model_config"]
    x, y, locations = load_split(ds, split, config["image_size"], config["in_channels"])
    probs, va = predict(model, x, batch_size, device, amp, flip=flip, return_va=True)
    return predictions_frame(locations, y, probs, ds.classes, va), x, y, locations


def load_faces(ds: Dataset, locations, size: int = 96) -> list[np.ndarray]:
    """Faces for display, as the reader decodes them (face box applied), size x size, grayscale (H x W)
    or RGB (H x W x 3) as stored."""

    rows = ds.frame.set_index("location")
    faces = []
    for location in locations:
        row = rows.loc[location].to_dict()
        row["location"] = location
        im = open_image(ds, row)
        arr = to_array(im, size, 1 if im.mode in ("L", "I", "I;16") else 3)
        faces.append(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    return faces


def run_results(run_dir, split: str = "val") -> dict:
    """A finished run's saved predictions on `split`, re-scored: frame, classes, cm (confusion), table
    (per_class_table), for comparing runs (figures.compare_confusions, figures.compare_f1)."""
    run_dir = Path(run_dir)
    frame = load_predictions(run_dir, split)
    prov = run_dir / "provenance.json"
    if prov.is_file():
        classes = json.loads(prov.read_text())["classes"]
    else:
        classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    return dict(frame=frame, classes=classes, cm=confusion(frame["true"], frame["predicted"], classes),
                table=per_class_table(frame["true"], frame["predicted"], classes))


def evaluation_splits(ds: Dataset) -> list[str]:
    """The report split (test) first, then the selection split (val): the splits `run` scores."""
    return [s for s in ("test", "val") if s in ds.splits]


TTA_NOTE = "; each face is predicted together with its mirror image (flip test-time augmentation)"
ORIGINAL = "test_original"  # the report split with its duplicates put back: the dataset's own split as published
ROLE = {"test": "report split", "val": "selection split",
        ORIGINAL: "original report split, duplicates included: for comparison with published numbers only"}
REFIT_ROLE = "selection split, trained on (refit): not held out, optimistic"
REFIT_SELECTION = "the last epoch (refit on train + val, with a run without refit's choices)"


def decide_tta(plain: pd.DataFrame, flipped: pd.DataFrame, forced: bool | None, n_boot: int = 1000,
               seed: int = 0) -> dict:
    """Whether flip test-time augmentation is the headline protocol, decided on the selection split (val):
    it is when it raises val macro-F1 (a tie keeps the simpler protocol), unless the `tta_flip` param forces
    it (true or false). Returns split, val_macro_f1_plain, val_macro_f1_flip, difference_ci (paired
    percentile bootstrap 95% CI of flip minus plain: the same resampled images scored both ways, so the
    page can say whether the gain is more than resampling noise), used, decided_by."""
    true, a, b = (frame.to_numpy() for frame in (plain["true"], plain["predicted"], flipped["predicted"]))
    if not np.array_equal(true, flipped["true"].to_numpy()):
        raise ValueError("the plain and flipped predictions are not of the same images in the same order")
    f1_plain, f1_flip = scores(true, a)[2], scores(true, b)[2]
    gain = paired_bootstrap(true, a, b, n_boot, seed)
    used = f1_flip > f1_plain if forced is None else bool(forced)
    return dict(split="val", val_macro_f1_plain=f1_plain, val_macro_f1_flip=f1_flip,
                difference_ci=[gain["low"], gain["high"]], used=bool(used),
                decided_by="val macro-F1" if forced is None else f"forced by tta_flip={str(forced).lower()}")


def clean_label_scores(ds: Dataset, frame: pd.DataFrame) -> dict:
    """Synthetic data only ({} otherwise): accuracy against the generator's clean labels, and the share of
    the split's (noisy) labels that equal them, the ceiling the noisy-label accuracy can reach with a model
    that predicts the clean class."""
    if "clean_emotion" not in ds.frame:
        return {}
    clean = frame["location"].map(ds.frame.set_index("location")["clean_emotion"])
    return dict(clean_accuracy=float((frame["predicted"] == clean).mean()),
                label_agreement=float((frame["true"] == clean).mean()))


def valence_arousal_summary(ds: Dataset, frame: pd.DataFrame) -> dict:
    """A predictions frame's valence and arousal against the dataset's annotations of its faces: CCC, RMSE
    and va_n (`metrics.valence_arousal_scores`), and <name>_rmse_mean_guess, the RMSE of always answering
    the train split's mean (the regression's majority guess; its CCC is 0). {} when the frame has no
    predicted valence/arousal (a model without the head) or none of its faces is annotated."""
    predicted = [f"predicted_{name}" for name in VA_NAMES]
    if not all(c in frame for c in predicted) or not all(name in ds.frame for name in VA_NAMES):
        return {}
    rows = ds.frame.set_index("location")
    true = np.column_stack([frame["location"].map(rows[name]).to_numpy(np.float64) for name in VA_NAMES])
    if np.isnan(true).all(0).any():
        return {}
    train = ds.split("train" if "train" in ds.splits else ds.splits[0])
    guesses = {}
    for i, (name, key) in enumerate(zip(VA_NAMES, VA_GUESSES)):
        known = ~np.isnan(true[:, i])
        guesses[key] = float(np.sqrt(np.mean((true[known, i] - train[name].mean()) ** 2)))
    return {**valence_arousal_scores(true, frame[predicted].to_numpy(np.float64)), **guesses}


def valence_arousal_table(summaries: list[dict]) -> pd.DataFrame:
    """One row per split whose summary scores valence and arousal (for display): faces, then per dimension
    CCC, RMSE and the mean guess's RMSE. Empty when none does."""
    rows = [dict(split=s["split"], faces=s["va_n"],
                 **{f"{name} {what}": s[f"{name}_{key}"] for name in VA_NAMES
                    for what, key in (("CCC", "ccc"), ("RMSE", "rmse"), ("RMSE of the mean", "rmse_mean_guess"))})
            for s in summaries if "va_n" in s]
    return pd.DataFrame(rows)


def _scored(frame: pd.DataFrame, ds: Dataset, majority: str, params: dict, split: str, tta: bool) -> dict:
    summary = split_summary(frame["true"], frame["predicted"], ds.classes, majority, params["bootstrap"],
                            params["seed"], split)
    role = REFIT_ROLE if split == "val" and params["refit"] else ROLE[split]
    summary.update(role=role, tta=tta, **clean_label_scores(ds, frame), **valence_arousal_summary(ds, frame))
    if tta:
        summary["protocol"] += TTA_NOTE
    return dict(frame=frame, summary=summary, table=per_class_table(frame["true"], frame["predicted"], ds.classes),
                cm=confusion(frame["true"], frame["predicted"], ds.classes))


def run(params: dict, ds: Dataset, run_dir, device) -> dict:
    """The evaluation step, next to `engine.train.fit` and `analysis.ablation.run`: load the checkpoint
    params["checkpoint"] names; predict the selection split (val) with and without flip test-time
    augmentation and decide the protocol there (`decide_tta`); score the report split (test) once under
    it, and, when deduplication set images aside (test_dup), the original report split (test + test_dup,
    "test_original") beside it; write predictions_<split>.csv and metrics.json (test first: the headline;
    which later chapters, the front page and `app.export` read), and return what the evaluation chapter shows:

    ckpt (the loaded checkpoint), per_split ({split: frame, summary, table (per_class_table), cm
    (confusion)}: test, test_original when there are duplicates, val), summaries, table (summary_table),
    tta (the decision), reported (what training logged on val for the checkpoint's epoch, or None),
    recomputed (the same three scores recomputed from the val predictions under training's protocol, no
    test-time augmentation) and valence_arousal (head: whether the model predicts valence and arousal;
    annotated: whether the report split has them; each split's summary then holds their scores:
    `valence_arousal_summary`)."""
    model, ckpt = load_for_evaluation(params, run_dir, ds, device)
    majority = train_majority(ds)
    batch, amp = 2 * params["batch_size"], params["amp"]
    plain, flipped = (predict_split(model, ckpt, ds, "val", batch, device, amp, flip=f)[0] for f in (False, True))
    tta = decide_tta(plain, flipped, params["tta_flip"], params["bootstrap"], params["seed"])
    frames = {"val": flipped if tta["used"] else plain}
    if "test" in ds.splits:
        frames["test"] = predict_split(model, ckpt, ds, "test", batch, device, amp, flip=tta["used"])[0]
        if "test_dup" in ds.splits:
            dup = predict_split(model, ckpt, ds, "test_dup", batch, device, amp, flip=tta["used"])[0]
            frames[ORIGINAL] = pd.concat([frames["test"], dup], ignore_index=True)
    per_split = {}
    for split in ("test", ORIGINAL, "val"):
        if split in frames:
            save_predictions(frames[split], run_dir, split)
            per_split[split] = _scored(frames[split], ds, majority, params, split, tta["used"])
    summaries = [r["summary"] for r in per_split.values()]
    save_metrics(summaries, run_dir, checkpoint=dict(
        path=str(ckpt["path"]), epoch=int(ckpt["epoch"]), best_epoch=int(ckpt["best_epoch"]),
        selected_by=REFIT_SELECTION if params["refit"] else "val macro-F1 (selection split)",
        model=ckpt["model_config"]["name"],
        report_split="test" if "test" in per_split else "val", tta_flip=tta))
    return dict(ckpt=ckpt, per_split=per_split, summaries=summaries, table=summary_table(summaries), tta=tta,
                reported=reported_by_training(ckpt), recomputed=scores(plain["true"], plain["predicted"]),
                valence_arousal=dict(head=bool(ckpt["model_config"].get("valence_arousal")),
                                     annotated=has_valence_arousal(ds, "test" if "test" in per_split else "val")))


# -- metrics.json on a page ---------------------------------------------------------

def split_headlines(metrics: dict) -> dict:
    """The per-split entries of a metrics.json dict (or of a bundled checkpoint's "metrics"): entries such as
    "checkpoint" that are not a split's headline are left out."""
    return {split: m for split, m in metrics.items() if isinstance(m, dict) and "accuracy" in m}


def metrics_header(run: bool = False, detail: bool = False) -> list[str]:
    """The header of the Markdown table `metrics_rows` fills (same `run` and `detail`)."""
    columns = (["run"] if run else []) + ["split"] + (["images"] if detail else []) + [
        "accuracy", "balanced accuracy", "macro-F1"] + (["majority guess: balanced accuracy"] if detail else []) + [
        "protocol"]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def metrics_rows(metrics: dict, run: str | None = None, detail: bool = False) -> list[str]:
    """Markdown table rows, one per split of a metrics.json dict: the one table of headline scores that the
    book's front page, its comparison of runs and the model card show.

    run: a first column with the run's name (pages that list several runs). detail: the number of images,
    the bootstrap 95% CIs in brackets after each score (where recorded) and the majority guess's balanced
    accuracy (the model card, whose checkpoint carries no evaluation chapter to read them in)."""
    def score(m, key, fmt):
        ci = m.get(f"{key}_ci") if detail else None
        return fmt.format(m[key]) + (f" ({fmt.format(ci[0])} to {fmt.format(ci[1])})" if ci else "")

    rows = []
    for split, m in split_headlines(metrics).items():
        name = f"{split} ({m['role']})" if m.get("role") else split
        cells = ([run] if run is not None else []) + [name] + ([str(m.get("n", ""))] if detail else []) + [
            score(m, "accuracy", "{:.1%}"), score(m, "balanced_accuracy", "{:.1%}"), score(m, "macro_f1", "{:.3f}")]
        if detail:
            cells.append(f"{m['majority_balanced_accuracy']:.1%} ({m.get('majority_class', '')})"
                         if "majority_balanced_accuracy" in m else "")
        cells.append(m.get("protocol", "not recorded"))
        rows.append("| " + " | ".join(cells) + " |")
    return rows
