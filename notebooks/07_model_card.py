# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-jupytext.text_representation.format_version
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Model card: the bundled model
#
# The package ships one small trained model, used by the upload demo and by
# `python -m fer_utils.app.predict` when no checkpoint of your own is given. This
# page describes it from what its checkpoint file records: the model, the
# parameters and data it was trained with, and its scores on the report split
# (the one that made no choice) with the protocol they were measured under. Nothing here is typed in by hand, so the
# card always matches the file.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}
checkpoint = None  # None: the bundled model (fer_utils.app.predict.BUNDLED_CHECKPOINT)

# %% tags=["remove-cell"]
import hashlib
from pathlib import Path

import pandas as pd
import yaml
from IPython.display import Markdown, display

from fer_utils.analysis import evaluate, figures
from fer_utils.app import predict
from fer_utils.book import notebook
from fer_utils.config.params import DEFAULTS
from fer_utils.data.labels import EMOTIONS
from fer_utils.engine.models import count_parameters
from fer_utils.paths import display_path

params, run_dir = notebook.start(params_file, run_dir, overrides)
path = Path(checkpoint) if checkpoint else predict.BUNDLED_CHECKPOINT
card = predict.load_predictor(path) if path.is_file() else None
if card is not None:
    ckpt, cfg = card.checkpoint, card.checkpoint["model_config"]
    trained = {**DEFAULTS, **ckpt.get("params", {})}
    history = pd.DataFrame(ckpt["history"]) if ckpt.get("history") else pd.DataFrame()
    best = card.best_metrics()

# %% tags=["remove-input"]
if card is None:
    display(Markdown(f"**There is no bundled model in this checkout** (`{display_path(path)}`), so there is "
                     "nothing to describe. The demo uses the current run's checkpoint instead."))
else:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    rows = [
        ("file", f"`{display_path(path)}` ({path.stat().st_size / 1e6:.1f} MB, sha256 `{digest[:16]}…`)"),
        ("model", f"{cfg['name']}, width {cfg['width']}, {count_parameters(card.model):,} parameters"
                  + (f", dropout {cfg['dropout']}" if cfg.get("dropout") else "")),
        ("input", f"{card.image_size}x{card.image_size} {'grayscale' if card.channels == 1 else 'RGB'} face crop, "
                  "scaled to [-1, 1]"),
        ("output", f"{len(card.classes)} classes: {', '.join(card.classes)}"),
        ("training data", f"{card.dataset}, data fingerprint `{ckpt.get('fingerprint', 'not recorded')}`"),
        ("training", f"at most {trained['epochs']} epochs"
                     + (f", early stopping after {trained['early_stopping']} without improvement"
                        if trained.get("early_stopping") else "")
                     + f"; kept: epoch {ckpt.get('best_epoch', '?')}, the best val macro-F1 (selection split)"),
    ]
    for key, value in (ckpt.get("provenance") or {}).items():
        rows.append((str(key).replace("_", " "), f"{value}"))
    display(Markdown("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)))
    changed = notebook.shown_params(ckpt.get("params", {}))
    display(Markdown("Training parameters that differ from the project's defaults "
                     "(`fer_utils/config/params.py` documents each):\n\n```yaml\n"
                     + (yaml.safe_dump(changed, sort_keys=False).rstrip() or "{}") + "\n```"))

# %% [markdown]
# ## Scores and how they were measured
#
# The headline is the **report split** (test): scored once, it chose nothing.
# The selection split (val) chose the kept epoch and the protocol, so its
# numbers are optimistic.

# %% tags=["remove-input"]
if card is not None:
    # Scores stored with the checkpoint when it was bundled (the evaluation chapter's metrics.json format:
    # split -> n, accuracy, balanced_accuracy, macro_f1, their bootstrap 95% CIs, majority-guess scores, protocol).
    metrics = evaluate.split_headlines(ckpt.get("metrics") or {})
    if metrics:
        table = evaluate.metrics_header(detail=True) + evaluate.metrics_rows(metrics, detail=True)
        display(Markdown("\n".join(table) + ("\n\nIn brackets: bootstrap 95% confidence intervals (images "
                                             "resampled with replacement)." if any(
                                                 "accuracy_ci" in m for m in metrics.values()) else "")))
        for split, m in metrics.items():
            per_class = m.get("f1_per_class")
            if isinstance(per_class, list) and len(per_class) == len(card.classes):
                per_class = dict(zip(card.classes, per_class))
            if isinstance(per_class, dict) and per_class:
                f1 = pd.Series(per_class, dtype=float)
                display(Markdown(f"F1 per class on **{split}**" + (f" ({m['role']})" if m.get("role") else "") + ": " + ", ".join(f"{c} {v:.2f}" for c, v in f1.items())
                                 + f". Weakest: **{f1.idxmin()}** ({f1.min():.2f}); strongest: **{f1.idxmax()}** "
                                 f"({f1.max():.2f})."))
    if best:
        display(Markdown(
            f"At the kept epoch ({best['epoch']}), training logged on the **val split** (selection split): accuracy "
            f"{best['val_accuracy']:.1%}, balanced accuracy (mean recall over classes) "
            f"{best['val_balanced_accuracy']:.1%}, macro-F1 {best['val_macro_f1']:.3f}.\n\n"
            "Protocol: one prediction per val image, the face crop exactly as the dataset provides it, "
            "no test-time augmentation. The same split chose the kept epoch (the one with the best macro-F1), "
            "so these numbers are optimistic: they are selection-split scores, not the report split's. On an "
            "imbalanced split read balanced accuracy and macro-F1, not accuracy alone."))
    elif not metrics:
        display(Markdown("*The checkpoint records no scores.*"))

# %% tags=["remove-input"]
if card is not None and best and {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_balanced_accuracy",
                                  "val_macro_f1"} <= set(history.columns):
    figures.training_curves(history, best["epoch"]).show()

# %% [markdown]
# ## Known limits

# %% tags=["remove-input"]
if card is not None:
    size, gray = card.image_size, card.channels == 1
    missing = [e for e in EMOTIONS if e not in card.classes]
    limits = [
        f"It sees a **{size}x{size} {'grayscale' if gray else 'colour'}** crop of one face. Fine detail and "
        + ("colour (a flushed face, for one) are" if gray else "fine detail is") + " lost at that size, and "
        "the crop must frame the face as the training crops did: the demo cuts a square around the face "
        "detector's box, widened to match how the training faces were framed, but a face detected "
        "off-centre or turned looks unlike the training faces.",
        f"It can only answer with the {len(card.classes)} emotions it was trained on"
        + (f"; it has no notion of {', '.join(missing)}" if missing else "") + ", and it always answers: the "
        "probabilities sum to 100% even for a face unlike any it saw, or for something that is not a face.",
        "It reads posed or candid *expressions* at one instant; it does not know what a person feels. "
        "Expressions differ across cultures, ages and individuals, and one face can show a blend.",
    ]
    if trained["dataset"] in ("folders", "fer2013_csv", "ferplus"):
        limits.append(
            "Its training faces are small web images found by image search for emotion keywords: mostly "
            "frontal, often posed or exaggerated, unevenly spread over age, skin tone, gender and culture, "
            "with some mislabelled and some non-face images. Expect it to do worse on the groups and "
            "situations those images under-represent (children, older people, darker skin in poor light, "
            "glasses, masks, profile views) and on subtle, natural expressions. No per-group evaluation "
            "was possible: the data carry no demographic labels.")
    if trained["dataset"] == "synthetic":
        limits.append("It was trained on the project's synthetic cartoon faces: its answers for real photos "
                      "are not meaningful.")
    limits.append("Do not use it to make decisions about people (hiring, grading, policing, health): "
                  "it is a teaching and demonstration model.")
    display(Markdown("\n".join(f"- {text}" for text in limits)))
