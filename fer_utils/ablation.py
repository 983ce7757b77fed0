"""The ablation: the original study's plain CNN, then the changes it wished for, one at a time.

Each variant is a set of parameter overrides on top of the run's params (data, image
size, seed, width, optimiser and schedule stay the run's), trained for `ablation_epochs`
into runs/<run>/ablation/<variant>/ by the same engine as the main model, so a finished
variant is reused on the next build. The ladder is cumulative: each step keeps the
previous one's changes, so each row's difference from the row above is one idea.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import evaluate, train
from .datasets import Dataset
from .images import load_split

_PLAIN = dict(model="baseline_cnn", dropout=0.0, dropblock=0.0, weight_decay=0.0, l1=0.0, label_smoothing=0.0,
              imbalance="none", early_stopping=None, aug_flip=False, aug_rotate=0.0, aug_crop=0.0, aug_jitter=0.0,
              aug_blur=0.0, aug_erasing=0.0)
_REGULARIZED = {**_PLAIN, "model": "regularized_cnn", "dropout": 0.3, "dropblock": 0.1, "weight_decay": 0.05}
_AUGMENTED = {**_REGULARIZED, "aug_flip": True, "aug_rotate": 10.0, "aug_crop": 0.8, "aug_jitter": 0.2,
              "aug_erasing": 0.25}

# name -> (what changes, overrides)
VARIANTS = {
    "baseline": ("the study's plain CNN: no batch norm, dropout, weight decay or augmentation", _PLAIN),
    "regularized": ("+ batch norm, dropout 0.3, DropBlock 0.1, weight decay 0.05", _REGULARIZED),
    "augmented": ("+ flip, rotation, random crop, brightness/contrast jitter, random erasing", _AUGMENTED),
    "weighted_loss": ("+ class-weighted loss (imbalance)", {**_AUGMENTED, "imbalance": "weighted_loss"}),
    "weighted_sampler": ("+ class-balanced sampling instead (imbalance)",
                         {**_AUGMENTED, "imbalance": "weighted_sampler"}),
    "resnet": ("residual blocks instead of the plain CNN (augmented, weighted loss)",
               {**_AUGMENTED, "imbalance": "weighted_loss", "model": "resnet"}),
}


def variant_names(params: dict) -> list[str]:
    """The variants params["ablation"] names (comma-separated), in ladder order; unknown names are an error."""
    names = [n.strip() for n in (params.get("ablation") or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    return [n for n in VARIANTS if n in names]


def variant_params(params: dict, name: str) -> dict:
    """The run's params with the variant's overrides and the ablation's epoch budget."""
    epochs = params.get("ablation_epochs") or params["epochs"]
    return {**params, **VARIANTS[name][1], "epochs": epochs, "run_name": f"{params['run_name']}-{name}",
            "checkpoint": "best"}


def rarest_classes(ds: Dataset, n: int = 2) -> list[str]:
    """The `n` classes with the fewest training images (among those in the validation split)."""
    counts = ds.split("train")["label"].value_counts()
    in_val = set(ds.split("val")["label"])
    return [ds.classes[c] for c in counts.sort_values(kind="stable").index if c in in_val][:n]


def run(params: dict, ds: Dataset, run_dir: str | Path) -> list[dict]:
    """Train (or reuse) every variant, score its best checkpoint on val and, without augmentation, on train.

    A variant whose training fails (NaN loss, out of memory) is reported in its result's `error` and the
    others still run; nothing already trained is lost.
    """
    root = Path(run_dir) / "ablation"
    device = train.select_device(params["device"])
    results = []
    for name in variant_names(params):
        vp = variant_params(params, name)
        out = root / name
        try:
            fit = train.fit(vp, ds, out)
        except train.TrainingError as err:
            results.append(dict(variant=name, change=VARIANTS[name][0], error=str(err), run_dir=out))
            continue
        model, ckpt = train.load_model(out / "best.pt", device)
        scored = {}
        for split in ("train", "val"):
            x, y, locations = load_split(ds, split, params["image_size"], params["channels"])
            probs = evaluate.predict(model, x, 2 * params["batch_size"], device, params["amp"])
            scored[split] = evaluate.predictions_frame(locations, y, probs, ds.classes)
        evaluate.save_predictions(scored["val"], out, "val")
        results.append(dict(variant=name, change=VARIANTS[name][0], error=None, run_dir=out, fit=fit,
                            train=scored["train"], val=scored["val"]))
    return results


def summary_table(results: list[dict], ds: Dataset) -> pd.DataFrame:
    """One row per variant: validation accuracy, balanced accuracy, macro-F1, F1 of the rarest classes,
    train accuracy (no augmentation) and the train-val gap, epochs, training minutes; failures say why."""
    rare = rarest_classes(ds)
    rows = []
    for r in results:
        row = dict(variant=r["variant"], change=r["change"])
        if r["error"]:
            rows.append({**row, "status": f"failed: {r['error']}"})
            continue
        val, tr = r["val"], r["train"]
        acc, bal, f1 = evaluate.scores(val["true"], val["predicted"])
        train_acc = float((tr["true"] == tr["predicted"]).mean())
        per_class = evaluate.per_class_table(val["true"], val["predicted"], ds.classes).set_index("emotion")
        rows.append({**row, "status": "ok", "accuracy": acc, "balanced_accuracy": bal, "macro_f1": f1,
                     **{f"f1_{c}": float(per_class.loc[c, "f1"]) for c in rare},
                     "train_accuracy": train_acc, "gap": train_acc - acc, "best_epoch": r["fit"]["best_epoch"],
                     "epochs": len(r["fit"]["history"]), "train_minutes": r["fit"]["train_time_s"] / 60})
    return pd.DataFrame(rows)


def histories(results: list[dict]) -> dict[str, pd.DataFrame]:
    """Per-epoch history of every variant that trained."""
    return {r["variant"]: r["fit"]["history"] for r in results if not r["error"]}


def comparisons(results: list[dict], classes) -> tuple[dict, dict]:
    """({variant: confusion matrix}, {variant: per-class table}) on val, for figures.compare_*."""
    ok = [r for r in results if not r["error"]]
    cms = {r["variant"]: evaluate.confusion(r["val"]["true"], r["val"]["predicted"], classes) for r in ok}
    tables = {r["variant"]: evaluate.per_class_table(r["val"]["true"], r["val"]["predicted"], classes) for r in ok}
    return cms, tables


def best_variant(table: pd.DataFrame) -> pd.Series:
    ok = table[table["status"] == "ok"]
    return ok.loc[ok["macro_f1"].idxmax()]


def rare_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("f1_")]

