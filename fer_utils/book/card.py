"""Model cards: what the model card chapter shows for each bundled model, or for one checkpoint given to it.

Every fact is read from the checkpoint file (its bytes, model config, params, history, and the evaluation's
scores and provenance that `app.export` stored in it), never typed in, so a card cannot drift from the file
it describes, and a model added to `predict.BUNDLED_MODELS` gets its card without an edit to the chapter,
which only loops over `predictors` and displays what the other functions return.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import yaml

from ..analysis import evaluate, figures
from ..app import predict
from ..app.predict import Predictor
from ..config.params import DEFAULTS
from ..data.labels import EMOTIONS
from ..engine.models import count_parameters
from ..paths import display_path
from .notebook import shown_params

# what `figures.training_curves` plots: a checkpoint whose history lacks one of these gets no curves
CURVES = {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"}
PROTOCOL = {True: "flip test-time augmentation (each face and its mirror image, their logits averaged)",
            False: "one pass per face (no test-time augmentation)"}
WEB_IMAGES = ("folders", "fer2013_csv", "ferplus")  # formats whose faces are web images found by keyword search


def predictors(checkpoint=None) -> list[Predictor]:
    """The models to describe: the checkpoint given, else every bundled model present, the default first.
    Empty when there is none; `missing` says so."""
    paths = [Path(checkpoint)] if checkpoint else list(predict.bundled_checkpoints().values())
    return [predict.load_predictor(path) for path in paths if path.is_file()]


def missing(checkpoint=None) -> str:
    """The sentence the chapter shows instead of cards when `predictors` found none."""
    if checkpoint:
        return f"**There is no checkpoint at `{display_path(checkpoint)}`**, so there is nothing to describe."
    looked = ", ".join(f"`{display_path(path)}`" for path in predict.BUNDLED_MODELS.values())
    return (f"**There is no bundled model in this checkout** (looked for {looked}), so there is nothing to "
            "describe. The demo uses the current run's checkpoint instead.")


def heading(predictor: Predictor) -> str:
    """The card's title: a bundled model's name (the one `fer predict --model` takes) and whether it is the
    default, its number of classes and its file."""
    present = predict.bundled_checkpoints()
    names = [name for name, path in present.items() if path.resolve() == predictor.path.resolve()]
    classes = f"{len(predictor.classes)} classes"
    if not names:
        return f"## `{predictor.path.name}` ({classes})"
    default = ", the default" if names[0] == next(iter(present)) else ""
    return f"## The `{names[0]}` model ({classes}{default}): `{predictor.path.name}`"


def trained_params(predictor: Predictor) -> dict:
    """The params the model was trained with; a key the checkpoint predates has its default value."""
    return {**DEFAULTS, **predictor.checkpoint.get("params", {})}


def facts(predictor: Predictor) -> list[tuple[str, str]]:
    """(what, value) rows: the file, model, input, output classes, training data and how training ran,
    then the run's provenance as exported."""
    ckpt, cfg, path = predictor.checkpoint, predictor.checkpoint["model_config"], predictor.path
    trained = trained_params(predictor)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    kept = (f"refit on train + the selection split (val) with the choices of a run without refit, kept: the last "
            f"epoch ({ckpt.get('best_epoch', '?')})" if trained.get("refit") else
            f"kept: epoch {ckpt.get('best_epoch', '?')}, the best val macro-F1 (selection split)")
    rows = [
        ("file", f"`{display_path(path)}` ({path.stat().st_size / 1e6:.1f} MB, sha256 `{digest[:16]}…`)"),
        ("model", f"{cfg['name']}, width {cfg['width']}, {count_parameters(predictor.model):,} parameters"
                  + (f", dropout {cfg['dropout']}" if cfg.get("dropout") else "")),
        ("input", f"{predictor.image_size}x{predictor.image_size} "
                  f"{'grayscale' if predictor.channels == 1 else 'RGB'} face crop, scaled to [-1, 1]"),
        ("output", f"{len(predictor.classes)} classes: {', '.join(predictor.classes)}"),
        ("training data", f"{predictor.dataset}, data fingerprint `{ckpt.get('fingerprint', 'not recorded')}`"),
        ("training", f"at most {trained['epochs']} epochs"
                     + (f", early stopping after {trained['early_stopping']} without improvement"
                        if trained.get("early_stopping") else "")
                     + f"; {kept}"),
    ]
    rows += [(str(key).replace("_", " "), f"{value}") for key, value in (ckpt.get("provenance") or {}).items()]
    return rows


def facts_markdown(predictor: Predictor) -> str:
    """The facts as a two-column table, then the training params that differ from the defaults."""
    table = "| | |\n|---|---|\n" + "\n".join(f"| {what} | {value} |" for what, value in facts(predictor))
    changed = yaml.safe_dump(shown_params(predictor.checkpoint.get("params", {})), sort_keys=False).rstrip()
    return (table + "\n\nTraining parameters that differ from the project's defaults "
            "(`fer_utils/config/params.py` documents each):\n\n```yaml\n" + (changed or "{}") + "\n```")


def split_scores(predictor: Predictor) -> dict:
    """The per-split scores stored with the checkpoint when it was exported (the evaluation chapter's
    metrics.json entries: n, accuracy, balanced_accuracy, macro_f1, their bootstrap CIs, the majority
    guess's scores, role, tta, protocol, f1_per_class)."""
    return evaluate.split_headlines(predictor.checkpoint.get("metrics") or {})


def scores_markdown(predictor: Predictor) -> str:
    """The scores and the protocol they were measured under: the table of stored split scores, which split
    is the report split, flip TTA or one pass, F1 per class, and what training logged on val at the kept
    epoch."""
    metrics, best = split_scores(predictor), predictor.best_metrics()
    if not metrics and not best:
        return "*The checkpoint records no scores.*"
    parts = []
    if metrics:
        table = "\n".join(evaluate.metrics_header(detail=True) + evaluate.metrics_rows(metrics, detail=True))
        if any("accuracy_ci" in m for m in metrics.values()):
            table += "\n\nIn brackets: bootstrap 95% confidence intervals (images resampled with replacement)."
        parts.append(table)
        if "test" not in metrics:
            parts.append("Only the selection split (val) was scored for this model: there is no report-split "
                         "score, and the val numbers are optimistic.")
        recorded = any("tta" in m for m in metrics.values())
        parts.append(f"Protocol of these scores: {PROTOCOL[predictor.tta]}; `fer predict` and the demo use the "
                     "same with this model." if recorded else
                     "The stored scores do not record whether flip test-time augmentation was used; "
                     f"`fer predict` and the demo use {PROTOCOL[predictor.tta]} with this model (its "
                     "`tta_flip` training parameter).")
        parts += [per_class_f1(split, m, predictor.classes) for split, m in metrics.items() if m.get("f1_per_class")]
    if best and trained_params(predictor).get("refit"):
        parts.append(
            f"At the kept (last) epoch ({best['epoch']}), training logged on the **val split**, which this model "
            f"was trained on (refit): accuracy {best['val_accuracy']:.1%}, macro-F1 {best['val_macro_f1']:.3f}. "
            "These are scores on training images, not held out; the report split's above are the ones to read.")
    elif best:
        parts.append(
            f"At the kept epoch ({best['epoch']}), training logged on the **val split** (selection split): "
            f"accuracy {best['val_accuracy']:.1%}, balanced accuracy (mean recall over classes) "
            f"{best['val_balanced_accuracy']:.1%}, macro-F1 {best['val_macro_f1']:.3f}. Protocol: one prediction "
            "per val image, the face crop exactly as the dataset provides it, no test-time augmentation. The "
            "same split chose the kept epoch (the one with the best macro-F1), so these numbers are optimistic: "
            "they are selection-split scores, not the report split's. On an imbalanced split read balanced "
            "accuracy and macro-F1, not accuracy alone.")
    return "\n\n".join(parts)


def per_class_f1(split: str, m: dict, classes: list[str]) -> str:
    """One sentence: F1 per class on a split, its weakest and strongest class. Exports store a dict
    {class: F1} (classes neither present nor predicted left out); older ones a list in class order."""
    per_class = m["f1_per_class"]
    f1 = pd.Series(per_class if isinstance(per_class, dict) else dict(zip(classes, per_class)), dtype=float)
    return (f"F1 per class on **{split}**" + (f" ({m['role']})" if m.get("role") else "") + ": "
            + ", ".join(f"{c} {v:.2f}" for c, v in f1.items())
            + f". Weakest: **{f1.idxmin()}** ({f1.min():.2f}); strongest: **{f1.idxmax()}** ({f1.max():.2f}).")


def curves(predictor: Predictor) -> go.Figure | None:
    """The training curves stored in the checkpoint's history, the kept epoch marked; None when the
    history lacks them."""
    history, best = pd.DataFrame(predictor.checkpoint.get("history") or {}), predictor.best_metrics()
    if not best or not CURVES <= set(history.columns):
        return None
    return figures.training_curves(history, best["epoch"])


def limits(predictor: Predictor) -> list[str]:
    """The model's known limits, from what it sees (size, colour), the classes it knows and the data it
    was trained on."""
    size, gray, classes = predictor.image_size, predictor.channels == 1, predictor.classes
    absent = [e for e in EMOTIONS if e not in classes]
    dataset = trained_params(predictor)["dataset"]
    found = [
        f"It sees a **{size}x{size} {'grayscale' if gray else 'colour'}** crop of one face. Fine detail and "
        + ("colour (a flushed face, for one) are" if gray else "fine detail is") + " lost at that size, and "
        "the crop must frame the face as the training crops did: the demo cuts a square around the face "
        "detector's box, widened to match how the training faces were framed, but a face detected "
        "off-centre or turned looks unlike the training faces.",
        f"It can only answer with the {len(classes)} emotions it was trained on"
        + (f"; it has no notion of {', '.join(absent)}" if absent else "") + ", and it always answers: the "
        "probabilities sum to 100% even for a face unlike any it saw, or for something that is not a face.",
        "It reads posed or candid *expressions* at one instant; it does not know what a person feels. "
        "Expressions differ across cultures, ages and individuals, and one face can show a blend.",
    ]
    if dataset in WEB_IMAGES:
        found.append(
            "Its training faces are small web images found by image search for emotion keywords: mostly "
            "frontal, often posed or exaggerated, unevenly spread over age, skin tone, gender and culture, "
            "with some mislabelled and some non-face images. Expect it to do worse on the groups and "
            "situations those images under-represent (children, older people, darker skin in poor light, "
            "glasses, masks, profile views) and on subtle, natural expressions. No per-group evaluation "
            "was possible: the data carry no demographic labels.")
    if dataset == "synthetic":
        found.append("It was trained on the project's synthetic cartoon faces: its answers for real photos "
                     "are not meaningful.")
    found.append("Do not use it to make decisions about people (hiring, grading, policing, health): "
                 "it is a teaching and demonstration model.")
    return found
