"""Train several runs at once on one machine (on a GPU they share it), then score each as the evaluation does.

    python benchmarks/side_by_side.py params/fer2013.yaml --run gpu-w16 \\
        --run gpu-w64:width=64,epochs=120,batch_size=256 [-p data_dir=...] [--out side_by_side.json]

How the README's GPU numbers were measured in a short lease: each `--run NAME[:KEY=VALUE,...]` is one
`python -m fer_utils.engine.train PARAMS -p run_name=NAME ...` process (`-p` overrides first, then the
run's own), all started together. A small model leaves a large GPU mostly idle, so several share it at
little cost; their times are then upper bounds: run one alone for its own time. Each finished run's best
checkpoint is scored plain and flip on the selection split (val), the report split (test) and, where
duplicates of train were set aside, the original test split (test + test_dup); the headline protocol is
`evaluate.decide_tta`'s choice on val, as in the evaluation chapter. One line per run, split and protocol
is printed (the chosen protocol starred) and everything goes to --out as JSON, beside each run's training
minutes and images per second. A run that fails to train or to score is reported with its log's path and
the others go on; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from fer_utils.analysis import evaluate
from fer_utils.config.params import ParamsError, parse_override, resolve
from fer_utils.data.datasets import DataError, open_dataset
from fer_utils.engine.checkpoint import CheckpointError
from fer_utils.engine.runtime import select_device
from fer_utils.metrics import scores
from fer_utils.paths import run_dir as default_run_dir


def parse_run(text: str) -> tuple[str, list[str]]:
    """'NAME[:KEY=VALUE,...]' -> (NAME, ['KEY=VALUE', ...])."""
    name, _, rest = text.partition(":")
    if not name or "/" in name:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected NAME[:KEY=VALUE,...]")
    return name, [o for o in rest.split(",") if o]


def train_together(params_file: str, runs, common: list[str], log_dir: Path) -> dict[str, int]:
    """Start every run's training process at once; wait for all. Returns {name: exit status}."""
    started = {}
    for name, overrides in runs:
        command = [sys.executable, "-m", "fer_utils.engine.train", params_file, "-p", f"run_name={name}"]
        for override in common + overrides:
            command += ["-p", override]
        log = open(log_dir / f"{name}.log", "w")
        started[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
    codes = {}
    for name, (process, log) in started.items():
        codes[name] = process.wait()
        log.close()
    return codes


def score_run(params: dict) -> dict:
    """The run's best checkpoint scored plain and flip on val, test and test + test_dup; the protocol chosen on
    val; its training minutes and images per second."""
    ds = open_dataset(params)
    device = select_device(params["device"])
    model, ckpt = evaluate.load_for_evaluation(params, default_run_dir(params["run_name"]), ds, device)
    history = ckpt["history"]
    out = dict(best_epoch=int(ckpt["best_epoch"]), train_minutes=sum(history["epoch_time_s"]) / 60,
               images_per_s=sum(history["train_images_per_s"]) / len(history["epoch"]), scores={})
    present = [s for s in ("val", "test", "test_dup") if s in ds.splits]
    frames = {(s, flip): evaluate.predict_split(model, ckpt, ds, s, 512, device, False, flip=flip)[0]
              for s in present for flip in (False, True)}
    out["tta"] = evaluate.decide_tta(frames["val", False], frames["val", True], params["tta_flip"])
    groups = {"val": ["val"], "test": ["test"], "test_original": ["test", "test_dup"]}
    for group, parts in groups.items():
        if not set(parts) <= set(present):
            continue
        for flip in (False, True):
            frame = pd.concat([frames[s, flip] for s in parts], ignore_index=True)
            acc, bal, f1 = scores(frame["true"].to_numpy(), frame["predicted"].to_numpy())
            out["scores"][f"{group} {'flip' if flip else 'plain'}"] = dict(
                n=len(frame), accuracy=acc, balanced_accuracy=bal, macro_f1=f1, chosen=flip == out["tta"]["used"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("params")
    parser.add_argument("--run", dest="runs", action="append", type=parse_run, required=True,
                        metavar="NAME[:KEY=VALUE,...]")
    parser.add_argument("-p", dest="common", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run")
    parser.add_argument("--out", type=Path, default=Path("side_by_side.json"))
    args = parser.parse_args()
    if len({name for name, _ in args.runs}) < len(args.runs):
        parser.error("two --run share a name: each needs its own run folder")
    try:
        resolved = {name: resolve(args.params, dict(parse_override(o) for o in [*args.common, *overrides,
                                                                                f"run_name={name}"]))
                    for name, overrides in args.runs}
    except ParamsError as err:
        parser.error(str(err))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    codes = train_together(args.params, args.runs, args.common, args.out.parent)
    results, failed = {}, 0
    for name, params in resolved.items():
        log = args.out.parent / f"{name}.log"
        if codes[name] != 0:
            failed += 1
            results[name] = dict(error=f"training exited with status {codes[name]}; see {log}")
            print(f"{name}: {results[name]['error']}", flush=True)
            continue
        try:
            results[name] = score_run(params)
        except (CheckpointError, DataError, FileNotFoundError) as err:
            failed += 1
            results[name] = dict(error=f"scoring failed: {err}")
            print(f"{name}: {results[name]['error']}", flush=True)
            continue
        r = results[name]
        print(f"{name}: {r['train_minutes']:.1f} min of training, {r['images_per_s']:,.0f} img/s, "
              f"best epoch {r['best_epoch']}", flush=True)
        for key, s in r["scores"].items():
            print(f"  {key:20s}{'*' if s['chosen'] else ' '} n={s['n']:5d}  accuracy {s['accuracy']:.2%}  "
                  f"balanced {s['balanced_accuracy']:.2%}  macro-F1 {s['macro_f1']:.4f}", flush=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"{len(results) - failed} of {len(results)} runs scored -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
