"""The ablation: train and score every rung of the ladder (`config.ladder`, the data of what each rung changes).

Each variant is trained for `ablation_epochs` into runs/<run>/ablation/<variant>/ by
the same engine as the main model, so a finished variant is reused on the next build.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config.ladder import VARIANTS, variant_names, variant_params
from ..data.datasets import Dataset
from ..data.images import load_split
from ..engine import train
from ..engine.checkpoint import load_model
from ..engine.runtime import TrainingError, select_device
from . import evaluate

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
    device = select_device(params["device"])
    results = []
    for name in variant_names(params):
        vp = variant_params(params, name)
        out = root / name
        try:
            fit = train.fit(vp, ds, out)
        except TrainingError as err:
            results.append(dict(variant=name, change=VARIANTS[name][0], error=str(err), run_dir=out))
            continue
        model, ckpt = load_model(out / "best.pt", device)
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

