"""The ablation: train and score every rung of the ladder (`config.ladder`, the data of what each rung changes).

Each variant is trained for `ablation_epochs` with each of `ablation_seeds` seeds into
runs/<run>/ablation/<variant>/seed<seed>/ by the same engine as the main model, so a
finished variant is reused on the next build. Everything is scored on the selection
split (val): the ablation is itself a choice of recipe, so the report split (test)
stays out of it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config.ladder import VARIANTS, changes_between, variant_names, variant_params, variant_seeds
from ..data.datasets import Dataset
from ..data.images import load_split
from ..engine import train
from ..engine.checkpoint import load_model
from ..engine.runtime import TrainingError, select_device
from ..metrics import scores
from . import evaluate


def rarest_classes(ds: Dataset, n: int = 2) -> list[str]:
    """The `n` classes with the fewest training images (among those in the validation split)."""
    counts = ds.split("train")["label"].value_counts()
    in_val = set(ds.split("val")["label"])
    return [ds.classes[c] for c in counts.sort_values(kind="stable").index if c in in_val][:n]


def run(params: dict, ds: Dataset, run_dir: str | Path) -> list[dict]:
    """Train (or reuse) every variant with every seed; score each best checkpoint on val and on train.

    Train is scored like val: the model in eval mode, the images without augmentation, so the train-val
    gap measures overfitting, not the augmentation's difficulty or dropout. Predictions go to
    predictions_train.csv and predictions_val.csv beside each checkpoint. A variant whose training fails
    (NaN loss, out of memory) is reported in its result's `error` and the others still run; nothing
    already trained is lost. Each result: variant, change, error, run_dirs, fits, train, val (lists, one
    entry per seed that trained).
    """
    root = Path(run_dir) / "ablation"
    device = select_device(params["device"])
    images = {split: load_split(ds, split, params["image_size"], params["channels"]) for split in ("train", "val")}
    results = []
    for name in variant_names(params):
        result = dict(variant=name, change=VARIANTS[name].change, error=None, run_dirs=[], fits=[], train=[],
                      val=[])
        for seed in variant_seeds(params):
            out = root / name / f"seed{seed}"
            result["run_dirs"].append(out)
            try:
                fit = train.fit(variant_params(params, name, seed), ds, out)
            except TrainingError as err:
                result["error"] = f"seed {seed}: {err}"
                break
            model, _ = load_model(out / "best.pt", device)
            for split, (x, y, locations) in images.items():
                probs = evaluate.predict(model, x, 2 * params["batch_size"], device, params["amp"])
                frame = evaluate.predictions_frame(locations, y, probs, ds.classes)
                evaluate.save_predictions(frame, out, split)
                result[split].append(frame)
            result["fits"].append(fit)
        results.append(result)
    return results


def summary_table(results: list[dict], ds: Dataset) -> pd.DataFrame:
    """One row per variant, scores on val (the selection split) as the mean over seeds: accuracy, balanced
    accuracy, macro-F1 (and its standard deviation over seeds when there are several), F1 of the rarest
    classes; train balanced accuracy (eval mode, no augmentation) and the gap, train minus val balanced
    accuracy (train is imbalanced and val balanced: plain accuracy would mix the class prior into the gap);
    the best epoch (mean over seeds), epochs trained and training minutes (all seeds). Failures say why."""
    rare = rarest_classes(ds)
    rows = []
    for r in results:
        row = dict(variant=r["variant"], change=r["change"])
        if r["error"]:
            rows.append({**row, "status": f"failed: {r['error']}"})
            continue
        per_seed = {split: np.array([scores(f["true"], f["predicted"]) for f in r[split]])
                    for split in ("train", "val")}  # (seeds, [accuracy, balanced accuracy, macro-F1])
        acc, bal, f1 = (float(v) for v in per_seed["val"].mean(0))
        train_bal = float(per_seed["train"][:, 1].mean())
        f1_sd = float(per_seed["val"][:, 2].std(ddof=1)) if len(r["val"]) > 1 else np.nan
        rare_f1 = np.mean([evaluate.per_class_table(f["true"], f["predicted"], ds.classes).set_index("emotion")
                           .loc[rare, "f1"].to_numpy() for f in r["val"]], axis=0)
        rows.append({**row, "status": "ok", "seeds": len(r["val"]), "accuracy": acc, "balanced_accuracy": bal,
                     "macro_f1": f1, "macro_f1_sd": f1_sd, **{f"f1_{c}": float(v) for c, v in zip(rare, rare_f1)},
                     "train_balanced_accuracy": train_bal, "gap": train_bal - bal,
                     "best_epoch": float(np.mean([fit["best_epoch"] for fit in r["fits"]])),
                     "epochs": max(len(fit["history"]) for fit in r["fits"]),
                     "train_minutes": sum(fit["train_time_s"] for fit in r["fits"]) / 60})
    return pd.DataFrame(rows)


def steps(results: list[dict], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Each rung that trained against the nearest rung above it that trained: the macro-F1 difference on val
    (mean over seeds) with its paired bootstrap 95% CI (`evaluate.paired_bootstrap`: the same images,
    resampled together) and the verdict, "noise" when the CI spans 0. `changes` says what differs: one
    idea between neighbours, every skipped rung's change too when the run's list leaves rungs out."""
    ok = [r for r in results if not r["error"]]
    rows = []
    for above, r in zip(ok, ok[1:]):
        y_true = r["val"][0]["true"].to_numpy()
        pred = {x["variant"]: np.stack([f["predicted"].to_numpy() for f in x["val"]]) for x in (above, r)}
        ci = evaluate.paired_bootstrap(y_true, pred[above["variant"]], pred[r["variant"]], n_boot, seed)
        rows.append(dict(variant=r["variant"], above=above["variant"],
                         changes="; ".join(changes_between(above["variant"], r["variant"])),
                         macro_f1_change=ci["difference"], ci_low=ci["low"], ci_high=ci["high"],
                         verdict=ci["verdict"]))
    return pd.DataFrame(rows, columns=["variant", "above", "changes", "macro_f1_change", "ci_low", "ci_high",
                                       "verdict"])


def histories(results: list[dict]) -> dict[str, pd.DataFrame]:
    """Per-epoch history of every variant that trained (its first seed's)."""
    return {r["variant"]: r["fits"][0]["history"] for r in results if not r["error"]}


def comparisons(results: list[dict], classes) -> tuple[dict, dict]:
    """({variant: confusion matrix}, {variant: per-class table}) on val, every seed's predictions pooled,
    for figures.compare_*."""
    pooled = {r["variant"]: pd.concat(r["val"], ignore_index=True) for r in results if not r["error"]}
    cms = {name: evaluate.confusion(f["true"], f["predicted"], classes) for name, f in pooled.items()}
    tables = {name: evaluate.per_class_table(f["true"], f["predicted"], classes) for name, f in pooled.items()}
    return cms, tables


def best_variant(table: pd.DataFrame) -> pd.Series:
    ok = table[table["status"] == "ok"]
    return ok.loc[ok["macro_f1"].idxmax()]


def rare_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("f1_")]
