"""The ablation ladder, as data: the original study's plain CNN, then the changes it wished for.

Each rung is a set of parameter overrides on top of the run's params (data, image
size, seed, width, optimiser and schedule stay the run's). The ladder is
cumulative: each rung keeps the previous one's changes, so each row's difference
from the row above is one idea. `analysis.ablation` trains and scores the rungs;
`config.params` validates the names without importing the training engine.
"""
from __future__ import annotations

_PLAIN = dict(model="baseline_cnn", dropout=0.0, dropblock=0.0, weight_decay=0.0, l1=0.0, label_smoothing=0.0,
              imbalance="none", early_stopping=None, aug_flip=False, aug_rotate=0.0, aug_crop=0.0, aug_jitter=0.0,
              aug_blur=0.0, aug_erasing=0.0)
_REGULARIZED = {**_PLAIN, "model": "regularized_cnn", "dropout": 0.3, "dropblock": 0.1, "weight_decay": 0.05}
_AUGMENTED = {**_REGULARIZED, "aug_flip": True, "aug_rotate": 10.0, "aug_crop": 0.8, "aug_jitter": 0.2,
              "aug_erasing": 0.25}

# name -> (what changes, overrides)
VARIANTS = {
    "baseline": ("the study's plain CNN: no batch norm, dropout, weight decay or augmentation", _PLAIN),
    "regularized": ("+ batch norm, dropout 0.3, DropBlock 0.1, weight decay 0.05", _REGULARIZED),
    "augmented": ("+ flip, rotation, random crop, brightness/contrast jitter, random erasing", _AUGMENTED),
    "weighted_loss": ("+ class-weighted loss (imbalance)", {**_AUGMENTED, "imbalance": "weighted_loss"}),
    "weighted_sampler": ("+ class-balanced sampling instead (imbalance)",
                         {**_AUGMENTED, "imbalance": "weighted_sampler"}),
    "resnet": ("residual blocks instead of the plain CNN (augmented, weighted loss)",
               {**_AUGMENTED, "imbalance": "weighted_loss", "model": "resnet"}),
}


def variant_names(params: dict) -> list[str]:
    """The variants params["ablation"] names (comma-separated), in ladder order; unknown names are an error."""
    names = [n.strip() for n in (params.get("ablation") or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    return [n for n in VARIANTS if n in names]


def variant_params(params: dict, name: str) -> dict:
    """The run's params with the variant's overrides and the ablation's epoch budget."""
    epochs = params.get("ablation_epochs") or params["epochs"]
    return {**params, **VARIANTS[name][1], "epochs": epochs, "run_name": f"{params['run_name']}-{name}",
            "checkpoint": "best"}
