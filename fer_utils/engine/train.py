"""Training: the epoch loop, validation and `fit`, in the style of torchvision's references/classification.

    python -m fer_utils.engine.train params/x.yaml [-p key=value ...] [--out DIR] [--resume]
    torchrun --nproc_per_node=N -m fer_utils.engine.train params/x.yaml ...

This file holds only the loops and `main`; augmentation (`transforms`), sampling
(`sampling`), optimiser and schedule (`optim`), devices and processes (`runtime`),
soft targets from votes or teachers (`targets`) and checkpoints (`checkpoint`) live
beside it. Design choices, and why:
- Small faces (48-96 px) live in memory as uint8 tensors, on the training device,
  and are augmented a whole batch at a time (see `transforms`). Large data
  (num_workers > 0) goes through a DataLoader over the same uint8 arrays and is
  augmented on the device the same way.
- All randomness (sample order, augmentation, dropout) comes from generators
  seeded from (seed, epoch[, rank]), so a run resumed from `last.pt` ends with
  bit-identical weights and metrics on the CPU, and `num_workers` changes nothing.
- A finished checkpoint for the same training params and data is reused instead
  of retrained; an unfinished one is resumed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import metrics
from ..data import images
from ..data.datasets import DataError, Dataset, open_dataset
from ..config.params import ParamsError, parse_override, resolve
from ..config.params import save as save_params
from ..paths import run_dir as default_run_dir
from ..paths import write_text
from .checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, match_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .models import count_parameters, create_model, valence_arousal
from .optim import make_optimizer, make_scheduler
from .runtime import TrainingError, amp_dtype as select_amp_dtype, log, rank0_first, select_device, unwrap_model
from .runtime import rank_and_world, resolve_cpu_bf16
from .runtime import seed as mix_seed
from .sampling import (AUGMENT, GLOBAL, BatchLoader, batch_indices, class_weights, epoch_order,
                       iterate_batches, shard)
from .targets import source_digest, teacher_targets, vote_targets
from .transforms import prepare_batch

HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                   "val_macro_f1", "lr", "epoch_time_s", "train_images_per_s")
# Added to the history of a run with a valence/arousal head (va_weight > 0): validate's scores of it.
VA_HISTORY_COLUMNS = tuple(f"val_{score}" for score in metrics.VA_SCORES)


# -- one epoch, validation ----------------------------------------------------

def check_finite(value: torch.Tensor, epoch: int, step: int, steps: int, lr: float) -> None:
    bad = (~torch.isfinite(value)).any().to(torch.int32)
    if rank_and_world()[1] > 1:  # every rank must stop, or the others wait forever in the next all-reduce
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        raise TrainingError(f"non-finite training loss in epoch {epoch}, step {step} of {steps} (lr {lr:.3g}): "
                            f"training stopped. Try a lower lr (e.g. -p lr={lr / 10:.3g}), "
                            "or check the data for broken images")


def va_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 - CCC of valence) + (1 - CCC of arousal) over the batch's annotated faces (`metrics.ccc`, weighted:
    a NaN target counts for nothing, without reading a count on the host; a dimension with fewer than two
    annotated faces in the batch adds 0). `pred`, `target`: N x 2.

    1 - CCC rather than the mean squared error, measured on the default book's data (params/default.yaml
    with va_weight=1, scores on val, the selection split, at the best epoch): MSE kept the answers near the
    mean, valence/arousal CCC 0.364/0.507 and RMSE 0.353/0.230, val macro-F1 0.374; 1 - CCC rewards
    matching the annotations' spread: CCC 0.599/0.680, RMSE 0.309/0.237, macro-F1 0.429. CCC is also what
    AffectNet results report."""
    known = ~torch.isnan(target)
    weight, target, pred = known.float(), target.nan_to_num(), pred.float()
    return sum((1 - metrics.ccc(target[:, i], pred[:, i], weight[:, i], eps=1e-6)) * (known[:, i].sum() >= 2)
               for i in range(target.shape[1]))


def train_one_epoch(model, optimizer, scheduler, criterion, batches, params: dict, epoch: int,
                    device: torch.device, steps: int, scaler=None, amp_dtype=None, ema=None) -> dict:
    """One pass over `batches` (from iterate_batches). `epoch` is 1-based. Labels are class indices, or
    (soft_labels, teachers) one distribution per face, of which the arg-max counts as correct. Batches of three
    carry each face's valence and arousal third: params["va_weight"] times `va_loss` is then added to the
    loss (the model has the head). `ema`: an AveragedModel updated after every step. Returns summed loss,
    correct predictions and images seen (this rank), and the last learning rate."""
    model.train()
    rank = rank_and_world()[0]
    g = torch.Generator(device).manual_seed(mix_seed(params["seed"], epoch, AUGMENT, rank))
    l1_params = optimizer.param_groups[0]["params"] if params["l1"] > 0 else []
    # Sums stay on the device: reading them every step would stall a GPU.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    check_every = 1 if device.type == "cpu" else 25
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=None if rank == 0 else True)
    for step, (xb, yb, *va) in enumerate(batches, 1):
        x = prepare_batch(xb, params, g)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = criterion(logits, yb)
        if va:
            loss = loss + params["va_weight"] * va_loss(valence_arousal(model), va[0])
        if l1_params:
            loss = loss + params["l1"] * sum(p.abs().sum() for p in l1_params)
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == (yb.argmax(1) if yb.is_floating_point() else yb)).sum()
        seen += len(yb)
        lr = optimizer.param_groups[0]["lr"]
        if step % check_every == 0 or step == steps:  # a NaN stays in the sum until it is seen
            check_finite(loss_sum, epoch, step, steps, lr)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", refresh=False)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update_parameters(unwrap_model(model))
        scheduler.step()
        bar.update()
    bar.close()
    return dict(loss_sum=loss_sum.item(), correct=correct.item(), seen=seen, lr=lr)


@torch.no_grad()
def validate(model, x, y, num_classes: int, device: torch.device, batch_size: int = 256, amp_dtype=None,
             va=None) -> dict:
    """Loss and metrics.summary on the whole set; under torchrun each rank scores a shard and the
    predictions are all-gathered. `x`: uint8 (N, C, H, W), tensor or numpy; `y`: int labels; `va`: (N, 2)
    valence and arousal (NaN where not annotated) for a model with the head, whose predictions are then
    scored too (metrics.valence_arousal_scores). Returns loss, accuracy, balanced_accuracy, macro_f1,
    f1_per_class, absent_classes, n, y_pred, and with `va` valence_ccc, valence_rmse, arousal_ccc,
    arousal_rmse, va_n."""
    model = unwrap_model(model).eval()  # DDP's forward would sync buffers: ranks may take different batch counts
    rank, world = rank_and_world()
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    mine = torch.arange(rank, len(y), world)
    preds, losses, va_preds = [], [], []
    for idx in mine.split(batch_size):
        xb = x[idx.to(x.device)].to(device, non_blocking=True)
        yb = y[idx.to(y.device)].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(prepare_batch(xb))
        losses.append(F.cross_entropy(logits.float(), yb, reduction="none"))
        preds.append(logits.argmax(1))
        if va is not None:
            va_preds.append(valence_arousal(model).float())
    pred = torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.int64)
    loss = torch.cat(losses).double().cpu() if losses else torch.zeros(0, dtype=torch.float64)
    va_pred = torch.cat(va_preds).cpu() if va_preds else torch.zeros((0, 2))
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (mine, pred, loss, va_pred))
        mine = torch.cat([g[0] for g in gathered])
        pred = torch.empty(len(y), dtype=torch.int64).index_put_((mine,), torch.cat([g[1] for g in gathered]))
        loss = torch.cat([g[2] for g in gathered])
        if va is not None:
            va_pred = torch.empty((len(y), 2)).index_put_((mine,), torch.cat([g[3] for g in gathered]))
    y_pred = pred.numpy()
    va_scores = (metrics.valence_arousal_scores(torch.as_tensor(va).cpu().numpy(), va_pred.numpy())
                 if va is not None else {})
    return dict(loss=float(loss.sum() / len(y)), **metrics.summary(y.cpu().numpy(), y_pred, num_classes),
                y_pred=y_pred, **va_scores)



# -- the whole run, as named steps ----------------------------------------------

def objective(params: dict) -> str:
    """The training loss in words, as `build_model` sets it up (a chart's train-loss title)."""
    source, share = None, 1.0
    if params["soft_labels"]:
        source, share = "each face's vote distribution", params["vote_share"]
    elif params["teachers"]:
        source, share = "the teachers' probabilities for each face", params["teacher_share"]
    target = f"{share:g} of {source} and {1 - share:g} of its label" if share < 1 else source
    parts = ["cross-entropy" + (f" to {target}" if source else "")
             + (" weighted by class" if params["imbalance"] == "weighted_loss" else "")]
    parts += [f"label smoothing {params['label_smoothing']:g}"] if params["label_smoothing"] else []
    parts += [f"+ L1 {params['l1']:g}"] if params["l1"] else []
    parts += [f"+ {params['va_weight']:g} x (1 - CCC) of valence and of arousal"] if params["va_weight"] else []
    return ", ".join(parts) + ", augmented batches"


def ema_update(decay: float):
    """AveragedModel's update for an exponential moving average whose decay warms up as timm's ModelEma
    does: min(decay, (1 + n) / (10 + n)) after n updates. A fixed 0.999 would still hold 60% of the random
    initial weights after 500 steps, so the first epochs' validation would score a meaningless model."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        # AveragedModel calls this once per dtype. The weight stays a tensor: reading the count on the host
        # would stall a GPU every step.
        if not averaged[0].is_floating_point():  # batch norm's step counts: the current value
            torch._foreach_copy_(averaged, current)
            return
        n = n_averaged.to(averaged[0].dtype)
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_lerp_(averaged, current, [weight] * len(averaged))

    return update


@dataclass
class Run:
    """What one `fit` call works with: where it runs and writes, the data, and the state it resumes from."""
    params: dict
    data: Dataset
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    started: float
    checkpoint: dict | None = None  # the last.pt being resumed
    targets: str = ""  # what the soft targets are made from (targets.source_digest); "" for the labels
    # {column: one value per epoch}: HISTORY_COLUMNS, then VA_HISTORY_COLUMNS with a valence/arousal head
    history: dict = field(default_factory=lambda: {k: [] for k in HISTORY_COLUMNS})
    start_epoch: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = 0

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"


@dataclass
class Arrays:
    """The decoded train and val images (uint8) and labels, where the epoch loop reads them. `y_target` is
    what the loss compares with: the labels, or (soft_labels, teachers) a distribution per face (`targets`;
    float, N x C).
    `va_train`, `va_val`: each face's valence and arousal (float32, N x 2, NaN where not annotated) when the
    model has the head (va_weight > 0), else None."""
    x_train: object
    y_train: np.ndarray
    y_target: np.ndarray
    y_train_device: object
    x_val: object
    y_val: object
    num_classes: int
    va_train: object = None
    va_val: object = None


@dataclass
class Optimization:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    amp_dtype: object
    criterion: nn.Module
    steps: int
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights that validation, best.pt and evaluation use: the moving average when there is one."""
        return self.ema.module if self.ema is not None else unwrap_model(self.model)


def result(history: dict, best_epoch: int, run_dir: Path, started: float, reused: bool) -> dict:
    """What `fit` returns: the history as a DataFrame, the best epoch's val metrics and where things are."""
    frame = pd.DataFrame(history)
    best = frame[frame["epoch"] == best_epoch].iloc[0]
    return dict(history=frame, best_epoch=int(best_epoch),
                best_metrics={k: float(best[k]) for k in frame.columns if k.startswith("val_")},
                best_checkpoint=run_dir / "best.pt", last_checkpoint=run_dir / "last.pt", run_dir=run_dir,
                wall_time_s=time.perf_counter() - started, train_time_s=float(frame["epoch_time_s"].sum()),
                images_per_s=float(frame["train_images_per_s"].mean()), reused=reused)


def prepare_run(params: dict, data: Dataset | None, run_dir, resume: bool) -> Run:
    """Pick the device (and with it cpu_bf16=auto's precision), open the data, and find a checkpoint to reuse
    or resume (none with retrain=true)."""
    rank, world_size = rank_and_world()
    device = select_device(params["device"], int(os.environ.get("LOCAL_RANK", 0)))
    params = {**params, "cpu_bf16": resolve_cpu_bf16(params["cpu_bf16"], device)}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if data is None:
        with rank0_first():
            data = open_dataset(params)
    run = Run(params, data, Path(run_dir) if run_dir else default_run_dir(params["run_name"]), device, rank,
              world_size, time.perf_counter())
    if resume and params["retrain"]:
        raise ParamsError("--resume and retrain=true contradict each other: choose one")
    run.targets = source_digest(params, data, run.run_dir)
    ckpt, why = ((None, "retrain=true") if params["retrain"]
                 else match_checkpoint(run.last_path, params, list(data.classes), data.fingerprint, run.targets))
    if resume and ckpt is None:
        raise CheckpointError(f"cannot resume: {why}")
    if ckpt is None and run.last_path.exists():
        log(f"not reusing {run.last_path}: {why}; training from scratch")
    run.checkpoint = ckpt
    return run


def load_arrays(run: Run) -> Arrays:
    """Decode train and val (rank 0 first: it builds the shared cache) and place them for the epoch loop."""
    params, data = run.params, run.data
    for split in ("train", "val"):
        if split not in data.splits:
            raise DataError(f"dataset in {data.root} has no '{split}' split (splits: {data.splits})")
    unannotated = [s for s in ("train", "val") if not has_valence_arousal(data, s)]
    if params["va_weight"] > 0 and unannotated:  # before decoding: that can take long
        raise DataError(f"va_weight > 0 trains a valence/arousal head, which needs valence and arousal "
                        f"annotations; the '{data.format}' dataset has none in its {' and '.join(unannotated)} "
                        "split (AffectNet and the synthetic faces have them): set va_weight=0")
    if params["refit"] and params["num_workers"] > 0:
        raise DataError("refit=true joins val to train in memory; with num_workers > 0 (memory-mapped large data) "
                        "that copy may not fit: refit is only offered with num_workers=0")
    with rank0_first():
        x_train, y_train, locations = images.load_split(data, "train", params["image_size"], params["channels"])
        x_val, y_val, val_locations = images.load_split(data, "val", params["image_size"], params["channels"])
    if params["refit"]:  # the final model: val joins train (it is still scored, no longer held out)
        x_train, y_train = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
        locations = np.concatenate([np.asarray(locations, dtype=object), np.asarray(val_locations, dtype=object)])
    if len(y_train) < 2:
        raise DataError(f"the train split has {len(y_train)} usable images; training needs at least 2")
    if params["soft_labels"]:
        target = vote_targets(data, locations, y_train, params["vote_share"])
    elif params["teachers"]:
        target = teacher_targets(params, data, x_train, y_train, run.device, run.run_dir, record=run.rank == 0)
    else:
        target = y_train
    va_train, va_val = ((valence_arousal_targets(data, locations), valence_arousal_targets(data, val_locations))
                        if params["va_weight"] > 0 else (None, None))
    return Arrays(x_train, y_train, target, target, x_val, y_val, len(data.classes), va_train, va_val)


def has_valence_arousal(data: Dataset, split: str) -> bool:
    """Whether any face of `split` has a valence and an arousal annotation (AffectNet and synthetic data do)."""
    rows = data.split(split)
    return all(c in rows.columns and rows[c].notna().any() for c in metrics.VA_NAMES)


def _trainable_rows(data: Dataset) -> pd.DataFrame:
    """The rows of train and val (what training and its validation read; refit trains on both), by location."""
    return data.frame[data.frame["split"].isin(["train", "val"])].set_index("location")


def valence_arousal_targets(data: Dataset, locations) -> np.ndarray:
    """The valence and arousal of the faces at `locations` (load_split's order; N x 2, float32, NaN where a
    face is not annotated)."""
    va = _trainable_rows(data)[list(metrics.VA_NAMES)].astype(np.float32)
    return va.loc[[str(loc) for loc in locations]].to_numpy(copy=True)


def to_device(arrays: Arrays, run: Run) -> None:
    """In memory (num_workers == 0): the uint8 arrays sit on the training device once (on the CPU,
    torch.from_numpy wraps the cache's memory map without a copy). With workers the arrays stay where
    load_split left them (for large data: memory maps of the cache files) and x_train becomes a
    BatchLoader, made once so that its workers live for the whole run and gather each batch. The
    valence/arousal targets (2 floats a face) go to the device on either path."""
    if arrays.va_train is not None:
        arrays.va_train = torch.from_numpy(arrays.va_train).to(run.device)
    if run.params["num_workers"] != 0:
        arrays.x_train = BatchLoader(arrays.x_train, arrays.y_target, run.params["num_workers"], run.device)
        return
    try:
        arrays.x_train = torch.from_numpy(arrays.x_train).to(run.device)
        arrays.y_train_device = torch.from_numpy(arrays.y_target).to(run.device)
        arrays.x_val, arrays.y_val = torch.from_numpy(arrays.x_val).to(run.device), torch.from_numpy(arrays.y_val)
    except torch.OutOfMemoryError as err:
        size = (arrays.x_train.nbytes + arrays.x_val.nbytes) / 2**30
        raise TrainingError(f"the images ({size:.1f} GiB) do not fit in {run.device} memory; use num_workers > 0 "
                            "to keep them in host memory") from err


def build_model(run: Run, arrays: Arrays) -> Optimization:
    """The model (same initial weights on every rank and run), optimiser, schedule, AMP and loss; the
    resumed checkpoint's states loaded into them."""
    params, device = run.params, run.device
    torch.manual_seed(params["seed"])
    model = create_model(params["model"], arrays.num_classes, params["channels"], params["image_size"],
                         params["width"], params["dropout"], params["dropblock"], params["pretrained"],
                         valence_arousal=params["va_weight"] > 0)
    model = model.to(device, memory_format=torch.channels_last)
    if run.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    steps = len(batch_indices(shard(torch.arange(len(arrays.y_train)), run.rank, run.world), params["batch_size"]))
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params, steps)
    amp = select_amp_dtype(device, params["amp"], params["cpu_bf16"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    weight = (torch.as_tensor(class_weights(arrays.y_train, arrays.num_classes), dtype=torch.float32, device=device)
              if params["imbalance"] == "weighted_loss" else None)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=params["label_smoothing"])
    ema = (torch.optim.swa_utils.AveragedModel(unwrap_model(model), multi_avg_fn=ema_update(params["ema"]),
                                               use_buffers=True) if params["ema"] > 0 else None)
    if run.checkpoint is not None:
        ckpt = run.checkpoint
        load_checkpoint(run.last_path, model, list(run.data.classes), optimizer, scheduler, scaler)
        if ema is not None:  # "model" holds the average (what is evaluated), "train_model" the trained weights
            ema.module.load_state_dict(ckpt["model"])
            ema.n_averaged.fill_(ckpt["ema_steps"])
            unwrap_model(model).load_state_dict(ckpt["train_model"])
        run.history, run.start_epoch = ckpt["history"], ckpt["epoch"]
        run.best_metric, run.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        set_rng_state(ckpt["rng"])
        log(f"resuming {run.last_path} after epoch {run.start_epoch}")
    return Optimization(model, optimizer, scheduler, scaler, amp, criterion, steps, ema)


def fit_one_epoch(run: Run, arrays: Arrays, opt: Optimization, epoch: int) -> dict:
    """Train one epoch, validate, and return the history row."""
    params = run.params
    torch.manual_seed(mix_seed(params["seed"], epoch, GLOBAL, run.rank))  # dropout, DropBlock
    batches = batch_indices(shard(epoch_order(arrays.y_train, arrays.num_classes, params, epoch), run.rank,
                                  run.world), params["batch_size"])
    t0 = time.perf_counter()
    stats = train_one_epoch(opt.model, opt.optimizer, opt.scheduler, opt.criterion,
                            iterate_batches(arrays.x_train, arrays.y_train_device, batches, run.device,
                                            params["num_workers"], arrays.va_train),
                            params, epoch, run.device, opt.steps, opt.scaler, opt.amp_dtype, opt.ema)
    train_time = time.perf_counter() - t0
    if run.world > 1:
        totals = torch.tensor([stats["loss_sum"], stats["correct"], stats["seen"]], dtype=torch.float64,
                              device=run.device)
        dist.all_reduce(totals)
        stats.update(loss_sum=totals[0].item(), correct=totals[1].item(), seen=totals[2].item())
        for buffer in unwrap_model(opt.model).buffers():  # each rank's BN stats saw its own last batch: use rank 0's
            dist.broadcast(buffer, 0)
    # Validated at evaluation's precision (cpu_bf16 only trains), so the best epoch is chosen on the numbers
    # that evaluation and `fer predict` will give.
    val = validate(opt.evaluated, arrays.x_val, arrays.y_val, arrays.num_classes, run.device, 2 * params["batch_size"],
                   select_amp_dtype(run.device, params["amp"]), arrays.va_val)
    return dict(epoch=epoch, train_loss=stats["loss_sum"] / stats["seen"],
                train_accuracy=stats["correct"] / stats["seen"], val_loss=val["loss"],
                val_accuracy=val["accuracy"], val_balanced_accuracy=val["balanced_accuracy"],
                val_macro_f1=val["macro_f1"], lr=stats["lr"], epoch_time_s=time.perf_counter() - t0,
                train_images_per_s=stats["seen"] / train_time,
                **({k: val[k.removeprefix("val_")] for k in VA_HISTORY_COLUMNS} if arrays.va_val is not None else {}))


def should_stop(run: Run, epoch: int) -> bool:
    """The last epoch, or `early_stopping` epochs without a better val macro-F1."""
    patience = run.params["early_stopping"]
    return epoch == run.params["epochs"] or bool(patience and epoch - run.best_epoch >= patience)


def save_epoch(run: Run, opt: Optimization, epoch: int, improved: bool, finished: bool) -> None:
    """Rank 0 writes last.pt (and best.pt when improved) and history.csv, each atomically."""
    if run.rank != 0:
        return
    model = opt.evaluated
    state = dict(format=CHECKPOINT_FORMAT, model_config=model.config, model=model.state_dict(),
                 optimizer=opt.optimizer.state_dict(), scheduler=opt.scheduler.state_dict(),
                 scaler=opt.scaler.state_dict() if opt.scaler.is_enabled() else None, epoch=epoch,
                 params=run.params, classes=list(run.data.classes), fingerprint=run.data.fingerprint,
                 targets=run.targets, best_metric=run.best_metric, best_epoch=run.best_epoch, history=run.history,
                 finished=finished, rng=rng_state())
    if opt.ema is not None:
        state.update(train_model=unwrap_model(opt.model).state_dict(), ema_steps=int(opt.ema.n_averaged))
    if improved:
        save_checkpoint(state, run.best_path)
    save_checkpoint(state, run.last_path)
    write_text(run.run_dir / "history.csv", pd.DataFrame(run.history).to_csv(index=False))


def log_epoch(row: dict, epochs: int, improved: bool) -> None:
    log(f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
        f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
        f" bal {row['val_balanced_accuracy']:.3f} F1 {row['val_macro_f1']:.3f}  lr {row['lr']:.2e}"
        + (f"  VA CCC {row['val_valence_ccc']:.3f}/{row['val_arousal_ccc']:.3f}" if "val_valence_ccc" in row else "")
        + f"  {row['epoch_time_s']:.1f} s {row['train_images_per_s']:.0f} img/s" + ("  *" if improved else ""))


def fit(params: dict, data: Dataset | None = None, run_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train `params["model"]` on the 'train' split, validating on 'val' every epoch.

    data: an opened Dataset (default: open_dataset(params)). run_dir: default runs/<run_name>.
    A finished checkpoint in run_dir for the same training params, classes and data is reused (no
    training) unless params["retrain"]; an unfinished one is resumed. resume=True insists on resuming.
    Returns history (DataFrame), best_epoch, best_metrics, best_checkpoint, last_checkpoint, run_dir,
    wall_time_s (this call), train_time_s (all epochs), images_per_s (training) and reused.
    """
    run = prepare_run(params, data, run_dir, resume)
    params = run.params  # cpu_bf16 resolved
    if run.checkpoint is not None and run.checkpoint["finished"]:
        log(f"reusing the finished run in {run.run_dir} (same training params and data; retrain=true to train again)")
        return result(run.checkpoint["history"], run.checkpoint["best_epoch"], run.run_dir, run.started, reused=True)
    arrays = load_arrays(run)
    opt = build_model(run, arrays)
    if run.rank == 0:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_params(params, run.run_dir / "params.yaml")
    to_device(arrays, run)
    log(f"training {params['model']} (width {params['width']}, {count_parameters(opt.model):,} parameters) on "
        f"{len(arrays.y_train)} images, {len(arrays.y_val)} val, {arrays.num_classes} classes, {run.device}"
        + (f" x {run.world} processes" if run.world > 1 else "")
        + (f" under {str(opt.amp_dtype).removeprefix('torch.')} autocast" if opt.amp_dtype is not None else "")
        + f", {params['epochs']} epochs of {opt.steps} steps -> {run.run_dir}"
        + ("; refit: val is trained on, the last epoch is kept" if params["refit"] else ""))
    try:
        for epoch in range(run.start_epoch + 1, params["epochs"] + 1):
            row = fit_one_epoch(run, arrays, opt, epoch)
            for k, value in row.items():
                run.history.setdefault(k, []).append(value)
            improved = params["refit"] or row["val_macro_f1"] > run.best_metric  # refit: val cannot choose
            if improved:
                run.best_metric, run.best_epoch = row["val_macro_f1"], epoch
            finished = should_stop(run, epoch)
            save_epoch(run, opt, epoch, improved, finished)
            log_epoch(row, params["epochs"], improved)
            if finished:
                if epoch < params["epochs"]:
                    log(f"early stopping: no better val macro-F1 for {params['early_stopping']} epochs "
                        f"(best: epoch {run.best_epoch})")
                break
    except TrainingError as err:
        raise TrainingError(f"{err}. The last good checkpoint is kept: {run.last_path}") from None
    except torch.OutOfMemoryError as err:
        bs = params["batch_size"]
        raise TrainingError(f"out of memory on {run.device} with batch_size={bs} ({err}). Use a smaller "
                            f"batch_size, e.g. -p batch_size={max(1, bs // 2)}") from err
    out = result(run.history, run.best_epoch, run.run_dir, run.started, reused=False)
    log(f"best epoch {run.best_epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in out["best_metrics"].items())
        + f"; {out['images_per_s']:.0f} img/s; checkpoints in {run.run_dir}")
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.engine.train",
                                     description=__doc__.split("\n\n")[0])
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
