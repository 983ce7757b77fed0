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
# # Training
#
# The model named by the `model` parameter is trained on the train split and
# checked on the val split (the *selection split*: it chooses, and is not the
# report split) after every epoch. The checkpoint with the best val macro-F1
# is kept (`best.pt`) beside the last one (`last.pt`);
# both are plain state_dicts with the params, class names and data fingerprint.
# A finished checkpoint for the same parameters and data is reused instead of
# training again (set `retrain: true` to force it).

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
from IPython.display import Markdown, display

from fer_utils.analysis import evaluate, figures
from fer_utils.book import notebook
from fer_utils.data import explore
from fer_utils.data.datasets import open_dataset
from fer_utils.engine import runtime, train

params, run_dir = notebook.start(params_file, run_dir, overrides)
ds = open_dataset(params)
result = train.fit(params, ds, run_dir)
history, best = result["history"], result["best_epoch"]
row = history.set_index("epoch").loc[best]

# %% tags=["remove-input"]
how = ("reused from an earlier run with the same parameters and data (no training in this build)"
       if result["reused"] else f"trained in this build in {result['wall_time_s'] / 60:.1f} minutes")
balanced = evaluate.is_balanced(explore.class_counts(ds)["val"])
display(Markdown(
    f"**{params['model']}** (width {params['width']}) on {len(ds.split('train')):,} training images of "
    f"{len(ds.classes)} classes at {params['image_size']} px, {len(history)} epochs, "
    f"{how}; {result['images_per_s']:,.0f} training images/s on {runtime.select_device(params['device'])}.\n\n"
    f"Best epoch **{best}** (by val macro-F1). On the **val split** ({ds.split_roles['val']}; "
    f"{'balanced: accuracy and balanced accuracy coincide' if balanced else 'imbalanced: read balanced accuracy and macro-F1, not accuracy alone'}): "
    f"accuracy {row['val_accuracy']:.1%}, balanced accuracy {row['val_balanced_accuracy']:.1%}, "
    f"macro-F1 {row['val_macro_f1']:.3f}."
))

# %% [markdown]
# ## Learning curves
#
# Per epoch: the train loss (left), the val loss (middle) and the scores
# (right). The two losses are different quantities (their panel titles say
# which), so each has its own axis. Train accuracy is measured on the
# augmented batches as they were trained, so it can sit below val accuracy
# when augmentation is strong. The dashed line marks the best epoch.

# %% tags=["remove-input"]
figures.training_curves(history, best, train_loss=train.objective(params)).show()
if params["ema"]:
    display(Markdown(f"Validation scores the moving average of the weights (decay {params['ema']:g}), which is "
                     "also what `best.pt` holds and the evaluation chapter scores; the train loss is the trained "
                     "weights'."))

# %% [markdown]
# ## Train-validation gap
#
# The original study's baseline reached 75% on train and 70% on validation and
# kept climbing on train only: the signature of overfitting. The gap per epoch:

# %% tags=["remove-input"]
figures.train_val_gap(history).show()
last = history.iloc[-1]
train_acc, val_acc, gap = evaluate.percent_pair(last["train_accuracy"], last["val_accuracy"])
display(Markdown(
    f"After the last epoch the model scores {train_acc} on train (augmented) and {val_acc} on val, "
    + ("no gap at this precision." if train_acc == val_acc else
       f"{gap} percentage points {'lower' if last['val_accuracy'] < last['train_accuracy'] else 'higher'} on val.")
))

# %% [markdown]
# ## Speed
#
# Training throughput per epoch (images per second, augmentation included) and
# the wall time of each epoch, validation included.

# %% tags=["remove-input"]
display(history[["epoch", "train_images_per_s", "epoch_time_s", "lr"]].style.format(
    dict(train_images_per_s="{:,.0f}", epoch_time_s="{:.1f}", lr="{:.2e}")).hide(axis="index"))
display(Markdown(f"All epochs together: {history['epoch_time_s'].sum() / 60:.1f} minutes. The per-epoch history "
                 f"is saved as `history.csv` in the run folder."))
