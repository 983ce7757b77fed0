"""Training throughput: the full training loop vs the model step alone.

    python benchmarks/train_throughput.py [--steps 6] [--repeats 3] [--batch-size 128]
    python benchmarks/train_throughput.py --configs resnet18:0:224:3 --batch-size 32 --steps 7 --num-workers 2
    python benchmarks/train_throughput.py --configs pool_resnet:16:48:1 pool_resnet:24:48:1 --precisions fp32 bf16

"model only": forward + backward + optimiser step on a normalised float batch already in
memory. "loop": fer_utils.engine.train.train_one_epoch on uint8 images in memory: batch gathering,
every augmentation on, normalisation, loss bookkeeping, per-step NaN check, scheduler.
The ratio says what the input pipeline costs (target: loop >= 90% of model only).
`--precisions fp32 bf16` measures each model both ways, alternating: bf16 is the `cpu_bf16` param
(training under bf16 autocast), which pays only on CPUs with native bf16 (AMX, AVX-512 BF16).
With --num-workers N the loop reads the images as large data is read: from a disk-backed .npy
(memory-mapped, as data.images.load_split's cache) through sampling.BatchLoader's N persistent
workers; the timed steps exclude the workers' start, as every epoch after the first does.
Each figure is the best of `repeats` alternating runs: on shared cores the best run is the
one least disturbed by other processes. On a busy machine, `--threads 1 --cpu-time` measures
process CPU time instead of wall time: with one thread it does not count the time slices other
processes take, so the ratio stays meaningful.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import torch
from torch import nn

from fer_utils.engine import optim, sampling, train, transforms
from fer_utils.engine.models import create_model
from fer_utils.config.params import DEFAULTS

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # bf16: autocast, as cpu_bf16 trains
AUGMENT = dict(aug_flip=True, aug_rotate=10.0, aug_crop=0.8, aug_jitter=0.2, aug_blur=0.2, aug_erasing=0.25)


def setup(name: str, width: int, size: int, channels: int, batch_size: int, steps: int, num_classes: int = 7):
    params = dict(DEFAULTS, model=name, width=width, image_size=size, channels=channels, batch_size=batch_size,
                  epochs=1000, **AUGMENT)
    torch.manual_seed(0)
    model = create_model(name, num_classes, channels, size, width).to(memory_format=torch.channels_last)
    optimizer = optim.make_optimizer(model, params)
    scheduler = optim.make_scheduler(optimizer, params, steps)
    return params, model, optimizer, scheduler


def model_only(name, width, size, channels, batch_size, steps, clock=time.perf_counter, amp_dtype=None) -> float:
    params, model, optimizer, scheduler = setup(name, width, size, channels, batch_size, steps)
    x = torch.randn(batch_size, channels, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch_size,))
    criterion = nn.CrossEntropyLoss()
    model.train()
    for step in range(steps + 1):
        if step == 1:  # the first step pays for oneDNN kernel selection
            start = clock()
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return steps * batch_size / (clock() - start)


def full_loop(name, width, size, channels, batch_size, steps, clock=time.perf_counter, num_workers=0,
              amp_dtype=None) -> float:
    params, model, optimizer, scheduler = setup(name, width, size, channels, batch_size, steps)
    n = (steps + 1) * batch_size
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    y = torch.randint(0, 7, (n,))
    batches = sampling.batch_indices(sampling.epoch_order(y.numpy(), 7, params, epoch=1), batch_size)
    criterion = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        if num_workers:  # as large data: a memory-mapped file, batches gathered by persistent workers
            path = Path(tmp) / "x.npy"
            np.save(path, x.numpy())
            x, y = sampling.BatchLoader(np.load(path, mmap_mode="c"), y.numpy(), num_workers, device), None

        def epoch(part, steps_):
            return train.train_one_epoch(model, optimizer, scheduler, criterion,
                                         sampling.iterate_batches(x, y, part, device, num_workers), params, 1,
                                         device, steps_, amp_dtype=amp_dtype)
        epoch(batches[:1], 1)  # warm-up step outside the timing, as for model_only (and the workers' start)
        start = clock()
        stats = epoch(batches[1:], steps)
        return stats["seen"] / (clock() - start)


def pipeline_only(size, channels, batch_size, steps, clock=time.perf_counter) -> float:
    """Batch gathering (in memory) + augmentation + normalisation alone (what the loop adds to the model step)."""
    params = dict(DEFAULTS, **AUGMENT)
    n = (steps + 1) * batch_size
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    y = torch.randint(0, 7, (n,))
    batches = sampling.batch_indices(sampling.epoch_order(y.numpy(), 7, params, epoch=1), batch_size)
    g = torch.Generator().manual_seed(0)
    start = clock()
    for xb, _ in sampling.iterate_batches(x, y, batches, torch.device("cpu")):
        transforms.prepare_batch(xb, params, g)
    return n / (clock() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    parser.add_argument("--configs", nargs="+", default=["baseline_cnn:16:48:1", "baseline_cnn:16:96:1",
                                                          "resnet:16:48:1", "resnet:16:96:1"],
                        help="models as name:width:size:channels (default: the small-face models)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="training precisions to compare (bf16 = the cpu_bf16 param)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="0: images in memory; N: from a memory-mapped file through N DataLoader workers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    configs = [(name, int(width), int(size), int(channels))
               for name, width, size, channels in (c.split(":") for c in args.configs)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps x best of {args.repeats}, {'CPU' if args.cpu_time else 'wall'} time, "
          + (f"loop from a memory map through {args.num_workers} workers" if args.num_workers else "loop in memory")
          + f"; augmentations: {AUGMENT}")
    print(f"{'model':<14}{'width':>6}{'size':>6}{'ch':>4}{'prec':>6}{'model only img/s':>18}{'loop img/s':>12}"
          f"{'loop/model':>12}{'pipeline only img/s':>21}")
    for name, width, size, channels in configs:
        alone, loop = dict.fromkeys(args.precisions, 0.0), dict.fromkeys(args.precisions, 0.0)
        pipeline = 0.0
        for _ in range(args.repeats):
            for precision in args.precisions:  # alternating, so both see the same machine
                dtype = PRECISIONS[precision]
                alone[precision] = max(alone[precision], model_only(name, width, size, channels, args.batch_size,
                                                                    args.steps, clock, dtype))
                loop[precision] = max(loop[precision], full_loop(name, width, size, channels, args.batch_size,
                                                                 args.steps, clock, args.num_workers, dtype))
            pipeline = max(pipeline, pipeline_only(size, channels, args.batch_size, args.steps, clock))
        for precision in args.precisions:
            print(f"{name:<14}{width:>6}{size:>6}{channels:>4}{precision:>6}{alone[precision]:>18.1f}"
                  f"{loop[precision]:>12.1f}{loop[precision] / alone[precision]:>12.1%}{pipeline:>21.0f}", flush=True)


if __name__ == "__main__":
    main()
