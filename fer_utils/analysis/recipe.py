"""The recipe ledger: each training step tried on real data, with its number and its cost, as the book shows it.

    fer recipe runs/fer2013 runs/fer2013-script runs/fer2013-w24:fer2013-script --machine "2-core CPU" \\
        --out book/recipe/fer2013.csv

A step is a finished, evaluated run folder (`fer train`, then the evaluation chapter's
`analysis.evaluate.run`, which writes metrics.json and the predictions). Each step is compared
with a reference run (`RUN:REFERENCE`; by default the first run, the baseline): what it changes
(the training params that differ), what it costs (training minutes and images per second from
its history), and what it gains in macro-F1 on the selection split (val), where the choice is
made, and on the report split (test), read after it, each with a paired bootstrap 95% CI on the
same images. Runs of other data (another fingerprint) or other splits cannot be compared and
are refused.

The ledger is a CSV of numbers only (no images), so it can be committed: the book's recipe page
(`page`) is computed from the ledgers in book/recipe/ on every build, whatever the book's own
dataset is.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

from ..config import params as params_mod
from ..paths import RUNS_DIR, atomic_write
from .evaluate import load_predictions, paired_bootstrap

SPLITS = ("val", "test")  # the selection split, where the choice is made, then the report split
TRAINED_ON = "trained on"  # a refit step's val verdict: it learnt from val, so val cannot judge it


class RecipeError(ValueError):
    pass


def _read_run(run_dir: Path) -> dict:
    """What the ledger needs from a run folder; a clear error names what is missing."""
    need = ["params.yaml", "history.csv", "metrics.json", "best.pt",
            *(f"predictions_{split}.csv" for split in SPLITS)]
    missing = [name for name in need if not (run_dir / name).is_file()]
    if missing:
        raise RecipeError(f"{run_dir} is not a finished, evaluated run: {', '.join(missing)} missing (train it "
                          "with `fer train`, then evaluate it with the evaluation chapter)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ckpt = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    scored = metrics.get("checkpoint", {})
    if Path(scored.get("path", "")).name != "best.pt" or scored.get("epoch") != ckpt["epoch"]:
        raise RecipeError(f"{run_dir}: metrics.json scored {scored.get('path', 'no checkpoint')} at epoch "
                          f"{scored.get('epoch')}, not best.pt (epoch {ckpt['epoch']}): evaluate the run again")
    return dict(
        name=run_dir.name,
        params=yaml.safe_load((run_dir / "params.yaml").read_text()),
        history=pd.read_csv(run_dir / "history.csv"),
        metrics=metrics,
        fingerprint=ckpt.get("fingerprint"),
        predictions={split: load_predictions(run_dir, split) for split in SPLITS})


def changes(params: dict, reference: dict) -> str:
    """The params of `params` that differ from `reference`'s and change the training, as `key=value`,
    comma-separated. A key missing from a run saved before it existed has its default; a key the schema
    no longer has (an idea tried and removed, e.g. mixup) still counts; warmup_epochs, which only the
    cosine schedule reads, counts only for a run with that schedule."""
    new, old = {**params_mod.DEFAULTS, **params}, {**params_mod.DEFAULTS, **reference}
    inert = {"warmup_epochs"} if new["scheduler"] != "cosine" else set()  # engine/optim.py: only cosine reads it
    return ", ".join(f"{k}={new.get(k)}" for k in {**old, **new} if new.get(k) != old.get(k) and k not in inert
                     and (k not in params_mod.SCHEMA or params_mod.SCHEMA[k].trains))


def gain(step: dict, reference: dict, split: str, n_boot: int = 1000) -> dict:
    """Macro-F1 of `step` minus `reference`'s on `split`, with its paired bootstrap 95% CI."""
    a, b = reference["predictions"][split], step["predictions"][split]
    if sorted(a["location"]) != sorted(b["location"]):
        raise RecipeError(f"{step['name']} and {reference['name']} were not scored on the same {split} images: "
                          "the same data, seed and selection_fraction are needed to compare them")
    merged = a.merge(b, on="location", suffixes=("_a", "_b"))
    if not (merged["true_a"] == merged["true_b"]).all():
        raise RecipeError(f"{step['name']} and {reference['name']} label the same {split} images differently")
    return paired_bootstrap(merged["true_a"], merged["predicted_a"], merged["predicted_b"], n_boot=n_boot)


def ledger(steps: list[tuple[Path, Path | None]], machine: str, n_boot: int = 1000) -> pd.DataFrame:
    """One row per (run folder, reference run folder or None for a baseline), in the given order."""
    runs = {}
    rows = []
    for run_dir, ref_dir in steps:
        for d in (run_dir, ref_dir):
            if d is not None and d not in runs:
                runs[d] = _read_run(Path(d))
        run = runs[run_dir]
        ref = runs[ref_dir] if ref_dir is not None else None
        if ref is not None and ref["fingerprint"] != run["fingerprint"]:
            raise RecipeError(f"{run['name']} (data {run['fingerprint']}) and {ref['name']} (data "
                              f"{ref['fingerprint']}) were trained on different data: not comparable")
        m, h = run["metrics"], run["history"]
        row = dict(step=run["name"], reference=ref["name"] if ref else "",
                   changes=changes(run["params"], ref["params"]) if ref else "",
                   dataset=run["params"]["dataset"], data_fingerprint=run["fingerprint"], machine=machine,
                   epochs=int(h["epoch"].max()), best_epoch=int(m["checkpoint"]["best_epoch"]),
                   train_minutes=round(float(h["epoch_time_s"].sum()) / 60, 1),
                   images_per_s=round(float(h["train_images_per_s"].mean())),
                   protocol="flip" if m["test"].get("tta") else "plain")
        for split in SPLITS:
            row.update({f"{split}_accuracy": m[split]["accuracy"],
                        f"{split}_balanced_accuracy": m[split]["balanced_accuracy"],
                        f"{split}_macro_f1": m[split]["macro_f1"]})
            trained_on = split == "val" and bool(run["params"].get("refit"))
            g = gain(run, ref, split, n_boot) if ref and not trained_on else {}
            row.update({f"{split}_f1_gain": g.get("difference"), f"{split}_gain_low": g.get("low"),
                        f"{split}_gain_high": g.get("high"),
                        f"{split}_verdict": TRAINED_ON if trained_on else g.get("verdict", "")})
        row["test_original_accuracy"] = m.get("test_original", {}).get("accuracy")
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _gain_text(row: pd.Series, split: str) -> str:
    if row[f"{split}_verdict"] == TRAINED_ON:
        return "- (trained on: refit)"
    if not row["reference"]:
        return "baseline"
    return (f"{row[f'{split}_f1_gain']:+.3f} [{row[f'{split}_gain_low']:+.3f}, {row[f'{split}_gain_high']:+.3f}] "
            f"{row[f'{split}_verdict']}")


def _names(frame: pd.DataFrame) -> str:
    return ", ".join(f"`{s}`" for s in frame["step"]) or "none"


def section(table: pd.DataFrame, title: str) -> list[str]:
    """One dataset's ledger as a page section: the table, then sentences computed from it."""
    refits = table[table["val_verdict"] == TRAINED_ON]
    held_out = table[table["val_verdict"] != TRAINED_ON]
    steps = held_out[held_out["reference"] != ""]
    lines = [f"## {title}", "",
             f"Dataset `{table['dataset'].iloc[0]}`, data fingerprint `{table['data_fingerprint'].iloc[0]}`; "
             f"trained on: {table['machine'].iloc[0]}.", "",
             "What each step changed, and what its training cost:", "",
             "| step | against | what it changes | minutes | img/s | epochs (kept) |", "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| `{r['step']}` | {('`' + r['reference'] + '`') if r['reference'] else '-'} "
                     f"| {r['changes'] or '-'} | {r['train_minutes']:.1f} | {r['images_per_s']:.0f} "
                     f"| {r['epochs']} ({r['best_epoch']}) |")
    lines += ["", "What it scored: macro-F1 gains over the run it changes, with their paired 95% CI in brackets; "
              "the test columns are accuracy / balanced accuracy / macro-F1.", "",
              "| step | protocol | val macro-F1 | gain on val | test | gain on test | original test accuracy |",
              "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(
            f"| `{r['step']}` | {r['protocol']} | {r['val_macro_f1']:.3f}"
            f"{' (trained on)' if r['val_verdict'] == TRAINED_ON else ''} | {_gain_text(r, 'val')} "
            f"| {_pct(r['test_accuracy'])} / {_pct(r['test_balanced_accuracy'])} / {r['test_macro_f1']:.3f} "
            f"| {_gain_text(r, 'test')} | {_pct(r['test_original_accuracy'])} |")
    lines.append("")
    if len(steps):
        by = {v: steps[steps["val_verdict"] == v] for v in ("better", "noise", "worse")}
        lines.append(f"On the selection split, {len(by['better'])} of {len(steps)} steps beat their reference "
                     f"(the CI of the macro-F1 gain excludes 0): {_names(by['better'])}; "
                     f"{len(by['noise'])} were within noise ({_names(by['noise'])}) and {len(by['worse'])} worse "
                     f"({_names(by['worse'])}).")
        agree = steps[steps["val_verdict"] == steps["test_verdict"]]
        lines.append(f"The report split, read after those choices, gives the same verdict for {len(agree)} of "
                     f"{len(steps)}.")
    best = held_out.loc[held_out["val_macro_f1"].idxmax()] if len(held_out) else None
    cheap = held_out.loc[held_out["train_minutes"].idxmin()] if len(held_out) else None
    against = "" if best is None else (f", {best['val_verdict']} against `{best['reference']}` there"
                                       if best["reference"] else ", the baseline")
    lines += [] if best is None else [f"The best on the selection split is `{best['step']}` (val macro-F1 {best['val_macro_f1']:.3f}{against}; "
              f"report split {_pct(best['test_accuracy'])} accuracy, macro-F1 {best['test_macro_f1']:.3f}, "
              f"{best['protocol']}), trained in {best['train_minutes']:.1f} minutes; the cheapest is "
              f"`{cheap['step']}` ({cheap['train_minutes']:.1f} minutes, val macro-F1 {cheap['val_macro_f1']:.3f})."]
    for _, r in refits.iterrows():
        lines.append(f"`{r['step']}` is a refit: trained on train + val with the choices of `{r['reference']}`, so "
                     f"val cannot judge it; on the report split its macro-F1 gain is {_gain_text(r, 'test')}.")
    return lines + [""]


def page(ledgers: dict[str, pd.DataFrame]) -> str:
    """The book's recipe page: one section per ledger ({title: table}), each computed from its numbers."""
    lines = ["# Recipe: each step and what it paid", "",
             "Every step below is a training recipe tried on real faces, trained by `fer train` and scored by "
             "the evaluation chapter's code. Each is compared with the run it changes (*against*) on the same "
             "images: the gain is its macro-F1 minus the reference's, with a paired bootstrap 95% CI, and the "
             "verdict is *noise* when the CI holds 0. The choice is made on the **selection split** (val, a "
             "seeded 10% of train); the **report split** (test) made no choice and is read after it. Both are "
             "imbalanced: read balanced accuracy and macro-F1 beside accuracy. *Protocol* is the one the "
             "selection split chose for the run (flip: each face averaged with its mirror image). The "
             "*original* test keeps the test images whose pixels copy a train image, for comparison with "
             "published numbers. Training minutes are wall time; images per second show when a run shared the "
             "machine. These numbers come from the ledgers in `book/recipe/` (`fer recipe` writes them from "
             "the run folders), not from this book's own run.", ""]
    for title, table in ledgers.items():
        lines += section(table, title)
    return "\n".join(lines)


def read_ledgers(folder: Path) -> dict[str, pd.DataFrame]:
    """The ledgers (*.csv) in `folder`, titled by file stem, in name order; {} when there are none."""
    return {f.stem: pd.read_csv(f, keep_default_na=False, na_values=[""]).fillna({"reference": "", "changes": ""})
            for f in sorted(Path(folder).glob("*.csv"))}


def parse_step(text: str, runs_dir: Path) -> tuple[Path, Path | None]:
    """RUN or RUN:REFERENCE; a bare name is a folder under runs_dir."""
    run, _, ref = text.partition(":")

    def folder(s: str) -> Path:
        p = Path(s)
        return p if p.is_dir() or len(p.parts) > 1 else runs_dir / s
    return folder(run), (folder(ref) if ref else None)


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.analysis.recipe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("steps", nargs="+", help="RUN or RUN:REFERENCE (a run folder or a name under runs/); "
                        "the first is the baseline, and steps without a reference are compared with it")
    parser.add_argument("--machine", required=True, help="where the runs trained, as the page should say it")
    parser.add_argument("--out", type=Path, required=True, help="the ledger CSV to write (e.g. book/recipe/fer2013.csv)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    args = parser.parse_args(argv)
    parsed = [parse_step(s, RUNS_DIR) for s in args.steps]
    baseline = parsed[0][0]
    steps = [parsed[0]] + [(run, ref or baseline) for run, ref in parsed[1:]]
    try:
        table = ledger(steps, args.machine, args.bootstrap)
    except RecipeError as err:
        print(f"fer recipe: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False))
    print("\n".join(section(table, args.out.stem)))
    print(f"ledger: {len(table)} steps -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
