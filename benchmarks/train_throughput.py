"""Training throughput: the full training loop vs the model step alone.

    python benchmarks/train_throughput.py [--steps 6] [--repeats 3] [--batch-size 128]

"model only": forward + backward + optimiser step on a normalised float batch already in
memory. "loop": fer_utils.engine.train.train_one_epoch on uint8 images in memory: batch gathering,
every augmentation on, normalisation, loss bookkeeping, per-step NaN check, scheduler.
The ratio says what the input pipeline costs (target: loop >= 90% of model only).
Each figure is the best of `repeats` alternating runs: on shared cores the best run is the
one least disturbed by other processes. On a busy machine, `--threads 1 --cpu-time` measures
process CPU time instead of wall time: with one thread it does not count the time slices other
processes take, so the ratio stays meaningful.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from fer_utils.engine import optim, sampling, train, transforms
from fer_utils.engine.models import create_model
from fer_utils.config.params import DEFAULTS

AUGMENT = dict(aug_flip=True, aug_rotate=10.0, aug_crop=0.8, aug_jitter=0.2, aug_blur=0.2, aug_erasing=0.25)


def setup(name: str, width: int, size: int, batch_size: int, steps: int):
    params = dict(DEFAULTS, model=name, width=width, image_size=size, batch_size=batch_size, epochs=1000, **AUGMENT)
    torch.manual_seed(0)
    model = create_model(name, 7, 1, size, width).to(memory_format=torch.channels_last)
    optimizer = optim.make_optimizer(model, params)
    scheduler = optim.make_scheduler(optimizer, params, steps)
    return params, model, optimizer, scheduler


def model_only(name, width, size, batch_size, steps, clock=time.perf_counter) -> float:
    params, model, optimizer, scheduler = setup(name, width, size, batch_size, steps)
    x = torch.randn(batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch_size,))
    criterion = nn.CrossEntropyLoss()
    model.train()
    for step in range(steps + 1):
        if step == 1:  # the first step pays for oneDNN kernel selection
            start = clock()
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return steps * batch_size / (clock() - start)


def full_loop(name, width, size, batch_size, steps, clock=time.perf_counter) -> float:
    params, model, optimizer, scheduler = setup(name, width, size, batch_size, steps)
    n = (steps + 1) * batch_size
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8)
    y = torch.randint(0, 7, (n,))
    batches = sampling.batch_indices(sampling.epoch_order(y.numpy(), 7, params, epoch=1), batch_size)
    criterion = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    # warm-up step outside the timing, as for model_only
    train.train_one_epoch(model, optimizer, scheduler, criterion, sampling.iterate_batches(x, y, batches[:1], device),
                          params, 1, device, 1)
    start = clock()
    stats = train.train_one_epoch(model, optimizer, scheduler, criterion,
                                  sampling.iterate_batches(x, y, batches[1:], device), params, 1, device, steps)
    return stats["seen"] / (clock() - start)


def pipeline_only(size, batch_size, steps, clock=time.perf_counter) -> float:
    """Batch gathering + augmentation + normalisation alone (what the loop adds to the model step)."""
    params = dict(DEFAULTS, **AUGMENT)
    n = (steps + 1) * batch_size
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    configs = [("baseline_cnn", 16, 48), ("baseline_cnn", 16, 96), ("resnet", 16, 48), ("resnet", 16, 96)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps x best of {args.repeats}, {'CPU' if args.cpu_time else 'wall'} time; augmentations: {AUGMENT}")
    print(f"{'model':<14}{'width':>6}{'size':>6}{'model only img/s':>18}{'loop img/s':>12}{'loop/model':>12}"
          f"{'pipeline only img/s':>21}")
    for name, width, size in configs:
        alone = loop = pipeline = 0.0
        for _ in range(args.repeats):
            alone = max(alone, model_only(name, width, size, args.batch_size, args.steps, clock))
            loop = max(loop, full_loop(name, width, size, args.batch_size, args.steps, clock))
            pipeline = max(pipeline, pipeline_only(size, args.batch_size, args.steps, clock))
        print(f"{name:<14}{width:>6}{size:>6}{alone:>18.0f}{loop:>12.0f}{loop / alone:>12.1%}{pipeline:>21.0f}",
              flush=True)


if __name__ == "__main__":
    main()
