"""What an ensemble of finished runs would score: the ceiling of distilling them into one model.

    python benchmarks/ensemble.py runs/fer2013 runs/fer2013-script [runs/...]

Averages the class probabilities each run's evaluation wrote (predictions_<split>.csv, each under the
protocol its selection split chose) over every combination of two or more of the runs, and prints
accuracy, balanced accuracy and macro-F1 on the selection split (val) and the report split (test),
beside each run alone. The combination to keep is chosen on val; test is read after. Costs nothing
to measure (no forward pass), and answers whether distillation from an ensemble of the project's own
models could reach a target before anyone trains a student (`fer train ... -p teachers=runs/a,runs/b`,
`fer_utils.engine.targets`). The runs must have been scored on the same images (same data, seed and
selection_fraction).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from fer_utils.analysis.evaluate import load_predictions, prob_columns
from fer_utils.engine.checkpoint import load_checkpoint
from fer_utils.metrics import scores

SPLITS = ("val", "test")


def probabilities(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(true labels, probabilities N x classes, class names) of a run's split, sorted by location."""
    frame = load_predictions(run_dir, split).sort_values("location", ignore_index=True)
    classes = load_checkpoint(run_dir / "best.pt")["classes"]
    return frame["true"].to_numpy(), prob_columns(frame, classes), list(classes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated run folders (at least 2)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("an ensemble needs at least 2 runs")
    data = {split: [probabilities(r, split) for r in args.runs] for split in SPLITS}
    for split, per_run in data.items():
        true, _, classes = per_run[0]
        for run, (t, _, c) in zip(args.runs, per_run):
            if c != classes or not np.array_equal(t, true):
                print(f"{run} was not scored on the same {split} images or classes as {args.runs[0]}",
                      file=sys.stderr)
                return 1
    rows = []
    for k in range(1, len(args.runs) + 1):
        for combo in itertools.combinations(range(len(args.runs)), k):
            row = {"runs": " + ".join(args.runs[i].name for i in combo)}
            for split, per_run in data.items():
                true, _, classes = per_run[0]
                predicted = np.asarray(classes)[sum(per_run[i][1] for i in combo).argmax(1)]
                row[split] = scores(true, predicted)
            rows.append(row)
    print(f"{'runs (probabilities averaged)':60s} {'val acc / bal / F1':>22s}   {'test acc / bal / F1':>22s}")
    for r in rows:
        print(f"{r['runs']:60s} " + "   ".join(f"{a:6.1%} {b:6.1%} {f:.3f}" for a, b, f in (r["val"], r["test"])))
    best = max((r for r in rows if " + " in r["runs"]), key=lambda r: r["val"][2])
    alone = max((r for r in rows if " + " not in r["runs"]), key=lambda r: r["val"][2])
    print(f"chosen on val (macro-F1): {best['runs']}; on test {best['test'][0]:.1%} accuracy, macro-F1 "
          f"{best['test'][2]:.3f}, against the best run alone on val ({alone['runs']}): {alone['test'][0]:.1%}, "
          f"{alone['test'][2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
