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
from typing import NamedTuple

import yaml

from ..paths import write_text
from . import ladder, registry


class Param(NamedTuple):
    """One key of the schema: its default, what it accepts, what it is for, and whether it changes the trained
    weights (a checkpoint trained under other values of a non-training key is still valid)."""
    default: object
    kind: object  # a type, or a tuple of allowed values
    help: str
    trains: bool = True
    low: float | None = None  # inclusive bounds; None = unbounded
    high: float | None = None


# The param schema; names of models and formats come from the registry (the single list of valid names).
SCHEMA: dict[str, Param] = {
    # -- run
    "run_name": Param(None, str, "folder under runs/; defaults to the params file's stem", trains=False),
    "seed": Param(0, int, "seed for data generation, splits, initialisation and augmentation", low=0),
    # -- data
    "dataset": Param("synthetic", tuple(registry.DATASETS), "dataset format"),
    "data_dir": Param(None, str, "dataset folder; else $FER_DATA_DIR; synthetic: generated under .cache/",
                      trains=False),  # the data fingerprint already says whether the data are the same
    "synthetic_n_train": Param(4000, int, "synthetic train images (AffectNet class shares)", low=1),
    "synthetic_n_val": Param(800, int, "synthetic selection (val) images (balanced)", low=1),
    "synthetic_n_test": Param(800, int, "synthetic report (test) images (balanced)", low=1),
    "synthetic_label_noise": Param(0.23, float, "share of synthetic labels replaced by another class, uniformly "
                                   "(0.23: two noisy labels of a face agree 60% of the time, as AffectNet's "
                                   "annotators do)", low=0.0, high=1.0),
    "selection_fraction": Param(0.1, float, "real data: the stratified, seeded share of train carved out as the "
                                "selection (val) split; the dataset's own val becomes the report (test) split",
                                low=0.01, high=0.4),
    "dedup": Param(True, bool, "move val/test images whose pixels equal a train image to val_dup/test_dup"),
    "ferplus_rule": Param("majority", ("majority", "plurality"), "FER+ labels: the paper's majority rule (single "
                          "votes dropped, > 50% agreement) or the arg-max of the votes"),
    "synthetic_size": Param(64, int, "synthetic image side in pixels", low=32, high=512),
    "image_size": Param(48, int, "side the model sees, in pixels (each model has its own minimum)", low=8,
                        high=1024),
    "channels": Param(1, (1, 3), "1 = grayscale, 3 = RGB"),
    "max_per_split": Param(None, int, "keep at most this many images per split (quick runs); null = all", low=1),
    # -- model
    "model": Param("baseline_cnn", tuple(registry.MODELS), "model factory name"),
    "width": Param(32, int, "channels of the first stage (custom models)", low=1, high=1024),
    "dropout": Param(0.0, float, "dropout before the classifier (regularized_cnn, resnet, pool_resnet)", low=0.0, high=0.95),
    "dropblock": Param(0.0, float, "DropBlock drop probability (regularized_cnn)", low=0.0, high=0.95),
    "pretrained": Param(False, bool, "resnet18: ImageNet weights if cached locally"),
    # -- optimisation
    "epochs": Param(10, int, "maximum epochs", low=1),
    "batch_size": Param(128, int, "images per step (per process under torchrun)", low=2),
    "optimizer": Param("adamw", ("adamw", "sgd"), "optimiser"),
    "lr": Param(2e-3, float, "peak learning rate", low=0.0, high=10.0),
    "weight_decay": Param(0.0, float, "decoupled weight decay (L2)", low=0.0),
    "l1": Param(0.0, float, "L1 penalty on weights, added to the loss", low=0.0),
    "scheduler": Param("cosine", ("cosine", "onecycle", "none"), "learning-rate schedule"),
    "warmup_epochs": Param(1, int, "linear warm-up epochs (cosine)", low=0),
    "label_smoothing": Param(0.0, float, "cross-entropy label smoothing", low=0.0, high=0.99),
    "ema": Param(0.0, float, "decay of an exponential moving average of the weights (0 = off; e.g. 0.999): "
                 "validation, best.pt and evaluation use the average", low=0.0, high=0.99999),
    "soft_labels": Param(False, bool, "train on each face's crowd-vote distribution (cross-entropy to the soft "
                         "label, the FER+ paper's best scheme) instead of its single label: FER+'s votes, also for "
                         "a class-folder FER2013 copy with ferplus_votes.csv beside its folders (the same faces)"),
    "vote_share": Param(1.0, float, "soft_labels: the votes' share of each face's target, the rest its own label "
                        "(one-hot); 1 = the votes alone", low=0.0, high=1.0),
    "teachers": Param("", str, "distillation: comma-separated run folders (or checkpoints) of this data and carve-out, "
                      "not refit, whose models' mean probabilities for each training face are its target "
                      "(fer_utils.engine.targets); empty = off"),
    "teacher_share": Param(1.0, float, "teachers: the ensemble's share of each face's target, the rest its own "
                           "label (one-hot); 1 = the teachers alone", low=0.0, high=1.0),
    "va_weight": Param(0.0, float, "weight of the valence/arousal loss ((1 - CCC) of each) added to the "
                       "classification loss: a second head on the same features predicts them (needs data with "
                       "valence and arousal: AffectNet, synthetic); 0 = no valence/arousal head", low=0.0),
    "imbalance": Param("none", ("none", "weighted_loss", "weighted_sampler"), "class-imbalance handling"),
    "early_stopping": Param(None, int, "stop after this many epochs without a better val macro-F1; null = off",
                            low=1),
    "refit": Param(False, bool, "the final model: train on train + the selection split (val) with the choices a "
                   "run without refit made there (epochs, tta_flip, ...); the last epoch is kept, val is no longer "
                   "held out, and the report split (test) still made no choice. Needs tta_flip true or false. For "
                   "`fer train`: the book refuses it (its chapters treat val as held out)"),
    # -- augmentation
    "aug_flip": Param(False, bool, "random horizontal flip"),
    "aug_rotate": Param(0.0, float, "max random rotation, degrees (with small shift/scale)", low=0.0, high=180.0),
    "aug_crop": Param(0.0, float, "random resized crop: smallest area kept (0 = off, e.g. 0.8)", low=0.0, high=1.0),
    "aug_jitter": Param(0.0, float, "brightness/contrast jitter strength", low=0.0, high=1.0),
    "aug_blur": Param(0.0, float, "probability of a Gaussian blur", low=0.0, high=1.0),
    "aug_erasing": Param(0.0, float, "probability of random erasing", low=0.0, high=1.0),
    # -- hardware
    "device": Param("auto", ("auto", "cpu", "cuda", "mps"), "auto = CUDA, else MPS, else CPU", trains=False),
    "amp": Param(True, bool, "mixed precision on CUDA (bf16 where supported)"),
    "cpu_bf16": Param(False, (False, True, "auto"), "train under bf16 autocast on the CPU (amp covers CUDA): "
                      "about 2x the images per second on CPUs with native bf16 (AMX, AVX-512 BF16), 12x slower on "
                      "others (emulated); auto = only where native (the run saves what it resolved to); "
                      "validation and evaluation stay fp32. Off by default: it changes the arithmetic, so the "
                      "weights depend on it"),
    "num_workers": Param(0, int, "DataLoader workers (large images); 0 = in-memory tensors", trains=False, low=0),
    "retrain": Param(False, bool, "retrain even if a valid checkpoint for these params and data exists",
                     trains=False),
    # -- evaluation
    "checkpoint": Param("best", str, "'best', 'last' or a path to a checkpoint", trains=False),
    "bootstrap": Param(1000, int, "bootstrap resamples for confidence intervals", trains=False, low=0),
    "tta_flip": Param(None, bool, "evaluation: flip test-time augmentation (the logits of each face and its mirror "
                                  "image averaged); null = decided on the selection split (val): used when it raises "
                                  "val macro-F1; true/false force it. Training's per-epoch validation never uses it",
                      trains=False),
    "eval_dataset": Param(None, tuple(registry.DATASETS), "evaluation chapter: also score the model on this second "
                          "dataset format, classes matched by name (fer_utils.analysis.cross_dataset); null = off",
                          trains=False),
    "eval_data_dir": Param(None, str, "the second dataset's folder (needs eval_dataset); null: synthetic data are "
                           "generated under .cache/, any other format needs it (FER_DATA_DIR names the training "
                           "data's folder, not this one)", trains=False),
    "eval_split": Param(None, ("test", "val", "train", "heldout"), "the second dataset's split to score (needs "
                        "eval_dataset); null = its report split (test)", trains=False),
    # -- ablation chapter
    "ablation": Param("baseline,regularized,augmented,resnet,unet", str,
                      "comma-separated ablation variants (fer_utils.config.ladder.VARIANTS); empty = none",
                      trains=False),
    "ablation_epochs": Param(None, int, "epochs per ablation variant (each rung's cosine schedule ends there); "
                             "null = `epochs`", trains=False, low=1),
    "ablation_seeds": Param(1, int, "seeds per ablation variant (seed, seed + 1, ...); scores are their mean",
                            trains=False, low=1),
}

DEFAULTS = {k: v.default for k, v in SCHEMA.items()}


class ParamsError(ValueError):
    pass


def _check_key(key: str, where: str) -> None:
    if key not in SCHEMA:
        key = str(key)  # YAML reads `1:` or `on:` as a number or a boolean key
        close = difflib.get_close_matches(key, SCHEMA, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ParamsError(
            f"unknown parameter '{key}' in {where}.{hint} Valid keys: {', '.join(SCHEMA)}"
        )


def _range_text(spec: Param) -> str:
    if spec.low is not None and spec.high is not None:
        return f"{spec.low:g} to {spec.high:g}"
    return f">= {spec.low:g}" if spec.low is not None else f"<= {spec.high:g}"


def _check_value(key: str, value):
    spec = SCHEMA[key]
    allowed = spec.kind
    if value is None:  # `key:` with nothing after it; only keys whose default is null may be null
        if spec.default is None:
            return None
        empty = ", or '' for empty text" if allowed is str else ""
        raise ParamsError(f"parameter '{key}' has no value (null); give one (default: {spec.default!r}{empty})")
    if isinstance(allowed, tuple):  # by type too: YAML's `true` is not the 1 of `channels`, nor 1 the true
        if not any(value == choice and type(value) is type(choice) for choice in allowed):
            spelled = (str(c).lower() if isinstance(c, bool) else str(c) for c in allowed)  # as YAML writes them
            raise ParamsError(f"parameter '{key}' = {value!r}; allowed: {', '.join(spelled)}")
        return value
    if allowed is float and not isinstance(value, bool):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except (TypeError, ValueError):
            pass
    if allowed is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, allowed) or (allowed is int and isinstance(value, bool)):
        raise ParamsError(f"parameter '{key}' = {value!r} should be {allowed.__name__}")
    if allowed is float and value != value:
        raise ParamsError(f"parameter '{key}' = nan is not a number; allowed: {_range_text(spec)}")
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ParamsError(f"parameter '{key}' = {value!r} is out of range; allowed: {_range_text(spec)}")
    return value


def _check_together(params: dict) -> None:
    """Rules across keys: the model's smallest input, the ablation rungs' names, refit's fixed choices, one
    source of soft targets, and no setting without what it sets (a vote or teacher share without its source,
    a second-dataset setting without the second dataset): it would be silently ignored."""
    minimum = registry.MODELS[params["model"]].min_image_size
    if params["image_size"] < minimum:
        raise ParamsError(f"parameter 'image_size' = {params['image_size']} is too small for model "
                          f"'{params['model']}'; allowed: >= {minimum}")
    try:
        ladder.variant_names(params)
    except ValueError as err:
        raise ParamsError(f"parameter 'ablation': {err}") from None
    if params["refit"]:
        clash = (["tta_flip=null"] if params["tta_flip"] is None else []) + (
            [f"early_stopping={params['early_stopping']}"] if params["early_stopping"] is not None else [])
        if clash:
            raise ParamsError(f"refit=true trains on the selection split (val), which then cannot choose: set "
                              f"tta_flip to the protocol a run without refit chose, and leave early_stopping null "
                              f"(got {', '.join(clash)})")
    if params["vote_share"] != 1.0 and not params["soft_labels"]:
        raise ParamsError(f"parameter 'vote_share' = {params['vote_share']!r} needs soft_labels=true (it mixes the "
                          "votes into each face's target)")
    if params["teacher_share"] != 1.0 and not params["teachers"]:
        raise ParamsError(f"parameter 'teacher_share' = {params['teacher_share']!r} needs 'teachers' (it mixes the "
                          "teachers' probabilities into each face's target)")
    if params["teachers"] and params["soft_labels"]:
        raise ParamsError("soft_labels=true and 'teachers' both set each face's target: choose one")
    for key in ("eval_data_dir", "eval_split"):
        if params[key] is not None and params["eval_dataset"] is None:
            raise ParamsError(f"parameter '{key}' = {params[key]!r} needs 'eval_dataset' (the second dataset's "
                              f"format; allowed: {', '.join(registry.DATASETS)})")


def _read_yaml(path: Path) -> dict:
    """A params file's mapping; a YAML error names the file and line in one line."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{where}: not valid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"cannot read params file {path}: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path} must hold a mapping of key: value")
    return loaded


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with the value read as YAML (so 3, 0.1, true, null work); `key=` for a text key is the
    empty text (e.g. `-p ablation=`: no ablation), not null."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ParamsError(f"override '{text}' must look like key=value")
    key = key.strip()
    _check_key(key, "the command line")
    if not raw.strip() and SCHEMA[key].kind is str:
        return key, ""
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"override '{text}': the value is not valid YAML ({problem})") from None


def resolve(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults <- params file <- overrides, validated. Records the file in `params_file`."""
    params = dict(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"params file not found: {path}")
        loaded = _read_yaml(path)
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
    if params["run_name"] in (".", "..") or any(c in params["run_name"] for c in "/\\"):
        raise ParamsError(f"parameter 'run_name' = {params['run_name']!r} must be a folder name (no / or \\, "
                          "not . or ..): the run goes in runs/<run_name>/")
    _check_together(params)
    if params["data_dir"] is None and params["dataset"] != "synthetic" and os.environ.get("FER_DATA_DIR"):
        params["data_dir"] = os.environ["FER_DATA_DIR"]
    return params


def save(params: dict, path: str | Path) -> None:
    """The resolved params as YAML, written atomically (saved next to every output)."""
    write_text(path, yaml.safe_dump(params, sort_keys=False))


def training_params(params: dict) -> dict:
    """The params that decide the trained weights (defaults filled in for keys added since)."""
    return {k: v for k, v in {**DEFAULTS, **params}.items() if k in SCHEMA and SCHEMA[k].trains}


def non_default(params: dict) -> dict:
    """The schema keys whose value differs from the default (what a page shows as "this run's choices")."""
    return {k: v for k, v in params.items() if k in SCHEMA and v != DEFAULTS[k]}
