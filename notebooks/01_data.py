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
# # The data
#
# Before training anything we look at what the model will learn from: how many
# faces each emotion has in each split, how lopsided that is, what a model that
# always answers the most common emotion would score, what the images look
# like, and what the readers had to leave out.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
from IPython.display import Markdown, display

from fer_utils.analysis import figures
from fer_utils.book import notebook
from fer_utils.data import explore
from fer_utils.data.datasets import open_dataset
from fer_utils.data.images import load_split
from fer_utils.paths import display_path

params, run_dir = notebook.start(params_file, run_dir, overrides)
ds = open_dataset(params)
# Decode every split once (cached for training): corrupt files are found here.
for split in ds.splits:
    load_split(ds, split, params["image_size"], params["channels"])
counts = explore.class_counts(ds)

# %% tags=["remove-input"]
display(Markdown(
    f"Dataset **{ds.format}** from `{display_path(ds.root)}` (fingerprint `{ds.fingerprint}`): "
    f"{len(ds.frame):,} usable images in {len(ds.splits)} splits "
    f"({', '.join(f'{s} {n:,}' for s, n in counts.sum().items())}) and "
    f"{len(ds.classes)} classes: {', '.join(ds.classes)}."
))

# %% [markdown]
# ## Classes and their imbalance
#
# Each bar is a class's share of its split; hover for the count.

# %% tags=["remove-input"]
figures.class_bars(counts).show()

# %% tags=["remove-input"]
table = counts.copy()
for split in ds.splits:
    table[f"{split} share"] = (counts[split] / counts[split].sum()).map("{:.1%}".format)
display(table)
ratios = {s: explore.imbalance_ratio(counts[s]) for s in ds.splits}
display(Markdown(
    "Imbalance ratio (largest class / smallest class): "
    + "; ".join(f"**{s}** {r:,.1f}" + (f" ({counts[s].idxmax()} / {counts[s].idxmin()})" if r != float("inf")
                                      else " (a class has no images)") for s, r in ratios.items()) + "."
))

# %% [markdown]
# ## What guessing the majority class scores
#
# A classifier that ignores the face and always answers the training set's most
# frequent emotion is the floor every model must clear. On an imbalanced split
# its *accuracy* looks respectable; *balanced accuracy* (mean recall over the
# classes) and *macro-F1* expose it. A balanced split (equal images per class)
# gives it 1/K accuracy. Always read accuracy together with the split it was
# measured on.

# %% tags=["remove-input"]
baseline = explore.majority_baseline(ds, counts)
display(baseline.style.format(dict(accuracy="{:.1%}", balanced_accuracy="{:.1%}", macro_f1="{:.3f}"))
        .hide(axis="index"))
display(Markdown(" ".join(
    f"On **{r.split}**, always answering *{r.guess}* scores {r.accuracy:.1%} accuracy but only "
    f"{r.balanced_accuracy:.1%} balanced accuracy." for r in baseline.itertuples())))

# %% [markdown]
# ## Sample faces
#
# A few random faces of each class from the first split, as the reader decodes them.

# %% tags=["remove-input"]
faces = explore.sample_faces(ds, ds.splits[0], per_class=8, size=64, seed=params["seed"])
figures.face_grid(faces, 64).show()

# %% [markdown]
# ## Image sizes and modes
#
# Read from the image headers (of a random sample of up to 2,000 images). The
# model sees every image resized to the `image_size` parameter.

# %% tags=["remove-input"]
stats = explore.image_stats(ds, seed=params["seed"])
display(stats.style.hide(axis="index"))
display(Markdown(f"The model sees **{params['image_size']}x{params['image_size']}** "
                 f"{'grayscale' if params['channels'] == 1 else 'RGB'} images."))

# %% [markdown]
# ## Valence and arousal
#
# Where the format annotates them (AffectNet, and our synthetic data, which
# copies its layout), each face also has a valence (unpleasant to pleasant) and
# an arousal (calm to excited) value in [-1, 1].

# %% tags=["remove-input"]
if "valence" in ds.frame and ds.frame["valence"].notna().any():
    figures.valence_arousal(ds.frame, ds.classes, seed=params["seed"]).show()
else:
    display(Markdown(f"*This format ({ds.format}) has no valence or arousal annotations.*"))

# %% [markdown]
# ## What was left out
#
# Readers never drop an image silently: labels that are not emotions (AffectNet's
# None, Uncertain, No-Face), labels outside the known set, unknown class folders,
# tied FER+ votes, files that are not images and images that fail to decode are
# counted here by reason.

# %% tags=["remove-input"]
skips = ds.skip_counts()
if skips.empty:
    display(Markdown("Nothing was skipped: every listed image was read and decoded."))
else:
    display(Markdown(f"**{int(skips['count'].sum()):,} items skipped:**"))
    display(skips.style.hide(axis="index"))
for note in ds.notes:
    display(Markdown(f"- Note: {note}."))
