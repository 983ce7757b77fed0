"""Which images each step sees: epoch order, class balance, sharding across processes, batch gathering.

Every order comes from a generator seeded from (seed, epoch), so a resumed run
sees the same batches, and `num_workers` changes nothing.
"""
from __future__ import annotations

import math
from typing import NamedTuple

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
    """uint8 arrays served a whole batch at a time (DataLoader calls __getitems__ with a batch's indices).

    `x` may be a memory map (data.images.load_split's cache): each batch is gathered from it, so the
    images never need to fit in memory. Pickled (workers started by spawn or forkserver), a memory map
    travels as its file name and is mapped again, instead of as a copy of every image."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitems__(self, idx):
        return torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])

    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(self.x, np.memmap):
            state["x"] = _MappedFile(self.x.filename, self.x.offset, self.x.dtype.str, self.x.shape)
        return state

    def __setstate__(self, state):
        if isinstance(state["x"], _MappedFile):
            f = state["x"]
            state["x"] = np.memmap(f.filename, np.dtype(f.dtype), "c", f.offset, f.shape)
        self.__dict__.update(state)


class _MappedFile(NamedTuple):
    """How a pickled ArrayDataset names its memory-mapped images: the file and where the array lies in it."""
    filename: str
    offset: int
    dtype: str
    shape: tuple


def _as_batch(batch):
    return batch


class _EpochBatches:
    """The batch sampler of a long-lived DataLoader: `batches` is replaced before each epoch. The loader
    reads it in the main process, so persistent workers see each epoch's order."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class BatchLoader:
    """A DataLoader over uint8 arrays (in memory or a memory map) for a whole run: `num_workers` processes
    gather batches, PREFETCH batches each ahead of the model, into pinned memory on CUDA. Its workers
    persist across epochs (each new start of a worker re-imports torch: seconds under spawn)."""

    PREFETCH = 2  # batches each worker keeps ready: hides uneven reads; more only costs host memory

    def __init__(self, x: np.ndarray, y: np.ndarray, num_workers: int, device: torch.device):
        if num_workers < 1:
            raise ValueError(f"BatchLoader needs num_workers >= 1, not {num_workers}")
        self.device = device
        self.sampler = _EpochBatches()
        # A fixed generator: the loader must not draw from the global RNG (dropout's), so that
        # num_workers does not change training.
        self.loader = torch.utils.data.DataLoader(
            ArrayDataset(x, y), batch_sampler=self.sampler, num_workers=num_workers, collate_fn=_as_batch,
            pin_memory=device.type == "cuda", persistent_workers=True, prefetch_factor=self.PREFETCH,
            generator=torch.Generator().manual_seed(0))

    def epoch(self, batches: list[torch.Tensor]):
        """Yield (uint8 images, labels) on the device for `batches`, in that order."""
        self.sampler.batches = [b.tolist() for b in batches]
        for xb, yb in self.loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def iterate_batches(x, y, batches: list[torch.Tensor], device: torch.device, num_workers: int = 0,
                    va: torch.Tensor | None = None):
    """Yield (uint8 images, labels) on `device`. num_workers == 0: `x`, `y` are tensors already there.
    Otherwise `x` is a BatchLoader made once for the run (its workers persist), or numpy arrays `x`, `y`
    for which a BatchLoader is made for this call. `va`: each face's valence and arousal (N x 2, on
    `device` whatever the path: it is small), gathered with the same indices and yielded third."""
    if num_workers == 0:
        gathered = ((x[idx], y[idx]) for idx in (i.to(x.device) for i in batches))
    else:
        gathered = (x if isinstance(x, BatchLoader) else BatchLoader(x, y, num_workers, device)).epoch(batches)
    for (xb, yb), idx in zip(gathered, batches):
        yield (xb, yb) if va is None else (xb, yb, va[idx.to(va.device)])
