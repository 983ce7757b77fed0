"""Training engine, in the style of torchvision's references/classification/train.py.

    python -m fer_utils.train params/x.yaml [-p key=value ...] [--out DIR] [--resume]
    torchrun --nproc_per_node=N -m fer_utils.train params/x.yaml ...

Design choices, and why:
- Small faces (48-96 px) live in memory as uint8 tensors, on the training device,
  and are augmented a whole batch at a time with torch ops: per-image PIL
  transforms in DataLoader workers would cost more than the model step on 2 CPU
  cores. Large data (num_workers > 0) goes through a DataLoader over the same
  uint8 arrays and is augmented on the device the same way.
- All randomness (sample order, augmentation, dropout) comes from generators
  seeded from (seed, epoch[, rank]), so a run resumed from `last.pt` ends with
  bit-identical weights and metrics on the CPU, and `num_workers` changes nothing.
- Checkpoints are plain dicts of tensors and plain data, loadable with
  `torch.load(path, weights_only=True)`, and are written atomically. A finished
  checkpoint for the same training params and data is reused instead of retrained.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import images, metrics
from .datasets import REPO_ROOT, DataError, Dataset, open_dataset
from .models import count_parameters, create_model
from .params import DEFAULTS, ParamsError, parse_override, resolve
from .params import save as save_params

# Params that do not change the trained weights: a checkpoint made under other values is still valid.
# (data_dir: the data fingerprint already says whether the data are the same; params_file: where they came from.)
NON_TRAINING_KEYS = ("retrain", "checkpoint", "bootstrap", "run_name", "device", "num_workers", "data_dir",
                     "params_file", "ablation", "ablation_epochs", "tta_flip")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                   "val_macro_f1", "lr", "epoch_time_s", "train_images_per_s")
CHECKPOINT_FORMAT = 1
# Independent random streams derived from the seed.
_ORDER, _AUGMENT, _GLOBAL = 0, 1, 2


class TrainingError(RuntimeError):
    """Training cannot go on: non-finite loss, out of memory, a device that is not there."""


class CheckpointError(ValueError):
    """A checkpoint does not match the model, classes, params or data it is used for."""


# -- devices and processes ----------------------------------------------------

def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA, else MPS, else CPU. Asking for a device that is not there is an error."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device=cuda was requested but no CUDA GPU is available (torch {torch.__version__}, "
                                f"built for CUDA {torch.version.cuda}); use device=auto or device=cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps":
        if not mps:
            raise TrainingError("device=mps was requested but the MPS backend is not available; "
                                "use device=auto or device=cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device '{name}'; use auto, cpu, cuda or mps")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def _rank0_first():
    """Let rank 0 build shared caches (synthetic data, decoded arrays) before the others read them."""
    rank, world = _world()
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


def _log(message: str) -> None:
    if _world()[0] == 0:
        print(message, flush=True)


def _seed(*keys: int) -> int:
    """A seed mixed from (seed, epoch, stream[, rank]): independent streams, the same on every resume."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _amp_dtype(device: torch.device, amp: bool):
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# -- batched augmentation on float images in [0, 1] ---------------------------
# `g` is a generator on the images' device: random values are drawn where they are used,
# so a GPU never waits on host-to-device copies of them.

def _rand(g: torch.Generator, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (high - low) + low


def random_geometry(x: torch.Tensor, g: torch.Generator, flip: bool = False, rotate: float = 0.0,
                    crop: float = 0.0) -> torch.Tensor:
    """Horizontal flip, rotation (+-`rotate` degrees, with +-5% shift and scale) and random resized
    crop (area fraction in [crop, 1], aspect 3/4..4/3), resampled once per batch."""
    n = x.shape[0]
    if rotate <= 0 and crop <= 0:
        if not flip:
            return x
        flipped = _rand(g, n) < 0.5
        return torch.where(flipped[:, None, None, None], x.flip(-1), x)  # exact, no resampling
    sx = torch.ones(n, device=x.device)
    sy, tx, ty, angle = sx.clone(), sx * 0, sx * 0, sx * 0
    if crop > 0:
        area = _rand(g, n, crop, 1.0)
        ratio = torch.exp(_rand(g, n, math.log(3 / 4), math.log(4 / 3)))
        sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        tx, ty = _rand(g, n, -1, 1) * (1 - sx), _rand(g, n, -1, 1) * (1 - sy)
    if rotate > 0:
        angle = _rand(g, n, -rotate, rotate) * (math.pi / 180)
        scale = _rand(g, n, 0.95, 1.05)
        sx, sy = sx * scale, sy * scale
        tx, ty = tx + _rand(g, n, -0.05, 0.05), ty + _rand(g, n, -0.05, 0.05)
    if flip:
        sx = torch.where(_rand(g, n) < 0.5, -sx, sx)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
    # = F.affine_grid(theta, x.shape, align_corners=False), built by broadcasting: 3-10x faster on the CPU.
    h, w = x.shape[-2:]
    u = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    v = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    t = theta[:, :, :, None, None]
    grid = (t[:, :, 0] * u + t[:, :, 1] * v[:, None] + t[:, :, 2]).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jitter(x: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness and contrast each scaled by a factor in [1 - strength, 1 + strength]."""
    n = x.shape[0]
    brightness = _rand(g, n, 1 - strength, 1 + strength)[:, None, None, None]
    contrast = _rand(g, n, 1 - strength, 1 + strength)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    return (((x - mean) * contrast + mean) * brightness).clamp_(0, 1)


def blur(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Gaussian blur of a random `p` share of the images, sigma 0.1..1 px per 48 px of image side."""
    # Only the chosen images are computed: cheaper on the CPU (on a GPU, nonzero() costs one sync).
    chosen = (_rand(g, x.shape[0]) < p).nonzero().flatten()
    n, c, h, w = len(chosen), *x.shape[1:]
    if n == 0:
        return x
    sigma_max = max(h, w) / 48
    sigma = _rand(g, n, 0.1, sigma_max)
    radius = math.ceil(2 * sigma_max)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, taps)
    # One grouped convolution blurs each chosen image with its own kernel (separable: rows, then columns).
    y = F.pad(x[chosen].reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)
    x = x.clone()
    x[chosen] = y.reshape(n, c, h, w)
    return x


def erase(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Random erasing: with probability `p`, a rectangle (2-20% of the area, aspect 0.3-3.3) gets a random gray."""
    chosen = (_rand(g, x.shape[0]) < p).nonzero().flatten()
    n, (h, w) = len(chosen), x.shape[2:]
    if n == 0:
        return x
    area = _rand(g, n, 0.02, 0.2)
    ratio = torch.exp(_rand(g, n, math.log(0.3), math.log(3.3)))
    eh = (area * ratio).sqrt().mul(h).round().clamp(1, h)[:, None]
    ew = (area / ratio).sqrt().mul(w).round().clamp(1, w)[:, None]
    top = (_rand(g, n)[:, None] * (h - eh + 1)).floor()
    left = (_rand(g, n)[:, None] * (w - ew + 1)).floor()
    fill = _rand(g, n)[:, None, None, None]
    rows, cols = torch.arange(h, device=x.device)[None], torch.arange(w, device=x.device)[None]
    inside = ((rows >= top) & (rows < top + eh))[:, :, None] & ((cols >= left) & (cols < left + ew))[:, None, :]
    x = x.clone()
    x[chosen] = torch.where(inside[:, None], fill, x[chosen])
    return x


def prepare_batch(x: torch.Tensor, params: dict | None = None, g: torch.Generator | None = None,
                  memory_format=torch.channels_last) -> torch.Tensor:
    """uint8 batch -> augmented (when `g` is given) float batch normalised to [-1, 1] (mean = std = 0.5)."""
    x = x.float().div_(255)
    if g is not None:
        x = random_geometry(x, g, params["aug_flip"], params["aug_rotate"], params["aug_crop"])
        if params["aug_jitter"] > 0:
            x = jitter(x, g, params["aug_jitter"])
        if params["aug_blur"] > 0:
            x = blur(x, g, params["aug_blur"])
        if params["aug_erasing"] > 0:
            x = erase(x, g, params["aug_erasing"])
    return x.sub_(0.5).div_(0.5).contiguous(memory_format=memory_format)


# -- sampling -----------------------------------------------------------------

def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequencies, normalised to mean 1 over the classes present (absent classes: 0)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return w * (counts > 0).sum() / w.sum()


def epoch_order(y: np.ndarray, num_classes: int, params: dict, epoch: int) -> torch.Tensor:
    """This epoch's sample indices: a permutation, or (weighted_sampler) len(y) draws with replacement
    and class-balanced probabilities, as torch's WeightedRandomSampler does. Same on every rank."""
    g = torch.Generator().manual_seed(_seed(params["seed"], epoch, _ORDER))
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


class _ArrayDataset(torch.utils.data.Dataset):
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
        _ArrayDataset(x, y), batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
        collate_fn=_as_batch, pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


# -- optimisation -------------------------------------------------------------

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


# -- one epoch, evaluation ----------------------------------------------------

def _check_finite(value: torch.Tensor, epoch: int, step: int, steps: int, lr: float) -> None:
    bad = (~torch.isfinite(value)).any().to(torch.int32)
    if _world()[1] > 1:  # every rank must stop, or the others wait forever in the next all-reduce
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        raise TrainingError(f"non-finite training loss in epoch {epoch}, step {step} of {steps} (lr {lr:.3g}): "
                            f"training stopped. Try a lower lr (e.g. -p lr={lr / 10:.3g}), "
                            "or check the data for broken images")


def train_one_epoch(model, optimizer, scheduler, criterion, batches, params: dict, epoch: int,
                    device: torch.device, steps: int, scaler=None, amp_dtype=None) -> dict:
    """One pass over `batches` (from iterate_batches). `epoch` is 1-based. Returns summed loss,
    correct predictions and images seen (this rank), and the last learning rate."""
    model.train()
    rank = _world()[0]
    g = torch.Generator(device).manual_seed(_seed(params["seed"], epoch, _AUGMENT, rank))
    l1_params = optimizer.param_groups[0]["params"] if params["l1"] > 0 else []
    # Sums stay on the device: reading them every step would stall a GPU.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    check_every = 1 if device.type == "cpu" else 25
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=None if rank == 0 else True)
    for step, (xb, yb) in enumerate(batches, 1):
        x = prepare_batch(xb, params, g)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = criterion(logits, yb)
        if l1_params:
            loss = loss + params["l1"] * sum(p.abs().sum() for p in l1_params)
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
        lr = optimizer.param_groups[0]["lr"]
        if step % check_every == 0 or step == steps:  # a NaN stays in the sum until it is seen
            _check_finite(loss_sum, epoch, step, steps, lr)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", refresh=False)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        bar.update()
    bar.close()
    return dict(loss_sum=loss_sum.item(), correct=correct.item(), seen=seen, lr=lr)


@torch.no_grad()
def evaluate(model, x, y, num_classes: int, device: torch.device, batch_size: int = 256, amp_dtype=None) -> dict:
    """Loss and metrics.summary on the whole set; under torchrun each rank scores a shard and the
    predictions are all-gathered. `x`: uint8 (N, C, H, W), tensor or numpy; `y`: int labels.
    Returns loss, accuracy, balanced_accuracy, macro_f1, f1_per_class, absent_classes, n, y_pred."""
    model = _unwrap(model).eval()  # DDP's forward would sync buffers: ranks may take different batch counts
    rank, world = _world()
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    mine = torch.arange(rank, len(y), world)
    preds, losses = [], []
    for idx in mine.split(batch_size):
        xb = x[idx.to(x.device)].to(device, non_blocking=True)
        yb = y[idx.to(y.device)].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(prepare_batch(xb))
        losses.append(F.cross_entropy(logits.float(), yb, reduction="none"))
        preds.append(logits.argmax(1))
    pred = torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.int64)
    loss = torch.cat(losses).double().cpu() if losses else torch.zeros(0, dtype=torch.float64)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (mine, pred, loss))
        mine = torch.cat([g[0] for g in gathered])
        pred = torch.empty(len(y), dtype=torch.int64).index_put_((mine,), torch.cat([g[1] for g in gathered]))
        loss = torch.cat([g[2] for g in gathered])
    y_pred = pred.numpy()
    return dict(loss=float(loss.sum() / len(y)), **metrics.summary(y.cpu().numpy(), y_pred, num_classes),
                y_pred=y_pred)


# -- checkpoints --------------------------------------------------------------

def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=[kind, keys.tolist(), int(pos), int(has_gauss), float(cached)])


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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
        model = _unwrap(model)
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


def training_params(params: dict) -> dict:
    """The params that decide the trained weights (defaults filled in for keys added since)."""
    return {k: v for k, v in {**DEFAULTS, **params}.items() if k not in NON_TRAINING_KEYS}


def _match(path: Path, params: dict, classes: list, fingerprint: str) -> tuple[dict | None, str]:
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


# -- the whole run ------------------------------------------------------------

def _result(history: dict, best_epoch: int, run_dir: Path, started: float, reused: bool) -> dict:
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    best = frame[frame["epoch"] == best_epoch].iloc[0]
    return dict(history=frame, best_epoch=int(best_epoch),
                best_metrics={k: float(best[k]) for k in HISTORY_COLUMNS if k.startswith("val_")},
                best_checkpoint=run_dir / "best.pt", last_checkpoint=run_dir / "last.pt", run_dir=run_dir,
                wall_time_s=time.perf_counter() - started, train_time_s=float(frame["epoch_time_s"].sum()),
                images_per_s=float(frame["train_images_per_s"].mean()), reused=reused)


def fit(params: dict, data: Dataset | None = None, run_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train `params["model"]` on the 'train' split, validating on 'val' every epoch.

    data: an opened Dataset (default: open_dataset(params)). run_dir: default runs/<run_name>.
    A finished checkpoint in run_dir for the same training params, classes and data is reused (no
    training) unless params["retrain"]; an unfinished one is resumed. resume=True insists on resuming.
    Returns history (DataFrame), best_epoch, best_metrics, best_checkpoint, last_checkpoint, run_dir,
    wall_time_s (this call), train_time_s (all epochs), images_per_s (training) and reused.
    """
    started = time.perf_counter()
    rank, world = _world()
    device = select_device(params["device"], int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    run_dir = Path(run_dir) if run_dir else REPO_ROOT / "runs" / params["run_name"]
    if data is None:
        with _rank0_first():
            data = open_dataset(params)
    classes, fingerprint = list(data.classes), data.fingerprint
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"

    if resume and params["retrain"]:
        raise ParamsError("--resume and retrain=true contradict each other: choose one")
    ckpt, why = (None, "retrain=true") if params["retrain"] else _match(last_path, params, classes, fingerprint)
    if resume and ckpt is None:
        raise CheckpointError(f"cannot resume: {why}")
    if ckpt is not None and ckpt["finished"]:
        _log(f"reusing the finished run in {run_dir} (same training params and data; retrain=true to train again)")
        return _result(ckpt["history"], ckpt["best_epoch"], run_dir, started, reused=True)
    if ckpt is None and last_path.exists():
        _log(f"not reusing {last_path}: {why}; training from scratch")

    for split in ("train", "val"):
        if split not in data.splits:
            raise DataError(f"dataset in {data.root} has no '{split}' split (splits: {data.splits})")
    with _rank0_first():
        x_train, y_train, _ = images.load_split(data, "train", params["image_size"], params["channels"])
        x_val, y_val, _ = images.load_split(data, "val", params["image_size"], params["channels"])
    num_classes, n_train = len(classes), len(y_train)
    if n_train < 2:
        raise DataError(f"the train split has {n_train} usable images; training needs at least 2")

    torch.manual_seed(params["seed"])  # the same initial weights on every rank and every run
    model = create_model(params["model"], num_classes, params["channels"], params["image_size"], params["width"],
                         params["dropout"], params["dropblock"], params["pretrained"])
    model = model.to(device, memory_format=torch.channels_last)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    steps = len(batch_indices(shard(torch.arange(n_train), rank, world), params["batch_size"]))
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params, steps)
    amp_dtype = _amp_dtype(device, params["amp"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    weight = (torch.as_tensor(class_weights(y_train, num_classes), dtype=torch.float32, device=device)
              if params["imbalance"] == "weighted_loss" else None)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=params["label_smoothing"])

    history = {k: [] for k in HISTORY_COLUMNS}
    start_epoch, best_metric, best_epoch = 0, float("-inf"), 0
    if ckpt is not None:
        load_checkpoint(last_path, model, classes, optimizer, scheduler, scaler)
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        best_metric, best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        _set_rng_state(ckpt["rng"])
        _log(f"resuming {last_path} after epoch {start_epoch}")
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_params(params, run_dir / "params.yaml")

    # In memory: the uint8 arrays sit on the training device once; workers: they stay in host memory.
    workers = params["num_workers"]
    if workers == 0:
        try:
            x_train, y_train_t = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)
            x_val, y_val = torch.from_numpy(x_val).to(device), torch.from_numpy(y_val)
        except torch.OutOfMemoryError as err:
            raise TrainingError(f"the images ({(x_train.nbytes + x_val.nbytes) / 2**30:.1f} GiB) do not fit in "
                                f"{device} memory; use num_workers > 0 to keep them in host memory") from err
    else:
        y_train_t = y_train
    _log(f"training {params['model']} (width {params['width']}, {count_parameters(model):,} parameters) on {n_train} images, {len(y_val)} val, "
         f"{num_classes} classes, {device}" + (f" x {world} processes" if world > 1 else "")
         + f", {params['epochs']} epochs of {steps} steps -> {run_dir}")
    try:
        for epoch in range(start_epoch + 1, params["epochs"] + 1):
            torch.manual_seed(_seed(params["seed"], epoch, _GLOBAL, rank))  # dropout, DropBlock
            batches = batch_indices(shard(epoch_order(y_train, num_classes, params, epoch), rank, world),
                                    params["batch_size"])
            t0 = time.perf_counter()
            stats = train_one_epoch(model, optimizer, scheduler, criterion,
                                    iterate_batches(x_train, y_train_t, batches, device, workers),
                                    params, epoch, device, steps, scaler, amp_dtype)
            train_time = time.perf_counter() - t0
            if world > 1:
                totals = torch.tensor([stats["loss_sum"], stats["correct"], stats["seen"]], dtype=torch.float64,
                                      device=device)
                dist.all_reduce(totals)
                stats.update(loss_sum=totals[0].item(), correct=totals[1].item(), seen=totals[2].item())
                for buffer in _unwrap(model).buffers():  # each rank's BN stats saw its own last batch: use rank 0's
                    dist.broadcast(buffer, 0)
            val = evaluate(model, x_val, y_val, num_classes, device, 2 * params["batch_size"], amp_dtype)
            row = dict(epoch=epoch, train_loss=stats["loss_sum"] / stats["seen"],
                       train_accuracy=stats["correct"] / stats["seen"], val_loss=val["loss"],
                       val_accuracy=val["accuracy"], val_balanced_accuracy=val["balanced_accuracy"],
                       val_macro_f1=val["macro_f1"], lr=stats["lr"], epoch_time_s=time.perf_counter() - t0,
                       train_images_per_s=stats["seen"] / train_time)
            for k in HISTORY_COLUMNS:
                history[k].append(row[k])
            improved = val["macro_f1"] > best_metric
            if improved:
                best_metric, best_epoch = val["macro_f1"], epoch
            patience = params["early_stopping"]
            finished = epoch == params["epochs"] or bool(patience and epoch - best_epoch >= patience)
            if rank == 0:
                state = dict(format=CHECKPOINT_FORMAT, model_config=_unwrap(model).config,
                             model=_unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                             scheduler=scheduler.state_dict(), scaler=scaler.state_dict() if scaler.is_enabled()
                             else None, epoch=epoch, params=params, classes=classes, fingerprint=fingerprint,
                             best_metric=best_metric, best_epoch=best_epoch, history=history, finished=finished,
                             rng=_rng_state())
                if improved:
                    save_checkpoint(state, best_path)
                save_checkpoint(state, last_path)
                pd.DataFrame(history).to_csv(run_dir / "history.csv.tmp", index=False)
                os.replace(run_dir / "history.csv.tmp", run_dir / "history.csv")
            _log(f"epoch {epoch}/{params['epochs']}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
                 f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
                 f" bal {row['val_balanced_accuracy']:.3f} F1 {row['val_macro_f1']:.3f}  lr {row['lr']:.2e}"
                 f"  {row['epoch_time_s']:.1f} s {row['train_images_per_s']:.0f} img/s" + ("  *" if improved else ""))
            if finished:
                if epoch < params["epochs"]:
                    _log(f"early stopping: no better val macro-F1 for {patience} epochs (best: epoch {best_epoch})")
                break
    except TrainingError as err:
        raise TrainingError(f"{err}. The last good checkpoint is kept: {last_path}") from None
    except torch.OutOfMemoryError as err:
        bs = params["batch_size"]
        raise TrainingError(f"out of memory on {device} with batch_size={bs} ({err}). Use a smaller batch_size, "
                            f"e.g. -p batch_size={max(1, bs // 2)}") from err
    result = _result(history, best_epoch, run_dir, started, reused=False)
    _log(f"best epoch {best_epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["best_metrics"].items())
         + f"; {result['images_per_s']:.0f} img/s; checkpoints in {run_dir}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fer_utils.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="?", help="params YAML file (keys not given take their defaults)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (repeatable), e.g. -p lr=1e-3")
    parser.add_argument("--out", help="run folder (default: runs/<run_name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        params = resolve(args.params, dict(parse_override(text) for text in args.param))
        if distributed:  # torchrun: one process per GPU (nccl) or per CPU worker (gloo)
            device = select_device(params["device"], int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            fit(params, run_dir=args.out, resume=args.resume)
        finally:
            if distributed:
                dist.destroy_process_group()
    except (TrainingError, CheckpointError, ParamsError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
