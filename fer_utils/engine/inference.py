"""Inference: the one forward pass that evaluation and the app share, so the book's protocol is the users'.

Flip test-time augmentation averages the logits of each face and of its mirror
image. The evaluation chapter decides on the selection split whether that is the
headline protocol; the predict CLI, the demo and the video path then use the same
decision by default (`headline_tta`).
"""
from __future__ import annotations

import torch
from torch import nn


def logits(model: nn.Module, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Float logits of a batch already normalised as in training (`transforms.prepare_batch`); flip: averaged
    with the mirror images' logits (flip test-time augmentation; mirroring commutes with the normalisation)."""
    out = model(x).float()
    if flip:
        out = (out + model(x.flip(-1)).float()) / 2
    return out


def headline_tta(checkpoint: dict, metrics: dict | None = None) -> bool:
    """Whether flip TTA is the checkpoint's headline protocol: what the evaluation recorded for the report
    split (metrics.json beside a run's best.pt, or the metrics an exported model carries), else the
    `tta_flip` param it was trained under."""
    metrics = metrics if metrics is not None else checkpoint.get("metrics") or {}
    for split in ("test", "val"):
        if isinstance(metrics.get(split), dict) and "tta" in metrics[split]:
            return bool(metrics[split]["tta"])
    return bool((checkpoint.get("params") or {}).get("tta_flip"))
