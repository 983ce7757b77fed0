"""Spread: how much the default run's numbers move between machines, and between seeds.

    python benchmarks/spread.py [--params params/default.yaml] [--out /tmp/fer-spread]

A CPU run is bit-reproducible on one machine (fixed seeds, one thread count), but a fresh
clone on another machine may train differently: the number of intra-op threads (torch's
default is the machine's core count) changes the order of floating-point sums in
reductions, and the instruction set (oneDNN's and ATen's AVX2 vs AVX-512 kernels) changes
them too. A difference in the last bit grows over thousands of steps into another model.

This trains the params once per setting, each in its own process:
- the same seed under different "machines": thread counts and instruction sets capped with
  ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY (an instruction set the CPU lacks is simply not
  used: check the printed `isa` column against the CPU);
- other seeds (which also draw other synthetic data) on this machine's settings;
then evaluates each run as the book does (`analysis.evaluate.run`) and prints, per run,
whether its weights equal the first run's, its report-split (test) headline scores, and for
each group the mean, standard deviation and range. `spread.json` in --out keeps it all.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from fer_utils.analysis import evaluate
from fer_utils.config.params import resolve
from fer_utils.data.datasets import open_dataset
from fer_utils.paths import REPO_ROOT, write_text

# (name, threads, instruction-set cap or None, seed offset): the "machines" share seed offset 0.
SETTINGS = (("2 threads", 2, None, 0), ("1 thread", 1, None, 0), ("4 threads", 4, None, 0),
            ("2 threads, AVX2 kernels", 2, "avx2", 0), ("seed + 1", 2, None, 1), ("seed + 2", 2, None, 2))


def train(params_file: str, out: Path, threads: int, isa: str | None, seed: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if isa:
        env.update(ONEDNN_MAX_CPU_ISA=isa.upper(), ATEN_CPU_CAPABILITY=isa)
    subprocess.run([sys.executable, "-m", "fer_utils", "train", params_file, "-p", f"seed={seed}", "-p",
                    "device=cpu", "--out", str(out)], env=env, check=True, cwd=REPO_ROOT)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def spread(values: list[float]) -> dict:
    return dict(mean=statistics.fmean(values), sd=statistics.stdev(values) if len(values) > 1 else 0.0,
                low=min(values), high=max(values), n=len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--out", default="/tmp/fer-spread", help="run folders and spread.json")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for name, threads, isa, offset in SETTINGS:
        params = resolve(args.params)
        params = resolve(args.params, dict(seed=params["seed"] + offset, device="cpu"))
        run_dir = out / name.replace(" ", "_").replace(",", "").replace("+", "plus")
        train(args.params, run_dir, threads, isa, params["seed"])
        metrics = evaluate.run(params, open_dataset(params), run_dir, "cpu")["summaries"][0]
        rows.append(dict(setting=name, threads=threads, isa=isa or "machine's best", seed=params["seed"],
                         same_weights_as_first=same_weights(out / rows[0]["dir"] / "best.pt", run_dir / "best.pt")
                         if rows else True, dir=run_dir.name, split=metrics["split"],
                         tta=metrics.get("tta", False), accuracy=metrics["accuracy"],
                         balanced_accuracy=metrics["balanced_accuracy"], macro_f1=metrics["macro_f1"]))
        r = rows[-1]
        print(f"{name:26s} seed {r['seed']}  same weights as first: {str(r['same_weights_as_first']):5s}  "
              f"{r['split']}: acc {r['accuracy']:.1%}  bal acc {r['balanced_accuracy']:.1%}  "
              f"macro-F1 {r['macro_f1']:.3f}", flush=True)
    groups = {"same seed, other machine settings": [r for r in rows if r["seed"] == rows[0]["seed"]],
              "all runs (machines and seeds)": rows}
    summary = {g: {k: spread([r[k] for r in rs]) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
               for g, rs in groups.items()}
    for g, s in summary.items():
        print(f"{g}: " + "; ".join(f"{k} mean {v['mean']:.4f} sd {v['sd']:.4f} range {v['low']:.4f}-{v['high']:.4f}"
                                   f" (n={v['n']})" for k, v in s.items()))
    write_text(out / "spread.json", json.dumps(dict(params=args.params, torch=torch.__version__,
                                                    cpu_capability=torch.backends.cpu.get_cpu_capability(),
                                                    runs=rows, summary=summary), indent=2))


if __name__ == "__main__":
    main()
