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

from fer_utils.analysis import evaluate, figures
from fer_utils.book import notebook
from fer_utils.data import explore, splits
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
# ## What each split is for
#
# A score is honest only on images that made no choice. Every split has one
# role: **train** fits the weights; **val**, the *selection split*, chooses (the
# best epoch, early stopping, test-time augmentation, the calibration
# temperature); **test**, the *report split*, is scored once per run and
# chooses nothing. Images of a later role whose pixels equal an image of an
# earlier one are set aside in `<split>_dup`, so no face is scored that the
# model was trained or selected on.

# %% tags=["remove-input"]
display(Markdown("\n".join(f"- **{split}**: {line}" for split, line in ds.split_roles.items())))
dup_counts = splits.duplicate_counts(ds)
if dup_counts.empty:
    display(Markdown("No image of val or test has the same pixels as an earlier split's image"
                     + ("" if params["dedup"] else " that was checked: deduplication is off (`dedup: false`)") + "."))
else:
    display(Markdown("Duplicates moved aside, per split: images moved, distinct duplicated images, and those "
                     "whose copies carry different labels:"))
    display(dup_counts.style.hide(axis="index"))
    conflicting = ds.duplicates[ds.duplicates["conflicting"]]
    display(Markdown(
        f"{len(ds.duplicates):,} images in all; {len(conflicting):,} of them disagree with an earlier copy's "
        f"label" + (": the same face carries two emotions, a measure of the labels' noise." if len(conflicting)
                    else ".")))
    if len(conflicting):
        display(conflicting[["split", "location", "label", "duplicate_of", "label_of_duplicate"]]
                .head(20).style.hide(axis="index"))
        if len(conflicting) > 20:
            display(Markdown(f"(the first 20 of {len(conflicting):,}; all are in `ds.duplicates`)"))

# %% [markdown]
# ## Classes and their imbalance
#
# Each bar is a class's share of its split; hover for the count. The
# set-aside splits (`_dup`, and `heldout` where a dataset has a second test
# split) are counted too.

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
lines = []
for r in baseline.itertuples():
    acc, bal, _ = evaluate.percent_pair(r.accuracy, r.balanced_accuracy)
    lines.append(f"On **{r.split}**, always answering *{r.guess}* scores {acc} accuracy "
                 + ("and as much balanced accuracy." if acc == bal else f"but only {bal} balanced accuracy."
                    if r.accuracy > r.balanced_accuracy else f"and {bal} balanced accuracy."))
display(Markdown(" ".join(lines)))

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
    va = ds.frame.dropna(subset=["valence", "arousal"])
    explained = {v: 1 - va.groupby("emotion")[v].var(ddof=0).mul(va["emotion"].value_counts(normalize=True))
                 .sum() / va[v].var(ddof=0) for v in ("valence", "arousal")}
    display(Markdown(
        f"The class explains {explained['valence']:.0%} of the variance of valence and {explained['arousal']:.0%} "
        f"of arousal (all splits, {len(va):,} faces): the rest varies within each class."))
else:
    display(Markdown(f"*This format ({ds.format}) has no valence or arousal annotations.*"))

# %% tags=["remove-input"]
if "clean_emotion" in ds.frame:
    noise = (ds.frame["emotion"] != ds.frame["clean_emotion"]).groupby(ds.frame["split"], sort=False).mean()
    agree = (1 - noise) ** 2 + noise ** 2 / (len(ds.classes) - 1)  # two noisy labels, noise spread uniformly
    display(Markdown(
        "**What these synthetic data can and cannot support.** The generator knows each face's clean label and "
        "replaced a share of them by another class (`synthetic_label_noise` = "
        f"{params['synthetic_label_noise']:g}); measured: " + ", ".join(
            f"{noise[s]:.1%} of the {s} labels" for s in noise.index) + f" differ from the clean ones, so two noisy "
        f"labels of one face would agree about {agree.mean():.0%} of the time, and accuracy against the noisy "
        f"labels is capped near {1 - noise.mean():.0%} for a model that finds every clean class. The data can "
        "support that the pipeline is correct (a model learns the drawn expressions), comparisons of recipes on "
        "the same controlled task, and what label noise does to scores and calibration. They cannot support any "
        "number for real faces, a comparison with published results, or a claim about people of any group: the "
        "faces are drawn, not photographed."
        + (f" Valence and arousal are not a function of the class (it explains {explained['valence']:.0%} and "
           f"{explained['arousal']:.0%} of their variance), so they carry information of their own."
           if "valence" in ds.frame and ds.frame["valence"].notna().any() else "")))

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
if ds.format == "ferplus":
    reasons = ds.skipped["reason"].str.replace(r":.*", "", regex=True).value_counts()
    display(Markdown(
        f"The FER+ **{params['ferplus_rule']}** rule (`ferplus_rule`) kept {len(ds.frame):,} faces and dropped "
        f"{len(ds.skipped):,}: " + ", ".join(f"{n:,} {reason}" for reason, n in reasons.items()) + "."))
for note in ds.notes:
    display(Markdown(f"- Note: {note}."))
