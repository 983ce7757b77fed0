"""The ablation ladder, as data: the original study's plain CNN, then the changes it wished for.

Each rung is a set of parameter overrides on top of the run's params (data, image
size, width, optimiser and schedule stay the run's). The ladder is cumulative and
linear: each rung keeps the previous one's changes and differs from the rung above
in the keys of one group (`GROUPS`), so each row's difference from the row above is
one idea, and the chapter compares each rung with the rung above it.

Every rung trains with the class-weighted loss: train has AffectNet's class shares
and the selection split is balanced, so a rung without it would mostly measure that
prior shift, not the remedy it adds. The main recipe (params/default.yaml's model and
settings) is the rung `RECIPE`. `analysis.ablation` trains and scores the rungs;
`config.params` validates the names without importing the training engine.
"""
from __future__ import annotations

from typing import NamedTuple


class Rung(NamedTuple):
    change: str  # what this rung changes, against the rung above (the first: what it is)
    group: str  # the one GROUPS entry whose keys it changes
    overrides: dict


# The keys each idea may change. "regularization" holds the model too: regularized_cnn is the plain CNN
# with batch norm, dropout and DropBlock, the same layers otherwise.
GROUPS = {
    "start": (),
    "regularization": ("model", "dropout", "dropblock", "weight_decay", "l1", "label_smoothing"),
    "augmentation": ("aug_flip", "aug_rotate", "aug_crop", "aug_jitter", "aug_blur", "aug_erasing"),
    "imbalance": ("imbalance",),
    "architecture": ("model",),
}

_PLAIN = dict(model="baseline_cnn", dropout=0.0, dropblock=0.0, weight_decay=0.0, l1=0.0, label_smoothing=0.0,
              imbalance="weighted_loss", early_stopping=None, aug_flip=False, aug_rotate=0.0, aug_crop=0.0,
              aug_jitter=0.0, aug_blur=0.0, aug_erasing=0.0)
_REGULARIZED = {**_PLAIN, "model": "regularized_cnn", "dropout": 0.2, "weight_decay": 0.01}
# Flip only: the synthetic generator already rotates, shifts, relights, blurs and occludes its faces, and
# the rest of the old set fought the data (aspect-ratio crops change the mouth width, a class cue; random
# erasing can blank a fifth of a 48 px face). On the default data (10 epochs, seed 0, val macro-F1) flip
# alone scored 0.375, flip + 10 degree rotation 0.351 (paired 95% CI of flip's lead -0.012 to +0.058:
# noise, so the simpler one), the old set (flip, rotation, random resized crop 0.8, jitter 0.2, erasing
# 0.25) 0.296 (flip's lead +0.046 to +0.115), no augmentation 0.329.
_AUGMENTED = {**_REGULARIZED, "aug_flip": True}

VARIANTS = {
    "baseline": Rung("the study's plain CNN (no batch norm, dropout, weight decay or augmentation), with the "
                     "class-weighted loss every rung keeps", "start", _PLAIN),
    "regularized": Rung("+ batch norm, dropout 0.2, weight decay 0.01", "regularization", _REGULARIZED),
    "augmented": Rung("+ random horizontal flip = the main recipe of params/default.yaml", "augmentation",
                      _AUGMENTED),
    "resnet": Rung("residual blocks (small ResNet) instead of the plain CNN", "architecture",
                   {**_AUGMENTED, "model": "resnet"}),
    "unet": Rung("a small U-Net (encoder-decoder with skip connections) instead of the ResNet", "architecture",
                 {**_AUGMENTED, "model": "unet"}),
}
RECIPE = "augmented"


def variant_names(params: dict) -> list[str]:
    """The variants params["ablation"] names (comma-separated), in ladder order; unknown names are an error."""
    names = [n.strip() for n in (params.get("ablation") or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    return [n for n in VARIANTS if n in names]


def variant_seeds(params: dict) -> list[int]:
    """The seeds every rung trains with: the run's seed and the next `ablation_seeds` - 1."""
    return list(range(params["seed"], params["seed"] + params.get("ablation_seeds", 1)))


def variant_params(params: dict, name: str, seed: int | None = None) -> dict:
    """The run's params with the variant's overrides, the ablation's epoch budget and `seed` (default: the
    run's)."""
    epochs = params.get("ablation_epochs") or params["epochs"]
    return {**params, **VARIANTS[name].overrides, "epochs": epochs,
            "seed": params["seed"] if seed is None else seed, "run_name": f"{params['run_name']}-{name}",
            "checkpoint": "best", "refit": False}  # rungs are scored on val: never trained on it


def changes_between(above: str, name: str) -> list[str]:
    """What `name` changes against `above` (earlier in the ladder): every rung's change after `above` up to
    `name`, one item when they are neighbours."""
    order = list(VARIANTS)
    return [VARIANTS[n].change for n in order[order.index(above) + 1: order.index(name) + 1]]
