"""Test-time augmentation: what more views per face buy a finished run, on the selection and report splits.

    python benchmarks/tta.py params/fer2013.yaml [-p run_name=fer2013] [--crops 44 42 40]

Scores the run's evaluated checkpoint (analysis.evaluate.load_for_evaluation) with one pass per face
("plain"), with the mirror image ("flip", the protocol `fer predict` can use) and with ten-crop for each
crop side c in --crops: the four corner and the centre c x c crops, each resized back to the model's side,
and their mirrors, beside the whole face and its mirror (12 views). Logits are averaged, as
`engine.inference.forward` does for flip. A protocol is chosen on val (the selection split) and only then
read on test (the report split), so the printed verdict follows the validity protocol; the cost column is
forward passes per face.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from fer_utils.analysis import evaluate
from fer_utils.config.params import parse_override, resolve
from fer_utils.data.datasets import open_dataset
from fer_utils.data.images import load_split
from fer_utils.engine.inference import forward
from fer_utils.engine.transforms import prepare_batch
from fer_utils.metrics import scores
from fer_utils.paths import run_dir as default_run_dir


def crops(x: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """The four corner and the centre `crop` x `crop` crops of a batch, each resized back to its side."""
    side, o = x.shape[-1], x.shape[-1] - crop
    return [F.interpolate(x[..., i:i + crop, j:j + crop], size=(side, side), mode="bilinear", align_corners=False)
            for i, j in ((0, 0), (0, o), (o, 0), (o, o), (o // 2, o // 2))]


@torch.no_grad()
def predictions(model, x: np.ndarray, protocol: str, batch_size: int = 512) -> np.ndarray:
    """Predicted classes under `protocol`: plain, flip, or tencrop<side> (each view with its mirror, by
    `engine.inference.forward`)."""
    crop = int(protocol.removeprefix("tencrop")) if protocol.startswith("tencrop") else None
    preds = []
    for start in range(0, len(x), batch_size):
        xb = prepare_batch(torch.from_numpy(np.asarray(x[start:start + batch_size])))
        views = [xb] + (crops(xb, crop) if crop else [])
        preds.append(sum(forward(model, v, flip=protocol != "plain")[0] for v in views).argmax(1))
    return torch.cat(preds).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("params")
    parser.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--crops", type=int, nargs="*", default=[44, 42, 40], help="ten-crop sides (px)")
    args = parser.parse_args()
    params = resolve(args.params, dict(parse_override(o) for o in args.overrides))
    ds = open_dataset(params)
    model, ckpt = evaluate.load_for_evaluation(params, default_run_dir(params["run_name"]), ds)
    side = ckpt["model_config"]["image_size"]
    if any(not 0 < c < side for c in args.crops):
        parser.error(f"--crops must be between 1 and {side - 1} px (the model's side is {side})")
    protocols = [("plain", 1), ("flip", 2)] + [(f"tencrop{c}", 12) for c in args.crops]
    table = {}
    for split in ("val", "test"):
        x, y, _ = load_split(ds, split, side, ckpt["model_config"]["in_channels"])
        for name, passes in protocols:
            table[split, name] = scores(np.asarray(y), predictions(model, x, name))
            acc, bal, f1 = table[split, name]
            print(f"{split:4s} {name:10s} {passes:2d} passes  accuracy {acc:.2%}  balanced {bal:.2%}  "
                  f"macro-F1 {f1:.4f}", flush=True)
    chosen = max((name for name, _ in protocols), key=lambda name: table["val", name][2])
    print(f"chosen on val by macro-F1: {chosen}; on test it scores accuracy {table['test', chosen][0]:.2%}, "
          f"macro-F1 {table['test', chosen][2]:.4f} (flip: {table['test', 'flip'][0]:.2%}, "
          f"{table['test', 'flip'][2]:.4f})")


if __name__ == "__main__":
    main()
