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
# # Ablation
#
# The original study trained a plain CNN, watched it overfit, and listed what
# it would try next: batch norm, dropout, DropBlock, weight decay, geometric
# and pixel augmentation, something for the class imbalance, residual blocks.
# Here each of those is one step of a ladder, trained on the same data with
# the same optimiser, schedule and epoch budget; each step keeps the changes
# above it. The variants are the `ablation` parameter, their epochs
# `ablation_epochs`; each is saved under `ablation/<variant>/` in the run
# folder and reused on the next build.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
import numpy as np
from IPython.display import Markdown, display

from fer_utils.analysis import ablation, evaluate, figures
from fer_utils.book import notebook
from fer_utils.data.datasets import open_dataset

params, run_dir = notebook.start(params_file, run_dir, overrides)
ds = open_dataset(params)
results = ablation.run(params, ds, run_dir)
table = ablation.summary_table(results, ds) if results else None

# %% tags=["remove-input"]
if table is None:
    display(Markdown("This run's params name no ablation variants (`ablation` is empty), so this chapter has "
                     f"nothing to show. Valid variants: {', '.join(ablation.VARIANTS)}."))
else:
    balanced = evaluate.is_balanced(np.bincount(ds.split("val")["label"], minlength=len(ds.classes)))
    failed = table[table["status"] != "ok"]
    budget = params["ablation_epochs"] or params["epochs"]
    display(Markdown(
        f"{len(table)} variants, each trained for up to {budget} epoch{'s' if budget > 1 else ''} "
        f"on {len(ds.split('train')):,} training images and scored with its best epoch (by validation macro-F1) "
        f"on the **validation split** ({len(ds.split('val')):,} images, "
        + ("balanced: accuracy equals balanced accuracy" if balanced else
           "imbalanced: compare balanced accuracy and macro-F1, not accuracy alone") + ")."
        + "".join(f"\n\n**{r.variant} failed**: {r.status[len('failed: '):]}" for r in failed.itertuples())
    ))

# %% [markdown]
# ## The ladder
#
# One row per variant. *Rare* columns are the F1 of the classes with the fewest
# training images, where imbalance handling should help most. Train accuracy is
# the best checkpoint scored on the training images without augmentation, so
# the gap to validation accuracy measures overfitting the same way for every
# variant.

# %% tags=["remove-input"]
if table is not None:
    rare = ablation.rare_columns(table)
    shown = table.rename(columns={c: f"F1 {c[3:]} (rare)" for c in rare})
    percent = ["accuracy", "balanced_accuracy", "train_accuracy"]
    display(shown.style.format({**{c: "{:.1%}" for c in percent}, "macro_f1": "{:.3f}", "gap": "{:+.1%}",
                                **{f"F1 {c[3:]} (rare)": "{:.3f}" for c in rare}, "train_minutes": "{:.1f}",
                                "best_epoch": "{:.0f}", "epochs": "{:.0f}"}, na_rep="-").hide(axis="index"))

# %% tags=["remove-input"]
if table is not None and (table["status"] == "ok").any():
    figures.ablation_bars(table).show()
    ok = table[table["status"] == "ok"].set_index("variant")
    best = ablation.best_variant(table)
    lines = [f"The best validation macro-F1 is **{best['macro_f1']:.3f}**, from **{best['variant']}** "
             f"(balanced accuracy {best['balanced_accuracy']:.1%})."]
    if "baseline" in ok.index:
        base = ok.loc["baseline"]
        lines.append(f"The plain baseline scores macro-F1 {base['macro_f1']:.3f} with a train-val gap of "
                     f"{100 * base['gap']:+.1f} points.")
        for name, row in ok.drop("baseline").iterrows():
            lines.append(f"**{name}**: macro-F1 {row['macro_f1'] - base['macro_f1']:+.3f}, gap "
                         f"{100 * (row['gap'] - base['gap']):+.1f} points against the baseline.")
    display(Markdown("\n\n".join(lines)))

# %% [markdown]
# ## Learning curves
#
# Validation macro-F1 per epoch for every variant: regularisation and
# augmentation usually start slower and end higher.

# %% tags=["remove-input"]
if table is not None and (table["status"] == "ok").any():
    figures.compare_curves(ablation.histories(results)).show()

# %% [markdown]
# ## Where the variants differ
#
# Row-normalised validation confusion matrices (the diagonal is each class's
# recall) and per-class F1, variant by variant.

# %% tags=["remove-input"]
if table is not None and (table["status"] == "ok").any():
    cms, tables = ablation.comparisons(results, ds.classes)
    figures.compare_confusions(cms, "Validation confusion matrices, by variant").show()
    figures.compare_f1(tables, title="Validation F1 per class, by variant").show()
