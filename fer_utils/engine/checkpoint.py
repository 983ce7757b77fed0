"""Checkpoints: plain dicts of tensors and plain data, loadable with `torch.load(path, weights_only=True)`.

A checkpoint records the model config, the resolved params, the classes, the
data fingerprint and what its soft targets were made from (a digest), so a
finished run for the same training params, data and targets is reused instead
of retrained, and a checkpoint is never silently loaded into a model, class
list or dataset it was not made for.
Checkpoints are written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..paths import atomic_write
from ..config.params import training_params
from .models import LEGACY_SHORTCUT, SHORTCUTS, model_from_config
from .runtime import unwrap_model

CHECKPOINT_FORMAT = 1


# What every checkpoint holds, full (training) or exported (app.export): what loading and rebuilding the
# model read without a default. A file without them is not one of ours, whatever torch.load makes of it.
REQUIRED_KEYS = ("model_config", "model", "classes")
MODEL_CONFIG_KEYS = ("name", "num_classes", "in_channels", "image_size", "width", "dropout", "dropblock")
# What reusing or resuming a run reads besides: only a training run's last.pt has all of it.
TRAINING_KEYS = ("params", "fingerprint", "epoch", "finished", "history", "best_epoch", "best_metric", "optimizer",
                 "scheduler", "rng")


class CheckpointError(ValueError):
    """A checkpoint is damaged, is not this project's, or does not match the model, classes, params or
    data it is used for."""


def not_ours(path: Path) -> CheckpointError:
    """The one-line error for a file that is damaged or not this project's checkpoint. torch's own message
    (for weights_only, an essay on unpickling) says nothing a user can act on; it stays in __cause__."""
    return CheckpointError(f"not a checkpoint of this project (or damaged): {path}")


def rng_state() -> dict:
    """The global torch, CUDA and numpy random states, as plain data (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=[kind, keys.tolist(), int(pos), int(has_gauss), float(cached)])


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved: a resumed run draws the same numbers as an uninterrupted one."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, model: nn.Module | None = None, classes=None, optimizer=None,
                    scheduler=None, scaler=None, map_location="cpu") -> dict:
    """Read a checkpoint (weights_only) and load its states into whatever is given.

    Raises CheckpointError: in one line naming the file when it is damaged or not this project's
    checkpoint; saying what was expected and what was found when it was made for another model (name,
    classes count, channels, size, width) or other `classes`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:  # a truncated zip, random bytes, a pickled object: torch raises many types, all mean the same here
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise not_ours(path) from err
    if (not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT
            or any(k not in ckpt for k in REQUIRED_KEYS) or not isinstance(ckpt["model_config"], dict)
            or any(k not in ckpt["model_config"] for k in MODEL_CONFIG_KEYS)):
        raise not_ours(path)
    if classes is not None and list(classes) != list(ckpt["classes"]):
        raise CheckpointError(f"{path} was trained on classes {list(ckpt['classes'])}; "
                              f"expected {list(classes)}")
    if model is not None:
        model = unwrap_model(model)
        expected, found = getattr(model, "config", None), ckpt["model_config"]
        if expected is not None:
            pairs = {k: (expected[k], found.get(k)) for k in ("name", "num_classes", "in_channels", "image_size",
                                                              "width")}
            # a config without the key was written by a model without the head (models.create_model)
            pairs["valence_arousal"] = (expected.get("valence_arousal", False), found.get("valence_arousal", False))
            diff = {k: pair for k, pair in pairs.items() if pair[0] != pair[1]}
            if diff:
                raise CheckpointError(f"{path} holds a different model: " + ", ".join(
                    f"{k} expected {e!r}, found {f!r}" for k, (e, f) in diff.items()))
        load_weights(model, ckpt, path)
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return ckpt


def load_weights(model: nn.Module, ckpt: dict, path: Path) -> None:
    """ckpt["model"] into `model`; weights of other shapes or names (a damaged or hand-edited file) are a
    one-line CheckpointError (torch's message lists every key; it stays in __cause__)."""
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the model {ckpt['model_config']['name']!r} it "
                              "describes (damaged?)") from err


def load_model(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a checkpoint's model (in eval mode) from its stored config; returns (model, checkpoint)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    cfg = ckpt["model_config"]
    try:
        model = model_from_config(cfg)
    except (ValueError, TypeError, RuntimeError) as err:  # a config no model can be built from
        raise not_ours(path) from err
    load_weights(model, ckpt, path)
    return model.to(device).eval(), ckpt


def match_checkpoint(path: Path, params: dict, classes: list, fingerprint: str,
                     targets: str) -> tuple[dict | None, str]:
    """(checkpoint, "") when `path` was made with these training params, classes, data and targets (the
    digest of their sources, `targets.source_digest`: "" for the labels; a checkpoint from before it was
    recorded counts as trained on the labels); else (None, why).

    A file at `path` that is damaged or not this project's raises CheckpointError instead, saying how to
    start over: training over it unasked would also replace the run's best.pt, maybe its only good model."""
    if not path.is_file():
        return None, f"no checkpoint at {path}"
    try:
        ckpt = load_checkpoint(path)
        if any(k not in ckpt for k in TRAINING_KEYS):  # e.g. an exported model copied over last.pt
            raise not_ours(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. To train this run from scratch, set retrain=true (-p retrain=true, without "
                              f"--resume); that replaces {path.with_name('best.pt')} too: copy it first to keep "
                              "it") from err
    old, new = training_params(ckpt["params"]), training_params(params)
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new[k]]
    if changed:
        return None, f"{path} was trained with other params ({'; '.join(changed)})"
    if ckpt["fingerprint"] != fingerprint:
        return None, f"{path} was trained on other data (fingerprint {ckpt['fingerprint']}, now {fingerprint})"
    recorded = ckpt.get("targets")
    if recorded is None and targets:
        return None, f"{path} does not record what its soft targets were made from (it predates that record)"
    if (recorded or "") != targets:
        return None, (f"{path} was trained on other targets (digest of their sources {recorded or 'none: the labels'}"
                      f", now {targets or 'none: the labels'}): the vote shares or the teachers' weights changed")
    if list(ckpt["classes"]) != list(classes):
        return None, f"{path} was trained on classes {ckpt['classes']}, now {list(classes)}"
    shortcut = ckpt["model_config"].get("shortcut", LEGACY_SHORTCUT)
    if ckpt["model_config"]["name"] == "resnet" and shortcut != SHORTCUTS[0]:  # the same params build another net now
        return None, f"{path} holds the older '{shortcut}' resnet; the current one is '{SHORTCUTS[0]}'"
    return ckpt, ""
