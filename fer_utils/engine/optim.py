"""Optimiser and learning-rate schedule, built from params."""
from __future__ import annotations

import math

import torch
from torch import nn

def make_optimizer(model: nn.Module, params: dict) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov). Weight decay only on conv/linear weights, not on biases
    and norm weights (decaying those only shrinks the scale the next layer undoes)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=params["weight_decay"]), dict(params=no_decay, weight_decay=0.0)]
    if params["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=params["lr"], momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=params["lr"])


def make_scheduler(optimizer: torch.optim.Optimizer, params: dict, steps_per_epoch: int):
    """Stepped every iteration: linear warm-up + cosine decay to 0, one-cycle, or constant."""
    total = params["epochs"] * steps_per_epoch
    if params["scheduler"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params["lr"], total_steps=total)
    warmup = min(params["warmup_epochs"] * steps_per_epoch, total - 1) if params["scheduler"] == "cosine" else 0

    def factor(step: int) -> float:
        if params["scheduler"] == "none":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
