"""Which images each step sees: epoch order, class balance, sharding across processes, batch gathering.

Every order comes from a generator seeded from (seed, epoch), so a resumed run
sees the same batches, and `num_workers` changes nothing.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .runtime import seed as mix_seed

# Independent random streams derived from the seed.
ORDER, AUGMENT, GLOBAL = 0, 1, 2


def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequencies, normalised to mean 1 over the classes present (absent classes: 0)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return w * (counts > 0).sum() / w.sum()


def epoch_order(y: np.ndarray, num_classes: int, params: dict, epoch: int) -> torch.Tensor:
    """This epoch's sample indices: a permutation, or (weighted_sampler) len(y) draws with replacement
    and class-balanced probabilities, as torch's WeightedRandomSampler does. Same on every rank."""
    g = torch.Generator().manual_seed(mix_seed(params["seed"], epoch, ORDER))
    if params["imbalance"] == "weighted_sampler":
        weights = torch.as_tensor(class_weights(y, num_classes)[y])
        return torch.multinomial(weights, len(y), replacement=True, generator=g)
    return torch.randperm(len(y), generator=g)


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank's share of the order, padded by wrapping so that every rank takes the same number of steps."""
    if world == 1:
        return order
    total = math.ceil(len(order) / world) * world
    return order.repeat(math.ceil(total / len(order)))[:total][rank::world]


def batch_indices(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Consecutive batches; a last batch of one image is dropped (batch norm cannot train on it)."""
    batches = list(order.split(batch_size))
    return batches[:-1] if len(batches) > 1 and len(batches[-1]) == 1 else batches


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 arrays served a whole batch at a time (DataLoader calls __getitems__ with a batch's indices)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitems__(self, idx):
        return torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])


def _as_batch(batch):
    return batch


def iterate_batches(x, y, batches: list[torch.Tensor], device: torch.device, num_workers: int = 0):
    """Yield (uint8 images, labels) on `device`. num_workers == 0: `x`, `y` are tensors already there.
    Otherwise a DataLoader with workers and pinned memory gathers each batch from numpy arrays."""
    if num_workers == 0:
        for idx in batches:
            idx = idx.to(x.device)
            yield x[idx], y[idx]
        return
    # A fixed generator: the loader must not draw from the global RNG (dropout's), so that
    # num_workers does not change training.
    loader = torch.utils.data.DataLoader(
        ArrayDataset(x, y), batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
        collate_fn=_as_batch, pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
