"""Inference: the one forward pass that evaluation and the app share, so the book's protocol is the users'.

`predict` scores whole arrays of faces (evaluation, cross-dataset scoring, distillation's teachers).
Flip test-time augmentation averages the logits (and a valence/arousal head's
outputs) of each face and of its mirror image. The evaluation chapter decides on the selection split whether that is the
headline protocol; the predict CLI, the demo and the video path then use the same
decision by default (`headline_tta`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .models import valence_arousal
from .runtime import amp_dtype as select_amp_dtype
from .runtime import select_device, unwrap_model
from .transforms import prepare_batch


def forward(model: nn.Module, x: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float logits of a batch already normalised as in training (`transforms.prepare_batch`), and for a
    model with a valence/arousal head its (N, 2) float valence and arousal (else None); flip: each averaged
    with the mirror images' (flip test-time augmentation; mirroring commutes with the normalisation)."""
    views = [x, x.flip(-1)] if flip else [x]
    logit_sum, va_sum = 0, 0
    for view in views:
        logit_sum = logit_sum + model(view).float()
        va = valence_arousal(model)
        va_sum = None if va is None else va_sum + va.float()
    return logit_sum / len(views), None if va_sum is None else va_sum / len(views)


def logits(model: nn.Module, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """The logits of `forward`."""
    return forward(model, x, flip)[0]


def headline_tta(checkpoint: dict, metrics: dict | None = None) -> bool:
    """Whether flip TTA is the checkpoint's headline protocol: what the evaluation recorded for the report
    split (metrics.json beside a run's best.pt, or the metrics an exported model carries), else the
    `tta_flip` param it was trained under."""
    metrics = metrics if metrics is not None else checkpoint.get("metrics") or {}
    for split in ("test", "val"):
        if isinstance(metrics.get(split), dict) and "tta" in metrics[split]:
            return bool(metrics[split]["tta"])
    return bool((checkpoint.get("params") or {}).get("tta_flip"))


def run_metrics(path: Path) -> dict | None:
    """The evaluation's metrics.json beside a run's checkpoint, when it scored that very file (an exported
    model carries its own metrics instead)."""
    metrics_file = path.parent / "metrics.json"
    if not metrics_file.is_file():
        return None
    metrics = json.loads(metrics_file.read_text())
    scored = Path(metrics.get("checkpoint", {}).get("path", "")).name
    return metrics if scored == path.name else None


@torch.no_grad()
def predict(model: nn.Module, x_uint8, batch_size: int = 256, device="cpu", amp: bool = False,
            return_logits: bool = False, flip: bool = False, return_va: bool = False, cpu_bf16: bool = False):
    """Class probabilities (N, K) float64 numpy for uint8 images (N, C, H, W), tensor or numpy.

    Images are normalised exactly as in training (`engine.transforms.prepare_batch`, no augmentation).
    flip=True: test-time augmentation, the logits of each image and its mirror image averaged.
    amp and cpu_bf16 as in training (`runtime.amp_dtype`): evaluation leaves cpu_bf16 off.
    With return_logits=True and/or return_va=True returns a tuple: probs, then the logits, then the
    predicted valence and arousal ((N, 2) float64; None for a model without the head).
    """
    device = select_device(device) if isinstance(device, str) else torch.device(device)
    model = model.to(device).eval()
    x = torch.as_tensor(x_uint8)
    amp_dtype = select_amp_dtype(device, amp, cpu_bf16)
    chunks, va_chunks = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, va = forward(model, prepare_batch(xb), flip)
        chunks.append(logits.cpu())
        if va is not None:
            va_chunks.append(va.cpu())
    num_classes = _num_classes(model)
    logits = torch.cat(chunks).double() if chunks else torch.zeros((0, num_classes), dtype=torch.float64)
    probs = torch.softmax(logits, 1).numpy()
    extra = ([logits.numpy()] if return_logits else []) + (
        [torch.cat(va_chunks).double().numpy() if va_chunks else None] if return_va else [])
    return (probs, *extra) if extra else probs


def _num_classes(model) -> int:
    config = getattr(unwrap_model(model), "config", None)
    return int(config["num_classes"]) if config else 0
