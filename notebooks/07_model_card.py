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
# # Model cards: the bundled models
#
# The package ships small trained models, used by the upload demo and by
# `fer predict` when no checkpoint of your own is given: the default is the
# first card's, and `fer predict --model NAME` picks another. Each card below
# describes one model from what its checkpoint file records: the model, the
# parameters and data it was trained with, its scores with the protocol they
# were measured under, and its known limits. Nothing here is typed in by hand,
# so each card always matches its file.
#
# In the scores, the headline is the **report split** (test): scored once, it
# chose nothing. The **selection split** (val) chose the kept epoch and the
# protocol, so its numbers are optimistic.

# %% tags=["parameters", "remove-cell"]
params_file = None  # None: params/default.yaml
run_dir = None  # None: runs/<run_name>
overrides = {}
checkpoint = None  # None: a card for each bundled model present (fer_utils.app.predict.BUNDLED_MODELS)

# %% tags=["remove-cell"]
from IPython.display import Markdown, display

from fer_utils.book import card, notebook

params, run_dir = notebook.start(params_file, run_dir, overrides)
models = card.predictors(checkpoint)

# %% tags=["remove-input"]
if not models:
    display(Markdown(card.missing(checkpoint)))
for model in models:
    display(Markdown(card.heading(model) + "\n\n" + card.facts_markdown(model)))
    display(Markdown("### Scores and how they were measured\n\n" + card.scores_markdown(model)))
    if (fig := card.curves(model)) is not None:
        fig.show()
    display(Markdown("### Known limits\n\n" + "\n".join(f"- {text}" for text in card.limits(model))))
