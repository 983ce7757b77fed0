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
# # Errors
#
# Which emotions does the model mix up, on which faces, and how sure was it?
# This chapter reads the validation predictions the evaluation chapter saved
# (`predictions_val.csv`), looks at the faces behind the mistakes, checks
# whether the model's confidence can be taken at face value, and shows where in
# the face the model looked.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
import numpy as np
from IPython.display import Markdown, display

from fer_utils.analysis import calibration, evaluate, figures, saliency
from fer_utils.book import notebook
from fer_utils.data.datasets import open_dataset
from fer_utils.data.images import load_split
from fer_utils.engine.runtime import select_device

params, run_dir = notebook.start(params_file, run_dir, overrides)
ds = open_dataset(params)
split = "val"
frame = evaluate.load_predictions(run_dir, split)
classes = list(ds.classes)
probs, y = calibration.labelled_probs(frame, classes)
wrong = frame[frame["true"] != frame["predicted"]]
right = frame[frame["true"] == frame["predicted"]]
cm = evaluate.confusion(frame["true"], frame["predicted"], classes)
pairs = evaluate.confused_pairs(cm)
GALLERY = 12


def caption(r):
    return f"true: {r.true}<br>said: {r.predicted} {r.confidence:.0%}"


def gallery(rows, title):
    if len(rows) == 0:
        display(Markdown(f"*{title}: no such images in this split.*"))
        return
    faces = evaluate.load_faces(ds, rows["location"], size=96)
    figures.face_gallery(faces, [caption(r) for r in rows.itertuples()], title).show()


# %% tags=["remove-input"]
display(Markdown(
    f"The **{split}** split: {len(frame):,} images, {len(wrong):,} mistakes ({len(wrong) / len(frame):.1%}). "
    f"Captions under each face below read *true* emotion, what the model *said*, and the model's "
    f"probability for what it said."
))

# %% [markdown]
# ## The most confused pairs
#
# Every off-diagonal cell of the confusion matrix, largest first: how many faces
# of the true emotion were answered as the other one, and what share of the true
# emotion's faces that is. The original study noticed *contempt* being mistaken
# for *happy*; its rank here is stated below the table.

# %% tags=["remove-input"]
display(pairs.head(10).style.format(dict(share_of_true="{:.1%}")).hide(axis="index"))
text = []
if len(pairs):
    top = pairs.iloc[0]
    text.append(f"The most frequent confusion is **{top['true']} → {top['predicted']}**: {top['count']:,} "
                f"images, {top['share_of_true']:.0%} of all {top['true']} faces.")
if {"contempt", "happy"} <= set(classes):
    hit = pairs[(pairs["true"] == "contempt") & (pairs["predicted"] == "happy")]
    n_contempt = int(cm.loc["contempt"].sum())
    if n_contempt == 0:
        text.append("This split has no contempt faces, so contempt → happy cannot be measured.")
    elif len(hit):
        text.append(f"Contempt → happy, the confusion the study noticed, ranks **#{hit.index[0] + 1}** of "
                    f"{len(pairs)}: {hit['count'].iloc[0]:,} of {n_contempt:,} contempt faces "
                    f"({hit['share_of_true'].iloc[0]:.0%}).")
    else:
        text.append(f"No contempt face (of {n_contempt:,}) was answered as happy.")
elif "contempt" not in classes:
    text.append(f"This dataset ({ds.format}) has no contempt class, so the study's contempt → happy confusion "
                f"cannot occur.")
display(Markdown(" ".join(text) or "The model made no mistakes on this split."))

# %% [markdown]
# The faces behind the three most frequent confusions, most confident first:

# %% tags=["remove-input"]
for p in pairs.head(3).itertuples():
    rows = wrong[(wrong["true"] == p.true) & (wrong["predicted"] == p.predicted)]
    gallery(rows.nlargest(min(6, len(rows)), "confidence"),
            f"{p.true} answered as {p.predicted} ({p.count:,} images; up to 6 most confident)")

# %% [markdown]
# ## The most confident mistakes
#
# Wrong answers the model gave with the highest probability. Some are the
# model's blind spots; some are faces whose label is itself debatable (in
# AffectNet, two annotators gave the same label to only about 60% of the images
# they both labelled).

# %% tags=["remove-input"]
confident_wrong = wrong.nlargest(min(GALLERY, len(wrong)), "confidence")
gallery(confident_wrong, "The most confident mistakes")
if len(confident_wrong):
    display(Markdown(
        f"The model was at least {confident_wrong['confidence'].min():.0%} sure of each of these "
        f"{len(confident_wrong)} wrong answers; {(wrong['confidence'] > 0.9).sum():,} of its {len(wrong):,} "
        f"mistakes were given with more than 90% probability."))

# %% [markdown]
# ## The least confident correct answers
#
# Right answers given with the lowest probability: faces the model found
# ambiguous and got right by a small margin.

# %% tags=["remove-input"]
gallery(right.nsmallest(min(GALLERY, len(right)), "confidence"), "The least confident correct answers")

# %% [markdown]
# ## Can the confidence be trusted?
#
# A model is *calibrated* when, of the answers it gives with 80% probability,
# 80% are right. The reliability diagram bins the answers by confidence and
# compares each bin's accuracy with the diagonal; the **expected calibration
# error (ECE)** is the image-weighted mean gap over 15 equal-width bins (0 is
# perfect). Networks trained with cross-entropy are typically overconfident.
#
# **Temperature scaling** divides the model's logits by one number *T*, fitted
# to minimise the negative log-likelihood; it never changes which class is
# predicted, only how sure the model says it is. Fitting *T* and measuring ECE
# on the same images is optimistic (the fit has seen the answers), so *T* is
# fitted on one half of the validation split and ECE measured on the other
# half, and the other way round (cross-fitting, stratified by class).

# %% tags=["remove-input"]
cal = calibration.run(ds, run_dir, params["seed"], split)
before = calibration.reliability(probs, y)
after = calibration.reliability(cal["calibrated"], y)
figures.reliability_diagram({f"model (ECE {cal['ece_before']:.3f})": before,
                             f"after temperature scaling, held-out halves (ECE {cal['ece_after']:.3f})": after},
                            title=f"Reliability diagram, {split} split").show()
mean_conf = float(probs.max(1).mean())
accuracy = float((probs.argmax(1) == y).mean())
kind = ("overconfident" if mean_conf > accuracy + 0.01 else "underconfident" if mean_conf < accuracy - 0.01
        else "about as confident as it is accurate")
display(Markdown(
    f"Before scaling, the model's mean confidence is {mean_conf:.1%} against an accuracy of {accuracy:.1%}: "
    f"it is **{kind}**, with ECE **{cal['ece_before']:.3f}** (NLL {cal['nll_before']:.3f}). The temperatures "
    f"fitted on each half are " + ", ".join(f"{t:.2f}" for t in cal["fold_temperatures"])
    + f"; measured on the half not used for fitting, ECE becomes **{cal['ece_after']:.3f}** "
    f"(NLL {cal['nll_after']:.3f}). Fitted and measured on all {cal['n']:,} validation images, T = "
    f"{cal['temperature']:.2f} would give ECE {cal['ece_after_in_sample']:.3f}: the optimistic, in-sample "
    f"number, shown only for comparison. T > 1 means the raw probabilities were too sharp, T < 1 too soft."
    + (" T reached the edge of the search range (0.05-20): the probabilities carry little information about "
       "which answers are right." if not 0.06 < cal["temperature"] < 19.9 else "")
))
test_cal = cal["test"]
if test_cal is not None:
    display(Markdown(
        f"On the **test** split, which played no part in the fit, T = {cal['temperature']:.2f} (fitted on all "
        f"validation images) changes ECE from {test_cal['ece_before']:.3f} to {test_cal['ece_after']:.3f} and "
        f"NLL from {test_cal['nll_before']:.3f} to {test_cal['nll_after']:.3f}."))

# %% [markdown]
# ## Accuracy by confidence
#
# The same question from the user's side: when the model says it is this sure,
# how often is it right? Bars: accuracy of the answers in each confidence
# bucket; line: the bucket's mean confidence. Hover for the number of images.

# %% tags=["remove-input"]
buckets = calibration.accuracy_by_confidence(probs, y)
figures.confidence_buckets(buckets, title=f"Accuracy by confidence, {split} split").show()
top_bucket, low_bucket = buckets.iloc[-1], buckets.iloc[0]
if len(buckets) == 1:
    text = (f"All answers fall in one bucket ({top_bucket['bucket']}), where the model is right "
            f"{top_bucket['accuracy']:.0%} of the time: its confidence does not separate right from wrong answers.")
else:
    text = (f"In the most confident bucket ({top_bucket['bucket']}, {top_bucket['share']:.0%} of the images) the "
            f"model is right {top_bucket['accuracy']:.0%} of the time; in the least confident "
            f"({low_bucket['bucket']}, {low_bucket['share']:.0%} of the images), {low_bucket['accuracy']:.0%}.")
missing = len(calibration.DEFAULT_BUCKETS) - 1 - len(buckets)
display(Markdown(text + (f" {missing} bucket(s) with no images are left out." if missing else "")))

# %% [markdown]
# ## Mistakes in valence-arousal space
#
# Where the format annotates valence (unpleasant to pleasant) and arousal (calm
# to excited), each face is a point: correct answers in gray, mistakes coloured
# by their true emotion. Hover a cross for the answer the model gave.

# %% tags=["remove-input"]
va = ds.split(split)[["location", "valence", "arousal"]] if "valence" in ds.frame else None
if va is not None and va["valence"].notna().any():
    merged = frame.merge(va, on="location", how="left")
    figures.errors_valence_arousal(merged, classes, title=f"Mistakes in valence-arousal space, {split} split").show()
    radius = np.hypot(merged["valence"], merged["arousal"])
    is_wrong = merged["true"] != merged["predicted"]
    if is_wrong.any() and (~is_wrong).any():
        display(Markdown(
            f"Mistakes lie at a mean distance of {radius[is_wrong].mean():.2f} from the neutral centre (0, 0), "
            f"correct answers at {radius[~is_wrong].mean():.2f}: "
            + ("faces with weaker expressed affect are the harder ones." if radius[is_wrong].mean()
               < radius[~is_wrong].mean() else "the mistakes are not concentrated on weak expressions.")))
else:
    display(Markdown(f"*This format ({ds.format}) has no valence or arousal annotations.*"))

# %% [markdown]
# ## Where the model looked
#
# Grad-CAM weights the feature maps of the network's last convolution by how
# much they raise the score of the answer the model gave, and projects that
# onto the face: bright regions are the evidence for its answer. For the most
# confident mistakes, it shows what made the model so sure of the wrong emotion.
# (An image whose Grad-CAM is empty falls back to occlusion: the drop in the
# answer's probability when a gray patch covers each part of the face.)

# %% tags=["remove-input"]
shown = wrong.nlargest(min(6, len(wrong)), "confidence")
if len(shown):
    device = select_device(params["device"])
    model, ckpt = evaluate.load_for_evaluation(params, run_dir, ds, device)
    cfg = ckpt["model_config"]
    x, _, locations = load_split(ds, split, cfg["image_size"], cfg["in_channels"])
    index = {loc: i for i, loc in enumerate(locations)}
    xs = x[[index[loc] for loc in shown["location"]]]
    targets = [classes.index(c) for c in shown["predicted"]]
    maps, methods = saliency.saliency(model, xs, targets, device)
    faces = evaluate.load_faces(ds, shown["location"], size=cfg["image_size"])
    figures.saliency_gallery(faces, maps, [caption(r) for r in shown.itertuples()], methods,
                             title="Evidence for the wrong answer: the most confident mistakes").show()
    display(Markdown(
        f"Heat maps from the last convolution of **{cfg['name']}**, for the class the model answered. "
        + (f"{methods.count('occlusion')} of {len(methods)} maps fell back to occlusion." if "occlusion" in methods
           else "All maps are Grad-CAM.")))
else:
    display(Markdown("*No mistakes to explain.*"))
