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
# it would try next: batch norm, dropout, weight decay, augmentation, something
# for the class imbalance, residual blocks, a U-shaped network. Here each of
# those is one rung of a ladder, trained on the same data with the same
# optimiser, schedule and epoch budget; each rung keeps the changes above it
# and differs from the rung above by one idea, so each rung is compared with
# the rung above it, not with the first. Every rung trains with the
# class-weighted loss: train has AffectNet's class shares and the validation
# split is balanced, so a rung without it would mostly measure that prior
# shift. One rung is the main recipe, the model the other chapters evaluate.
# Everything here is scored on the **selection split** (val): choosing a recipe
# is a choice, so the report split (test) stays out of it. The rungs are the
# `ablation` parameter, their budget `ablation_epochs`, their seeds
# `ablation_seeds`; each is saved under `ablation/<variant>/seed<seed>/` in the
# run folder and reused on the next build.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
from IPython.display import Markdown, display

from fer_utils.analysis import ablation, figures
from fer_utils.book import notebook
from fer_utils.config.ladder import RECIPE, variant_seeds
from fer_utils.data.datasets import open_dataset

params, run_dir = notebook.start(params_file, run_dir, overrides)
ds = open_dataset(params)
results = ablation.run(params, ds, run_dir)
table = ablation.summary_table(results, ds) if results else None
trained = table is not None and (table["status"] == "ok").any()
step_table = ablation.steps(results, params["bootstrap"], params["seed"]) if trained and params["bootstrap"] >= 2 \
    else None

# %% tags=["remove-input"]
if table is None:
    display(Markdown("This run's params name no ablation variants (`ablation` is empty), so this chapter has "
                     f"nothing to show. Valid variants: {', '.join(ablation.VARIANTS)}."))
else:
    failed = table[table["status"] != "ok"]
    budget = params["ablation_epochs"] or params["epochs"]
    seeds = variant_seeds(params)
    minutes = table["train_minutes"].sum() if "train_minutes" in table else 0.0
    display(Markdown(
        f"{len(table)} variants, each trained for {budget} epoch{'s' if budget > 1 else ''} (its cosine "
        f"schedule ends there) with {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}) on {len(ds.split('train')):,} training images, {minutes:.1f} minutes "
        f"of training in all, and scored with its best epoch (by macro-F1) on the **selection split (val)**, "
        f"{len(ds.split('val')):,} images"
        + ("; with several seeds every score is the mean over them" if len(seeds) > 1 else "") + "."
        + "".join(f"\n\n**{r.variant} failed**: {r.status[len('failed: '):]}" for r in failed.itertuples())
    ))

# %% [markdown]
# ## The ladder
#
# One row per variant, scored on the selection split (val). *Rare* columns are
# the F1 of the classes with the fewest training images. *Train balanced
# accuracy* is the best checkpoint scored on the training images in eval mode
# and without augmentation, so the gap (train minus val, both balanced
# accuracy: train is imbalanced and val is not, and plain accuracy would put
# the class prior into the gap) measures overfitting the same way for every
# variant.

# %% tags=["remove-input"]
if table is not None:
    rare = ablation.rare_columns(table)
    shown = table.rename(columns={c: f"F1 {c[3:]} (rare)" for c in rare})
    shown["variant"] = shown["variant"].where(shown["variant"] != RECIPE, f"{RECIPE} (main recipe)")
    percent = ["accuracy", "balanced_accuracy", "train_balanced_accuracy"]
    display(shown.style.format({**{c: "{:.1%}" for c in percent}, "macro_f1": "{:.3f}", "macro_f1_sd": "{:.3f}",
                                "gap": "{:+.1%}", **{f"F1 {c[3:]} (rare)": "{:.3f}" for c in rare},
                                "train_minutes": "{:.1f}", "best_epoch": "{:.1f}", "epochs": "{:.0f}",
                                "seeds": "{:.0f}"}, na_rep="-").hide(axis="index"))

# %% [markdown]
# ## Each rung against the rung above
#
# The change in validation macro-F1 from the rung above, with a paired
# bootstrap 95% CI: the same images are resampled for both rungs, so the
# variation they share (hard and easy faces) cancels. A CI that spans 0 is
# *noise*: this split cannot tell the two rungs apart.

# %% tags=["remove-input"]
if step_table is None and trained:
    display(Markdown("No comparisons: `bootstrap` is below 2 resamples."))
elif step_table is not None and len(step_table):
    display(step_table.style.format({"macro_f1_change": "{:+.3f}", "ci_low": "{:+.3f}", "ci_high": "{:+.3f}"})
            .hide(axis="index"))

# %% tags=["remove-input"]
if trained:
    figures.ablation_bars(table).show()
    ok = table[table["status"] == "ok"].set_index("variant")
    best = ablation.best_variant(table)
    lines = [f"The best validation macro-F1 is **{best['macro_f1']:.3f}**, from **{best['variant']}** "
             f"(balanced accuracy {best['balanced_accuracy']:.1%}); guessing scores about 1/{len(ds.classes)} = "
             f"{1 / len(ds.classes):.3f}."]
    if RECIPE in ok.index:
        recipe = ok.loc[RECIPE]
        lines.append(f"The main recipe (**{RECIPE}**) scores {recipe['macro_f1']:.3f} at this budget, with a "
                     f"train-val balanced-accuracy gap of {100 * recipe['gap']:+.1f} points.")
    for s in (step_table.itertuples() if step_table is not None else []):
        verdict = ("noise: the CI spans 0" if s.verdict == "noise"
                   else f"{s.verdict}: the CI excludes 0")
        lines.append(f"**{s.variant}** against **{s.above}**, {s.changes}: macro-F1 {s.macro_f1_change:+.3f} "
                     f"(95% CI {s.ci_low:+.3f} to {s.ci_high:+.3f}, {verdict}); gap "
                     f"{100 * (ok.loc[s.variant, 'gap'] - ok.loc[s.above, 'gap']):+.1f} points.")
    display(Markdown("\n\n".join(lines)))

# %% [markdown]
# ## Learning curves
#
# Validation macro-F1 per epoch for every variant (its first seed): a curve
# that is still rising at the last epoch had too small a budget.

# %% tags=["remove-input"]
if trained:
    figures.compare_curves(ablation.histories(results)).show()

# %% [markdown]
# ## Where the variants differ
#
# Row-normalised validation confusion matrices (the diagonal is each class's
# recall) and per-class F1, variant by variant (every seed's predictions
# pooled).

# %% tags=["remove-input"]
if trained:
    cms, tables = ablation.comparisons(results, ds.classes)
    figures.compare_confusions(cms, "Validation confusion matrices, by variant").show()
    figures.compare_f1(tables, title="Validation F1 per class, by variant").show()
