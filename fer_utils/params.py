"""Parameter sets: one flat schema, YAML files on top of it, `key=value` overrides.

Every key has a default here, so a params file only says what differs. An
unknown key is an error that names it, suggests the closest valid key and
lists them all: a misspelt `learning_rate` must never silently train with the
default.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml

DATASETS = ("synthetic", "affectnet_mini", "affectnet_csv", "fer2013_csv", "folders", "ferplus")

# key: (default, allowed values or type, help)
SCHEMA: dict[str, tuple] = {
    # -- run
    "run_name": (None, str, "folder under runs/; defaults to the params file's stem"),
    "seed": (0, int, "seed for data generation, splits, initialisation and augmentation"),
    # -- data
    "dataset": ("synthetic", DATASETS, "dataset format"),
    "data_dir": (None, str, "dataset folder; else $FER_DATA_DIR; synthetic: generated under .cache/"),
    "synthetic_n_train": (4000, int, "synthetic train images (AffectNet class shares)"),
    "synthetic_n_val": (800, int, "synthetic validation images (balanced)"),
    "synthetic_size": (64, int, "synthetic image side in pixels"),
    "image_size": (48, int, "side the model sees, in pixels"),
    "channels": (1, (1, 3), "1 = grayscale, 3 = RGB"),
    "max_per_split": (None, int, "keep at most this many images per split (quick runs); null = all"),
    # -- model
    "model": ("baseline_cnn", ("baseline_cnn", "regularized_cnn", "resnet", "resnet18"), "model factory name"),
    "width": (32, int, "channels of the first stage (custom models)"),
    "dropout": (0.0, float, "dropout before the classifier (regularized_cnn, resnet)"),
    "dropblock": (0.0, float, "DropBlock drop probability (regularized_cnn)"),
    "pretrained": (False, bool, "resnet18: ImageNet weights if cached locally"),
    # -- optimisation
    "epochs": (10, int, "maximum epochs"),
    "batch_size": (128, int, "images per step (per process under torchrun)"),
    "optimizer": ("adamw", ("adamw", "sgd"), "optimiser"),
    "lr": (2e-3, float, "peak learning rate"),
    "weight_decay": (0.0, float, "decoupled weight decay (L2)"),
    "l1": (0.0, float, "L1 penalty on weights, added to the loss"),
    "scheduler": ("cosine", ("cosine", "onecycle", "none"), "learning-rate schedule"),
    "warmup_epochs": (1, int, "linear warm-up epochs (cosine)"),
    "label_smoothing": (0.0, float, "cross-entropy label smoothing"),
    "imbalance": ("none", ("none", "weighted_loss", "weighted_sampler"), "class-imbalance handling"),
    "early_stopping": (None, int, "stop after this many epochs without a better val macro-F1; null = off"),
    # -- augmentation
    "aug_flip": (False, bool, "random horizontal flip"),
    "aug_rotate": (0.0, float, "max random rotation, degrees (with small shift/scale)"),
    "aug_crop": (0.0, float, "random resized crop: smallest area kept (0 = off, e.g. 0.8)"),
    "aug_jitter": (0.0, float, "brightness/contrast jitter strength"),
    "aug_blur": (0.0, float, "probability of a Gaussian blur"),
    "aug_erasing": (0.0, float, "probability of random erasing"),
    # -- hardware
    "device": ("auto", ("auto", "cpu", "cuda", "mps"), "auto = CUDA, else MPS, else CPU"),
    "amp": (True, bool, "mixed precision on CUDA (bf16 where supported)"),
    "num_workers": (0, int, "DataLoader workers (large images); 0 = in-memory tensors"),
    "retrain": (False, bool, "retrain even if a valid checkpoint for these params and data exists"),
    # -- evaluation
    "checkpoint": ("best", str, "'best', 'last' or a path to a checkpoint"),
    "bootstrap": (1000, int, "bootstrap resamples for confidence intervals"),
    "tta_flip": (False, bool, "evaluation: average the logits of each face and its mirror image (test-time "
                              "augmentation); training's per-epoch validation never uses it"),
    # -- ablation chapter
    "ablation": ("baseline,regularized,augmented,weighted_loss,weighted_sampler,resnet", str,
                 "comma-separated ablation variants (fer_utils.ablation.VARIANTS); empty = none"),
    "ablation_epochs": (None, int, "epochs per ablation variant; null = `epochs`"),
}

DEFAULTS = {k: v[0] for k, v in SCHEMA.items()}


class ParamsError(ValueError):
    pass


def _check_key(key: str, where: str) -> None:
    if key not in SCHEMA:
        close = difflib.get_close_matches(key, SCHEMA, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ParamsError(
            f"unknown parameter '{key}' in {where}.{hint} Valid keys: {', '.join(SCHEMA)}"
        )


def _check_value(key: str, value):
    default, allowed, _ = SCHEMA[key]
    if value is None:
        return None
    if isinstance(allowed, tuple):
        if value not in allowed:
            raise ParamsError(f"parameter '{key}' = {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if allowed is float and not isinstance(value, bool):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            pass
    if allowed is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, allowed) or (allowed is int and isinstance(value, bool)):
        raise ParamsError(f"parameter '{key}' = {value!r} should be {allowed.__name__}")
    return value


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with the value read as YAML (so 3, 0.1, true, null work)."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ParamsError(f"override '{text}' must look like key=value")
    key = key.strip()
    _check_key(key, "the command line")
    return key, yaml.safe_load(raw)


def resolve(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults <- params file <- overrides, validated. Records the file in `params_file`."""
    params = dict(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"params file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ParamsError(f"{path} must hold a mapping of key: value")
        for key, value in loaded.items():
            _check_key(key, str(path))
            params[key] = value
        if params["run_name"] is None:
            params["run_name"] = path.stem
    for key, value in (overrides or {}).items():
        _check_key(key, "the overrides")
        params[key] = value
    params = {k: _check_value(k, v) for k, v in params.items()}
    params["run_name"] = params["run_name"] or "default"
    from .ablation import variant_names  # here, not at the top: it imports the training engine (torch)
    try:
        variant_names(params)
    except ValueError as err:
        raise ParamsError(f"parameter 'ablation': {err}") from None
    if params["data_dir"] is None and params["dataset"] != "synthetic" and os.environ.get("FER_DATA_DIR"):
        params["data_dir"] = os.environ["FER_DATA_DIR"]
    return params


def save(params: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(params, sort_keys=False))
