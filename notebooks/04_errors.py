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
# This chapter reads the predictions the evaluation chapter saved for the
# report split (`predictions_test.csv`: the split that made no choice), looks
# at the faces behind the mistakes, checks whether the model's confidence can
# be taken at face value (the temperature fitted on the selection split,
# judged on the report split), and shows where in the face the model looked.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
import json

import numpy as np
from IPython.display import Markdown, display

from fer_utils.analysis import calibration, evaluate, figures, saliency
from fer_utils.book import notebook
from fer_utils.data.datasets import landmarks, open_dataset
from fer_utils.data.images import load_split
from fer_utils.engine.runtime import select_device

params, run_dir = notebook.start(params_file, run_dir, overrides)
ds = open_dataset(params)
split = "test" if "test" in ds.splits else "val"
named = f"{split} ({evaluate.ROLE[split]})"
frame = evaluate.load_predictions(run_dir, split)
tta = json.loads((run_dir / "metrics.json").read_text())["checkpoint"]["tta_flip"]["used"]
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
    f"The **{named}**: {len(frame):,} images, {len(wrong):,} mistakes ({len(wrong) / len(frame):.1%}). "
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
display(Markdown(f"Most confused pairs, {named}:"))
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
            f"{p.true} answered as {p.predicted}, {named} ({p.count:,} images; up to 6 most confident)")

# %% [markdown]
# ## The most confident mistakes
#
# Wrong answers the model gave with the highest probability. Some are the
# model's blind spots; some are faces whose label is itself debatable (in
# AffectNet, two annotators gave the same label to only about 60% of the images
# they both labelled).

# %% tags=["remove-input"]
confident_wrong = wrong.nlargest(min(GALLERY, len(wrong)), "confidence")
gallery(confident_wrong, f"The most confident mistakes, {named}")
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
gallery(right.nsmallest(min(GALLERY, len(right)), "confidence"), f"The least confident correct answers, {named}")

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
# fitted on the selection split (val) and ECE and NLL are measured on the report
# split (test), which played no part in the fit.

# %% tags=["remove-input"]
cal = calibration.run(ds, run_dir, params["seed"])
rep_cal, sel = cal["report"], cal["selection"]
if rep_cal is None:
    display(Markdown(f"*This dataset has no report split: T = {cal['temperature']:.2f} was fitted on val; "
                     f"fitted on one half of val and measured on the other, ECE goes from {sel['ece_before']:.3f} "
                     f"to {sel['ece_after']:.3f}.*"))
else:
    p_rep, y_rep = rep_cal["probs"], rep_cal["y"]
    figures.reliability_diagram(
        {f"model (ECE {rep_cal['ece_before']:.3f})": calibration.reliability(p_rep, y_rep),
         f"after temperature scaling, T fitted on val (ECE {rep_cal['ece_after']:.3f})":
             calibration.reliability(rep_cal["calibrated"], y_rep)},
        title=f"Reliability diagram, {cal['report_split']} ({evaluate.ROLE[cal['report_split']]})").show()
    mean_conf, accuracy = float(p_rep.max(1).mean()), float((p_rep.argmax(1) == y_rep).mean())
    conf_text, acc_text, _ = evaluate.percent_pair(mean_conf, accuracy)
    kind = ("overconfident" if mean_conf > accuracy + 0.01 else "underconfident" if mean_conf < accuracy - 0.01
            else "about as confident as it is accurate")
    display(Markdown(
        f"On the **{cal['report_split']}** split ({evaluate.ROLE[cal['report_split']]}, {rep_cal['n']:,} images), the "
        f"model's mean confidence is {conf_text} against an accuracy of {acc_text}: it is **{kind}**, with ECE "
        f"**{rep_cal['ece_before']:.3f}** (NLL {rep_cal['nll_before']:.3f}). T = {cal['temperature']:.2f}, fitted on "
        f"all {sel['n']:,} images of the **val** split (selection split), changes ECE on {cal['report_split']} to "
        f"**{rep_cal['ece_after']:.3f}** and NLL to {rep_cal['nll_after']:.3f}. T > 1 means the raw probabilities "
        f"were too sharp, T < 1 too soft. Within val, fitted on one half and measured on the other (both ways "
        f"round, T = " + ", ".join(f"{t:.2f}" for t in sel["fold_temperatures"])
        + f"), ECE goes from {sel['ece_before']:.3f} to {sel['ece_after']:.3f}."
        + (" T reached the edge of the search range (0.05-20): the probabilities carry little information about "
           "which answers are right." if not 0.06 < cal["temperature"] < 19.9 else "")))

# %% [markdown]
# ## Accuracy by confidence
#
# The same question from the user's side: when the model says it is this sure,
# how often is it right? Bars: accuracy of the answers in each confidence
# bucket; line: the bucket's mean confidence. Hover for the number of images.

# %% tags=["remove-input"]
buckets = calibration.accuracy_by_confidence(probs, y)
figures.confidence_buckets(buckets, title=f"Accuracy by confidence, {named}").show()
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
    figures.errors_valence_arousal(merged, classes, title=f"Mistakes in valence-arousal space, {named}").show()
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
# Grad-CAM weights the feature maps that everything the answer depends on passes
# through (a ResNet's last block, after its skip connection; a plain CNN's last
# convolution) by how much they raise the
# score of the answer the model gave, and projects that onto the face: bright
# regions are the evidence for its answer. When flip test-time augmentation is
# the protocol, the map explains the averaged answer of the face and its mirror
# image. (An image whose Grad-CAM is empty falls back to occlusion: the drop in
# the answer's probability when a gray patch covers each part of the face.)

# %% tags=["remove-input"]
device = select_device(params["device"])
model, ckpt = evaluate.load_for_evaluation(params, run_dir, ds, device)
cfg = ckpt["model_config"]
x, _, locations = load_split(ds, split, cfg["image_size"], cfg["in_channels"])
index = {loc: i for i, loc in enumerate(locations)}
shown = wrong.nlargest(min(6, len(wrong)), "confidence")
if len(shown):
    xs = x[[index[loc] for loc in shown["location"]]]
    maps, methods = saliency.saliency(model, xs, [classes.index(c) for c in shown["predicted"]], device, flip=tta)
    faces = evaluate.load_faces(ds, shown["location"], size=cfg["image_size"])
    figures.saliency_gallery(faces, maps, [caption(r) for r in shown.itertuples()], methods,
                             title=f"Evidence for the wrong answer: the most confident mistakes, {named}").show()
    display(Markdown(
        f"Heat maps from `{type(saliency.feature_layer(model)).__name__}`, the feature layer of **{cfg['name']}** "
        f"Grad-CAM reads, for the class the model answered"
        + (" (flip TTA: the face and its mirror image)" if tta else "") + ". "
        + (f"{methods.count('occlusion')} of {len(methods)} maps fell back to occlusion." if "occlusion" in methods
           else "All maps are Grad-CAM.")))
else:
    display(Markdown("*No mistakes to explain.*"))

# %% [markdown]
# Six pictures prove little. On the synthetic faces, whose 68 landmarks are
# known, the table measures for every image of the split how much of its map
# falls on the mouth and on the eyes, averaged per true class, beside the share
# of the image those regions cover (what a map spread evenly would give).

# %% tags=["remove-input"]
if ds.format == "synthetic":
    order = frame["location"].to_numpy()
    maps, methods = saliency.saliency(model, x[[index[loc] for loc in order]],
                                      [classes.index(c) for c in frame["predicted"]], device, flip=tta)
    regions = saliency.region_summary(saliency.region_shares(maps, landmarks(ds, order),
                                                             source_size=params["synthetic_size"]),
                                      frame["true"], classes)
    display(Markdown(f"Share of each Grad-CAM map on the mouth and the eyes, per true class, {named} "
                     f"({int(regions['images'].sum()):,} images with a non-empty map):"))
    display(regions.style.format({c: "{:.1%}" for c in regions.columns if c != "images"}))
    mouth_area, eyes_area = regions["mouth_area"].mean(), regions["eyes_area"].mean()
    mouth_top, eyes_top = regions["mouth"].idxmax(), regions["eyes"].idxmax()
    above = lambda col: int((regions[col] > regions[f"{col}_area"]).sum())
    display(Markdown(
        f"The mouth covers {mouth_area:.1%} of the image on average and the eyes {eyes_area:.1%}. The maps put more "
        f"than the mouth's area on the mouth for {above('mouth')} of {len(regions)} classes, and more than the eyes' "
        f"area on the eyes for {above('eyes')} of {len(regions)}. The mouth's share is largest for *{mouth_top}* "
        f"({regions.loc[mouth_top, 'mouth']:.1%}), the eyes' for *{eyes_top}* ({regions.loc[eyes_top, 'eyes']:.1%})."))
else:
    display(Markdown(f"*The per-class share of the maps on the mouth and the eyes needs landmarks in the image's "
                     f"own coordinates; it is measured on the synthetic data only, not on {ds.format}.*"))
