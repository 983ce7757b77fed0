"""Checkpoints: plain dicts of tensors and plain data, loadable with `torch.load(path, weights_only=True)`.

A checkpoint records the model config, the resolved params, the classes and the
data fingerprint it was trained with, so a finished run for the same training
params and data is reused instead of retrained, and a checkpoint is never
silently loaded into a model, class list or dataset it was not made for.
Checkpoints are written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..paths import atomic_write
from ..config.params import training_params
from .models import create_model
from .runtime import unwrap_model

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint does not match the model, classes, params or data it is used for."""


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

    Raises CheckpointError, saying what was expected and what was found, when the checkpoint was
    made for another model (name, classes count, channels, size, width) or other `classes`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a fer_utils checkpoint (format {CHECKPOINT_FORMAT})")
    if classes is not None and list(classes) != list(ckpt["classes"]):
        raise CheckpointError(f"{path} was trained on classes {list(ckpt['classes'])}; "
                              f"expected {list(classes)}")
    if model is not None:
        model = unwrap_model(model)
        expected, found = getattr(model, "config", None), ckpt["model_config"]
        if expected is not None:
            diff = {k: (expected[k], found.get(k)) for k in ("name", "num_classes", "in_channels", "image_size",
                                                             "width") if expected[k] != found.get(k)}
            if diff:
                raise CheckpointError(f"{path} holds a different model: " + ", ".join(
                    f"{k} expected {e!r}, found {f!r}" for k, (e, f) in diff.items()))
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not fit the model {found.get('name')!r}: {err}") from err
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return ckpt


def load_model(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a checkpoint's model (in eval mode) from its stored config; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    cfg = ckpt["model_config"]
    model = create_model(cfg["name"], cfg["num_classes"], cfg["in_channels"], cfg["image_size"], cfg["width"],
                         cfg["dropout"], cfg["dropblock"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def match_checkpoint(path: Path, params: dict, classes: list, fingerprint: str) -> tuple[dict | None, str]:
    """(checkpoint, "") when `path` was made with these training params, classes and data; else (None, why)."""
    if not path.is_file():
        return None, f"no checkpoint at {path}"
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        return None, str(err)
    old, new = training_params(ckpt["params"]), training_params(params)
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new[k]]
    if changed:
        return None, f"{path} was trained with other params ({'; '.join(changed)})"
    if ckpt["fingerprint"] != fingerprint:
        return None, f"{path} was trained on other data (fingerprint {ckpt['fingerprint']}, now {fingerprint})"
    if list(ckpt["classes"]) != list(classes):
        return None, f"{path} was trained on classes {ckpt['classes']}, now {list(classes)}"
    return ckpt, ""
