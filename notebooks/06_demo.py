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
# # Try it on your own photo
#
# Drop in a photo and see what the model thinks. Each face in it is found with
# the YuNet face detector (the `yuface` package, its weights built in; OpenCV's
# Haar cascade where it is not installed: nothing is downloaded either way), cut
# out as a square with a small margin, turned into exactly
# what the model was trained on (grayscale or colour, resized to its image size,
# normalised the same way) and classified. The photo never leaves your computer.
#
# This page is live in JupyterLab and as an app (`make demo` serves it with
# Voila on localhost). In the static book the upload controls are left out, and
# the sample photo below shows what an answer looks like.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}

# %% tags=["remove-cell"]
from IPython.display import Markdown, display

from fer_utils.app import demo
from fer_utils.book import notebook

params, run_dir = notebook.start(params_file, run_dir, overrides)
models, problems = demo.load_models(run_dir)

# %% [markdown]
# ## The model

# %% tags=["remove-input"]
display(Markdown(
    "The demo uses this run's checkpoint (`best.pt`) when there is one, otherwise the model bundled "
    "with the package.\n\n" + demo.models_markdown(models, problems)))

# %% [markdown]
# ## Upload a photo
#
# Choose one or more photos; each face found gets a numbered box, and below the
# photo each face shows the crop the model saw and its probability for every
# emotion. Tick *Skip face detection* for a photo that is already cropped to a
# single face. Files that are not images, damaged files and images too large to
# process safely are refused with a message.

# %% tags=["remove-cell"]
app = demo.DemoApp(models)
display(app.widget)

# %% [markdown]
# ## Live camera, or a video
#
# *Start camera* shows your camera here and sends a few frames a second to the
# model; each face found gets a box with its id and its emotion, smoothed over
# the last half second. Browsers allow the camera only on localhost or over
# HTTPS. Or upload a video file: each face is followed through it and its
# emotions are shown over time (the same path as `fer video`, see the video
# chapter).

# %% tags=["remove-cell"]
from fer_utils.app import camera

live = camera.LiveApp(next(iter(models.values()), None), demo.MAX_UPLOAD_MB)
display(live.widget)

# %% [markdown]
# ## Example: the sample photo
#
# The astronaut portrait that ships with scikit-image (NASA, public domain).

# %% tags=["remove-input"]
from fer_utils.app import predict

if models:
    for source, predictor in models.items():
        if source != next(iter(models)) and not next(iter(models.values())).warning():
            break  # a second model is shown only when the first one's answer is not meaningful
        display(Markdown(f"With **{'this run' if source == 'run' else 'the bundled model'}**'s model:"))
        demo.show_result(demo.SAMPLE_NAME, predict.predict_image(demo.sample_photo(), predictor,
                                                                 name=demo.SAMPLE_NAME))
else:
    display(Markdown("*No model is available, so there is no example answer.*"))

# %% [markdown]
# ## How to read the answer
#
# - The probabilities are the model's softmax output: they always sum to 100%,
#   even for a face unlike anything it was trained on, so a confident answer is
#   not a correct one. The evaluation chapter shows how well its confidence
#   matches its accuracy on the validation faces.
# - The model judges one expression at one instant from a small face crop; it
#   does not know what the person feels.
# - When no face is found, the whole image is classified as if it were one face:
#   that answer is only meaningful for a close-up.
# - Faces in profile, tilted or partly covered are often missed by the detector.
