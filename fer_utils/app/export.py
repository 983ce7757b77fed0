"""Export a run's checkpoint for shipping: the weights and what describes them, nothing machine-specific.

    fer export runs/ferplus --model ferplus      # replaces the bundled model of that name
    fer export runs/x --out x.pt

The exported file keeps what predicting and the model card need (model config and weights, classes,
params, history, best epoch, data fingerprint) plus the evaluation chapter's validation scores and the
run's provenance. It drops the optimiser, scheduler and RNG states (only resuming needs them: they would
triple the size) and this machine's paths.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..analysis import evaluate
from ..engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .predict import BUNDLED_MODELS

KEEP = ("format", "model_config", "model", "classes", "params", "history", "epoch", "best_epoch", "best_metric",
        "fingerprint")
PROVENANCE = ("run_name", "dataset", "data_fingerprint", "images", "git_commit", "device", "python", "packages")


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """runs/<run>/best.pt (+ metrics.json, predictions_val.csv, provenance.json) -> one small checkpoint."""
    run_dir, out = Path(run_dir), Path(out)
    last = load_checkpoint(run_dir / "last.pt")
    if not last.get("finished"):
        raise CheckpointError(f"{run_dir} has not finished training (epoch {last['epoch']} of "
                                    f"{last['params']['epochs']}); export it when it has")
    ckpt = load_checkpoint(run_dir / "best.pt")
    state = {k: ckpt[k] for k in KEEP}
    state["model"] = {k: v.contiguous() for k, v in ckpt["model"].items()}
    state["params"] = {**ckpt["params"], "data_dir": None,
                       "params_file": Path(ckpt["params"].get("params_file") or "").name or None}
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        scored = Path(metrics.get("checkpoint", {}).get("path", "")).name
        if scored != "best.pt" or metrics["checkpoint"].get("epoch") != ckpt["epoch"]:
            raise CheckpointError(f"{metrics_file} scores another checkpoint ({scored}, epoch "
                                        f"{metrics.get('checkpoint', {}).get('epoch')}); re-run the evaluation "
                                        "chapter before exporting")
        metrics.pop("checkpoint")
        for split in metrics:
            frame = evaluate.load_predictions(run_dir, split)
            table = evaluate.per_class_table(frame["true"], frame["predicted"], ckpt["classes"])
            metrics[split]["f1_per_class"] = {row.emotion: float(row.f1) for row in table.itertuples()
                                              if row.f1 == row.f1}  # NaN: class neither present nor predicted
        state["metrics"] = metrics
    provenance_file = run_dir / "provenance.json"
    if provenance_file.is_file():
        provenance = json.loads(provenance_file.read_text())
        state["provenance"] = {k: provenance[k] for k in PROVENANCE if k in provenance}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, out)
    return out


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.app.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished, evaluated run folder, e.g. runs/fer2013")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", choices=list(BUNDLED_MODELS), help="replace this bundled model")
    where.add_argument("--out", help="write the exported checkpoint here")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run_dir, BUNDLED_MODELS[args.model] if args.model else args.out)
    except (CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
