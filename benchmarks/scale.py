"""Scale: decoding, the decoded cache and training at N images, with peak memory per phase.

    python benchmarks/scale.py --n 5000 --size 224            # generates N synthetic images first
    python benchmarks/scale.py --n 5000 --repeat 10 --size 224  # 50,000: those 5,000 ten times (hard links)
    python benchmarks/scale.py --data DIR --size 224          # an AffectNet-mini layout folder

Prints, per phase: synthetic generation images/s (when it generates); opening the dataset:
the anonymous memory it adds and the manifest's bytes per image (datasets.manifest_bytes);
a cold decode of the train split into the disk-backed cache (data.images.load_split):
images/s, cache size on disk, peak anonymous memory and peak RSS; then a few training steps
of `--model` on the cache through sampling.BatchLoader (`--num-workers` workers): images/s
and the same peaks, and the loader alone on the same batches (the images/s it could feed a
faster device). Each phase runs in a child process of its own, so its peaks are its own: peak RSS is the
kernel's high-water mark (VmHWM); peak anonymous memory is RssAnon, which the kernel keeps
no peak of, sampled every 5 ms by a thread (a shorter spike can be missed). Anonymous
memory is what the process itself holds; the cache's pages are page cache, which the
kernel drops and re-reads as needed, and show in RSS only while mapped. The training
peaks are the main process's (the workers are processes of their own).
The claim checked: the decode phase's peak anonymous memory does not grow with N (issue 15:
at 50,000 images within 20% of the peak at 5,000), the opened dataset included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PHASES = ("decode", "train")


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (Linux), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


class PeakAnon:
    """Samples RssAnon in a thread while the block runs; .peak is the highest value seen (MiB)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak, self._stop = every_s, status_mib("RssAnon"), threading.Event()

    def _run(self):
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, status_mib("RssAnon"))

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_mib("RssAnon"))


def repeat_train_split(data: Path, times: int) -> Path:
    """`data`'s train split `times` over under new names, as hard links (images and annotations), in a
    sibling folder: N x times images to decode, each decoded in full, without generating them (generation
    runs at a few tens of images/s at 224 px). Identical pixels change nothing the benchmark measures."""
    out = data.with_name(f"{data.name}-x{times}")
    done = out / "complete"
    if done.is_file():
        return out
    source = data / "train_set"
    for sub in ("images", "annotations"):
        (out / "train_set" / sub).mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(source / sub)):
            for k in range(times):
                target = out / "train_set" / sub / f"r{k}-{name}"
                if not target.exists():
                    os.link(source / sub / name, target)
    done.touch()
    return out


def open_data(args):
    from fer_utils.data.datasets import fingerprint, read_affectnet_mini
    ds = read_affectnet_mini(Path(args.data))
    ds.fingerprint = fingerprint(ds)
    return ds


def decode_phase(args) -> dict:
    """A cold decode of the train split into a fresh cache under --work."""
    from fer_utils.data import images
    from fer_utils.data.datasets import manifest_bytes
    images.CACHE_DIR = Path(args.work) / "decoded"
    unopened = status_mib("RssAnon")
    ds = open_data(args)
    for old in images.CACHE_DIR.glob(f"{ds.fingerprint}-train-{args.size}-3.*"):
        old.unlink()  # a cold decode every time
    before = status_mib("RssAnon")
    with PeakAnon() as anon:
        start = time.perf_counter()
        x, y, _ = images.load_split(ds, "train", args.size, 3)
        seconds = time.perf_counter() - start
    files = list(images.CACHE_DIR.glob(f"{ds.fingerprint}-train-{args.size}-3.*"))
    return dict(images=len(y), skipped=len(ds.skipped), open_anon_mib=before - unopened,
                manifest_bytes_per_image=manifest_bytes(ds.frame) / len(ds.frame),
                decode_s=seconds, decode_images_per_s=len(y) / seconds,
                cache_gib=sum(f.stat().st_blocks * 512 for f in files) / 2**30,
                anon_before_mib=before, anon_peak_mib=anon.peak, rss_peak_mib=status_mib("VmHWM"))


def train_phase(args) -> dict:
    """--steps timed training steps (after one warm-up step) on the cache, through the DataLoader path."""
    import numpy as np
    import torch
    from torch import nn

    from fer_utils.data import images
    from fer_utils.engine import sampling, train
    from train_throughput import setup
    images.CACHE_DIR = Path(args.work) / "decoded"
    ds = open_data(args)
    x, y, _ = images.load_split(ds, "train", args.size, 3)  # the cache the decode phase built
    before = status_mib("RssAnon")
    with PeakAnon() as anon:
        params, model, optimizer, scheduler = setup(args.model, 16, args.size, 3, args.batch_size, args.steps,
                                                    len(ds.classes))
        order = sampling.epoch_order(y, len(ds.classes), params, epoch=1)
        batches = sampling.batch_indices(order, args.batch_size)[:args.steps + 1]
        device = torch.device("cpu")
        loader = sampling.BatchLoader(x, y, args.num_workers, device)

        def steps(part):
            return train.train_one_epoch(model, optimizer, scheduler, nn.CrossEntropyLoss(),
                                         sampling.iterate_batches(loader, None, part, device, args.num_workers),
                                         params, 1, device, len(part))
        steps(batches[:1])  # warm-up: kernel selection, the workers' start
        start = time.perf_counter()
        seen = steps(batches[1:])["seen"]
        seconds = time.perf_counter() - start
        start = time.perf_counter()  # the same batches again, without the model: what the loader can feed
        for _ in loader.epoch(batches[1:]):
            pass
        loader_seconds = time.perf_counter() - start
    return dict(train_images_per_s=seen / seconds, loader_images_per_s=seen / loader_seconds,
                train_steps=len(batches) - 1, threads=torch.get_num_threads(),
                anon_before_mib=before, anon_peak_mib=anon.peak, rss_peak_mib=status_mib("VmHWM"),
                x_is_memmap=isinstance(x, np.memmap))


def run_phase(phase: str, args) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--data", args.data, "--work", args.work,
           "--size", str(args.size), "--model", args.model, "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--num-workers", str(args.num_workers)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--n", type=int, help="generate this many synthetic train images (AffectNet-mini layout)")
    source.add_argument("--data", help="an AffectNet-mini layout folder (train_set/images, annotations)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --n: decode the generated train split this many times over (hard links)")
    parser.add_argument("--size", type=int, default=224, help="image side for generation and decoding")
    parser.add_argument("--work", default="/tmp/fer-scale", help="generated data and the decoded cache go here")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # the child process's phase
    args = parser.parse_args()
    if args.repeat < 1 or (args.repeat > 1 and not args.n):
        parser.error("--repeat takes a count >= 1, with --n")
    if args.phase:
        print(json.dumps(dict(decode=decode_phase, train=train_phase)[args.phase](args)))
        return
    report = dict(size=args.size)
    if args.n:
        from fer_utils.data import synthetic
        args.data = str(Path(args.work) / f"synthetic-n{args.n}-s{args.size}")
        complete = (Path(args.data) / synthetic.META_FILE).is_file()
        start = time.perf_counter()
        synthetic.generate(args.data, n_train=args.n, n_val=0, n_test=0, size=args.size, seed=0)
        report["generate"] = ("already there" if complete
                              else f"{args.n / (time.perf_counter() - start):.1f} images/s")
        if args.repeat > 1:
            args.data = str(repeat_train_split(Path(args.data), args.repeat))
            report["repeat"] = args.repeat
    for phase in PHASES:
        report[phase] = run_phase(phase, args)
        print(f"{phase}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in report[phase].items()), flush=True)
    d, t = report["decode"], report["train"]
    print(f"N {d['images']:,} at {args.size} px: opening the dataset +{d['open_anon_mib']:.1f} MiB anonymous "
          f"memory, manifest {d['manifest_bytes_per_image']:.0f} bytes/image; decode "
          f"{d['decode_images_per_s']:.0f} images/s, cache "
          f"{d['cache_gib']:.2f} GiB on disk, decode peak anonymous memory {d['anon_peak_mib']:.0f} MiB "
          f"(+{d['anon_peak_mib'] - d['anon_before_mib']:.0f} MiB over the opened dataset), peak RSS "
          f"{d['rss_peak_mib']:.0f} MiB; training {t['train_images_per_s']:.1f} images/s ({args.model}, batch "
          f"{args.batch_size}, {args.num_workers} workers, peak anonymous memory {t['anon_peak_mib']:.0f} MiB); "
          f"the loader alone {t['loader_images_per_s']:.0f} images/s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
