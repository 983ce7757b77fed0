"""The ablation's training on the CPU: in turn (one process, torch's threads) vs side by side (fit_jobs' workers).

    python benchmarks/ablation_workers.py [params/default.yaml] [-p key=value ...] [--workers N]
    python benchmarks/ablation_workers.py -p ablation=baseline,regularized -p ablation_epochs=2
    python benchmarks/ablation_workers.py --orders      # side by side: ladder order vs costliest first

Trains the run's ablation jobs (each `ablation` rung with each of `ablation_seeds` seeds, for
`ablation_epochs`) twice from scratch into two temporary folders: first one after another in
this process with torch's default threads (how the CPU trained them before the workers), then
through analysis.ablation.fit_jobs with `--workers` one-thread worker processes (default: one
per core, as ablation.run uses). With --orders, twice side by side instead: the jobs handed out
in the ladder's order, then costliest first (as ablation.run does). Prints both wall times and
their ratio. The data set and its decoded-image cache are built before either clock starts,
so both time training only (the workers' start, torch's import included, counts against them).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from fer_utils.analysis import ablation
from fer_utils.config.ladder import variant_names, variant_params, variant_seeds
from fer_utils.config.params import parse_override, resolve
from fer_utils.data.datasets import open_dataset
from fer_utils.data.images import load_split
from fer_utils.machine import usable_cores
from fer_utils.paths import PARAMS_DIR


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="?", default=PARAMS_DIR / "default.yaml")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--orders", action="store_true",
                        help="compare the order the workers get the jobs instead: the ladder's vs costliest first")
    args = parser.parse_args()
    params = resolve(args.params, dict(parse_override(p) for p in args.param))
    ds = open_dataset(params)
    for split in ("train", "val"):
        load_split(ds, split, params["image_size"], params["channels"])
    rungs = [(name, seed) for name in variant_names(params) for seed in variant_seeds(params)]
    n, workers = len(rungs), min(args.workers, len(rungs))
    ways = ([(f"side by side, ladder order, {workers} processes x 1 thread", args.workers, list(range(n))),
             (f"side by side, costliest first, {workers} processes x 1 thread", args.workers, None)] if args.orders
            else [(f"in turn, 1 process x {torch.get_num_threads()} threads", 0, None),
                  (f"side by side, {workers} processes x 1 thread", args.workers, None)])
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (how, w, order) in enumerate(ways):
            jobs = [ablation.Job(name, seed, variant_params(params, name, seed),
                                 Path(tmp) / str(i) / name / f"seed{seed}") for name, seed in rungs]
            start = time.perf_counter()
            fits = ablation.fit_jobs(jobs, ds, w, order)
            seconds[how] = time.perf_counter() - start
            failed = [str(fit) for fit in fits if not isinstance(fit, dict)]
            assert not failed, failed
    print(f"{n} jobs ({params['ablation']}; {len(variant_seeds(params))} seed(s), "
          f"{params['ablation_epochs'] or params['epochs']} epochs each) on {len(ds.split('train')):,} images, "
          f"{os.cpu_count()} cores")
    for how, s in seconds.items():
        print(f"{how}: {s:.1f} s")
    first, second = seconds.values()
    print(f"speed-up: {first / second:.2f}x")


if __name__ == "__main__":
    main()
