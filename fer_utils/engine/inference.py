"""Inference: the one forward pass that evaluation and the app share, so the book's protocol is the users'.

Flip test-time augmentation averages the logits (and a valence/arousal head's
outputs) of each face and of its mirror image. The evaluation chapter decides on the selection split whether that is the
headline protocol; the predict CLI, the demo and the video path then use the same
decision by default (`headline_tta`).
"""
from __future__ import annotations

import torch
from torch import nn

from .models import valence_arousal


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
