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
# # Emotions over time: video
#
# A photo is one instant; a video is a face whose expression changes. This
# chapter runs the video path (`fer video`: decode, find faces, follow each one
# with an id, classify it exactly as the photo demo does, smooth over time,
# draw, encode) on a clip this project makes itself from its validation faces,
# so the true expression of every frame is known, and measures three things: how
# often the model's label is right frame by frame, how often it flickers, and how
# much later the smoothed label follows a real change of expression.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
import base64

import pandas as pd
from IPython.display import HTML, Markdown, display

from fer_utils.analysis import timeline
from fer_utils.app import demo, video
from fer_utils.book import notebook
from fer_utils.data.datasets import open_dataset
from fer_utils.paths import atomic_write, display_path

params, run_dir = notebook.start(params_file, run_dir, overrides)
ds = open_dataset(params)
models, problems = demo.load_models(run_dir)
# The clip is made of this dataset's faces, so this run's model is the one to score (even a synthetic-data model,
# which the photo demo does not pick first); without a run checkpoint, the bundled model.
predictor = models.get("run") or next(iter(models.values()), None)
out_dir = run_dir / "video"
out_dir.mkdir(exist_ok=True)
crossfade = ds.format == "synthetic"

# %% [markdown]
# ## The clip
#
# One validation face of each class in turn, enlarged, drifting by a few pixels
# and changing size slightly as a hand-held close-up would. With the built-in
# synthetic dataset each face cross-fades into the next, so the expression
# changes gradually and the true label switches halfway through each fade;
# with a real dataset, where two faces are two different people, the clip cuts
# from one to the next.

# %% tags=["remove-input"]
faces = video.dataset_faces(ds, seed=params["seed"])
clip_path = out_dir / "expression_clip.mp4"
truth = video.expression_clip(faces, clip_path, crossfade=crossfade, seed=params["seed"])
atomic_write(out_dir / "truth.csv", lambda tmp: truth.to_csv(tmp, index=False))
segments = truth.groupby((truth["label"] != truth["label"].shift()).cumsum()).agg(
    label=("label", "first"), start_s=("time_s", "min"), end_s=("time_s", "max"))
display(Markdown(
    f"The clip: {len(faces)} faces ({', '.join(label for label, _ in faces)}) from the `{ds.format}` "
    f"validation split, {len(truth)} frames, {truth['time_s'].iloc[-1]:.1f} s, "
    f"{'cross-faded' if crossfade else 'cut'} from one to the next; `{display_path(clip_path)}`."))

# %% [markdown]
# ## The model's timeline
#
# The annotated clip: each face's box, its id, the smoothed label and a bar of
# the probabilities, coloured by class as in the legend at the top left.

# %% tags=["remove-input"]
if predictor is None:
    display(Markdown(demo.models_markdown(models, problems)))
else:
    display(Markdown(predictor.describe(for_page=True)))
    annotated, csv_path = out_dir / "annotated.mp4", out_dir / "timeline.csv"
    summary = video.process_video(clip_path, predictor, annotated, csv_path, progress=False)
    rows = video.read_timeline(csv_path)
    clip_bytes = annotated.read_bytes()
    display(HTML(f'<video controls loop muted playsinline width="480" '
                 f'src="data:video/mp4;base64,{base64.b64encode(clip_bytes).decode()}"></video>'))
    display(Markdown(
        f"{summary.frames} frames in {summary.seconds:.1f} s: **{summary.fps:.1f} frames/s** for the whole "
        f"path on this machine ({summary.codec} in, H.264 out); {len(summary.face_ids)} face id(s); "
        f"the smoothing time constant is {video.SMOOTH_S} s. " + " ".join(summary.messages)))

# %% [markdown]
# ## Emotion over time
#
# The probability of each emotion (solid: smoothed; dotted: the model's raw
# answer frame by frame), and below it the true label and the smoothed label as
# bands: where the two bands have the same colour, the timeline is right.

# %% tags=["remove-input"]
if predictor is not None and not rows.empty:
    main_id = int(rows["face_id"].value_counts().idxmax())
    timeline.timeline_figure(rows, predictor.classes, main_id, truth=truth).show()
    shares = timeline.time_shares(rows, predictor.classes)
    true_share = truth["label"].value_counts(normalize=True).reindex(predictor.classes, fill_value=0.0)
    table = pd.concat([shares.drop(columns="seconds").rename(index=lambda i: f"face #{i}"),
                       true_share.to_frame("truth").T])
    display(Markdown("Share of time in each emotion (smoothed label), against the truth:"))
    display(table.style.format("{:.0%}"))
elif predictor is not None:
    display(Markdown("*No face was found in any frame, so there is no timeline to show.*"))

# %% [markdown]
# ## Scored against the truth
#
# - **Accuracy**: the share of all frames whose label equals the true one (a
#   frame where no face was found counts as wrong).
# - **Flicker**: label changes per second. The clip itself changes expression
#   only at the segment borders; every change beyond that is noise a viewer sees
#   as flicker.
# - **Delay**: after each true change, the time until the label first shows the
#   new expression (the median over the changes both the raw and the smoothed
#   labels followed). Smoothing trades flicker for this delay.

# %% tags=["remove-input"]
if predictor is not None:
    score = timeline.score_against_truth(rows, truth)
    table = pd.DataFrame({
        "raw (per frame)": [score["accuracy"], score["flicker_raw"], score["delay_raw_s"], score["followed_raw"]],
        f"smoothed ({video.SMOOTH_S} s EMA)": [score["smoothed_accuracy"], score["flicker_smoothed"],
                                               score["delay_smoothed_s"], score["followed_smoothed"]],
        "truth": [1.0, score["flicker_true"], 0.0, score["changes"]],
    }, index=["accuracy", "label changes per second", "median delay (s)", "changes followed"])
    display(table.style.format("{:.2f}").format("{:.0%}", subset=pd.IndexSlice["accuracy", :])
            .format("{:.0f}", subset=pd.IndexSlice["changes followed", :]))
    unknown = sorted(set(truth["label"]) - set(predictor.classes))
    delay = ("smoothing adds no measurable delay" if score["delay_added_s"] == 0 else
             f"smoothing delays the label by {score['delay_added_s']:+.2f} s (median)")
    if score["delay_added_s"] != score["delay_added_s"]:  # NaN: no change was followed by both
        delay = "no true change was followed by both labels, so the delay cannot be measured"
    display(Markdown(
        f"A face was found in {score['found']:.0%} of the frames. Frame by frame the model is right "
        f"{score['accuracy']:.0%} of the time, {score['smoothed_accuracy']:.0%} after smoothing. The raw "
        f"label changes {score['flicker_raw']:.2f} times a second and the smoothed one "
        f"{score['flicker_smoothed']:.2f} times, where the clip's expression changes "
        f"{score['flicker_true']:.2f} times a second; {delay}."
        + (f" **Caution:** the model does not know the classes {', '.join(unknown)}, which the clip shows; "
           "those frames cannot be right." if unknown else "")
        + (f" {predictor.warning()}" if predictor.warning() and ds.format != "synthetic" else "")))

# %% [markdown]
# ## Run it on your own video
#
# ```
# fer video my_clip.mp4 --out annotated.mp4 --csv timeline.csv
# ```
#
# writes the timeline (one row per analysed frame and face: time, face id, box,
# every class's raw and smoothed probability, both labels) and the annotated
# video (H.264 in `.mp4`, VP9 in `.webm`; both play in browsers). `--every N`
# analyses every N-th frame only (faster; the boxes stay in between),
# `--smooth S` sets the smoothing time constant in seconds (`0`: off). A face
# that leaves the picture for more than half a second gets a new id when it
# comes back: nothing here recognises who a person is.
