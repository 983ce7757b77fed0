"""Emotions of the faces in a photo, from a trained checkpoint.

    fer predict IMAGE... [--model NAME | --checkpoint C | --run-dir RUN] [--no-detect] [--max-faces N]
                         [--no-tta | --tta]

prints one JSON line per face:
    {"file": ..., "face": 1, "box": [x, y, w, h], "detected": true, "label": "happy",
     "probabilities": {"neutral": 0.02, "happy": 0.91, ...}, "notes": []}
(with "valence" and "arousal", each in [-1, 1], after "probabilities" when the model has a
valence/arousal head) and, for a file that cannot be read, a line {"file": ..., "error": "..."}; the other files are
still processed and the exit status is 1 at the end. Which checkpoint was used goes to stderr.

Which model: an explicit checkpoint; else the run's best.pt (`run_dir`) when it exists; else a
model bundled with the package (BUNDLED_MODELS: the one named, or the first there is, the 8-class
FER+ model). `load_predictor` says which it took.
Protocol: the one the model's evaluation reported as its headline (flip test-time augmentation or
one pass per face), so users get the numbers the book shows; --no-tta / --tta override it.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..engine import inference
from ..engine.checkpoint import CheckpointError, load_model
from ..paths import WEIGHTS_DIR, display_path
from . import faces as faces_mod
from .faces import ImageError

# The models shipped with the package, the default first: small state_dict checkpoints trained by this
# project's own pipeline on real faces (one card each in the model card chapter). FER+ has AffectNet's 8
# classes, contempt included; FER2013 has 7. A checkout may lack them.
BUNDLED_MODELS = {"ferplus": WEIGHTS_DIR / "ferplus_resnet.pt", "fer2013": WEIGHTS_DIR / "fer2013_resnet.pt"}


REPORTED = ("accuracy", "balanced_accuracy", "macro_f1")  # the report-split scores a description gives


class NoCheckpointError(FileNotFoundError):
    """No checkpoint to predict with: none given, no run checkpoint and no bundled model."""


@dataclass
class Predictor:
    """A model ready for inference, with what it was trained on."""
    model: torch.nn.Module
    checkpoint: dict
    path: Path
    source: str            # "given", "run" or "bundled"
    classes: list[str]
    image_size: int
    channels: int
    device: torch.device
    tta: bool = False      # flip test-time augmentation: the checkpoint's headline protocol unless overridden
    report: dict | None = None  # the evaluation's report-split (test) headline, when recorded

    @property
    def dataset(self) -> str:
        """The training data in words: format, and the data folder's name when there was one."""
        params = self.checkpoint.get("params", {})
        name = str(params.get("dataset", "unknown data"))
        return name + (f" data in `{Path(params['data_dir']).name}`" if params.get("data_dir") else "")

    def describe(self, for_page: bool = False) -> str:
        """One sentence: which checkpoint, and what it is. for_page: the path without this machine's folders
        (a published page must not leak them; the command line shows the full path)."""
        where = {"given": "the checkpoint you gave", "run": "this run's checkpoint",
                 "bundled": "the bundled model"}[self.source]
        cfg = self.checkpoint["model_config"]
        path = display_path(self.path) if for_page else self.path
        text = (f"Using {where}, `{path}`: {cfg['name']} (width {cfg['width']}), trained on "
                f"{self.dataset} ({len(self.classes)} classes: {', '.join(self.classes)}"
                + (", and valence and arousal" if cfg.get("valence_arousal") else "") + "), "
                f"{self.image_size}x{self.image_size} {'grayscale' if self.channels == 1 else 'RGB'} faces; "
                + ("each face averaged with its mirror image (flip TTA)" if self.tta else "one pass per face"))
        best, r = self.best_metrics(), self.report
        if r:  # the number the book reports: held out, under the headline protocol
            other = "" if bool(r.get("tta")) == self.tta else (
                ", scored with flip TTA" if r.get("tta") else ", scored with one pass per face")
            faces = f"{r['n']:,} held-out faces" if "n" in r else "held out"
            text += (f"; on its report split ({faces}{other}): accuracy {r['accuracy']:.1%}, "
                     f"balanced accuracy {r['balanced_accuracy']:.1%}, macro-F1 {r['macro_f1']:.3f}")
        elif best and not self.checkpoint.get("params", {}).get("refit"):  # a refit was trained on val
            text += (f"; validation macro-F1 {best['val_macro_f1']:.3f}, balanced accuracy "
                     f"{best['val_balanced_accuracy']:.1%} (epoch {best['epoch']}, the selection split)")
        return text + "."

    def warning(self) -> str | None:
        """A caution to show with the answers, or None: a model trained on synthetic faces knows
        nothing about real photos."""
        if self.checkpoint.get("params", {}).get("dataset") == "synthetic":
            return ("This model was trained on the project's synthetic cartoon faces, not on photos: its "
                    "answers for a real photo are not meaningful. Build a run on real data (e.g. "
                    "params/fer2013.yaml) or use the bundled model.")
        return None

    def best_metrics(self) -> dict | None:
        """The validation metrics of the checkpoint's best epoch, from its stored history."""
        history, best = self.checkpoint.get("history"), self.checkpoint.get("best_epoch")
        if not history or not best or best not in history.get("epoch", []):
            return None
        i = history["epoch"].index(best)
        return {k: v[i] for k, v in history.items() if k.startswith("val_") or k == "epoch"}


def bundled_checkpoints() -> dict[str, Path]:
    """The bundled models this installation has, by name, the default first."""
    return {name: path for name, path in BUNDLED_MODELS.items() if path.is_file()}


def find_checkpoint(checkpoint=None, run_dir=None, bundled: str | None = None) -> tuple[Path, str]:
    """(path, source): `checkpoint` if given; else run_dir/best.pt if it exists; else the bundled model
    named `bundled`, or the first bundled model there is."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise NoCheckpointError(f"no checkpoint at {path}")
        shipped = {p.resolve() for p in BUNDLED_MODELS.values()}
        return path, "bundled" if path.resolve() in shipped else "given"
    if run_dir is not None and (Path(run_dir) / "best.pt").is_file():
        return Path(run_dir) / "best.pt", "run"
    if bundled is not None:
        if bundled not in BUNDLED_MODELS:
            raise NoCheckpointError(f"no bundled model '{bundled}'; bundled models: {', '.join(BUNDLED_MODELS)}")
        if not BUNDLED_MODELS[bundled].is_file():
            raise NoCheckpointError(f"the bundled model '{bundled}' is not in this installation: "
                                    f"{BUNDLED_MODELS[bundled]}")
        return BUNDLED_MODELS[bundled], "bundled"
    for path in bundled_checkpoints().values():
        return path, "bundled"
    looked = ([f"{Path(run_dir) / 'best.pt'}"] if run_dir is not None else []) + list(map(str, BUNDLED_MODELS.values()))
    raise NoCheckpointError("no model to predict with: looked for " + ", ".join(looked)
                            + ". Train one (make book PARAMS=params/fer2013.yaml) or pass --checkpoint.")


def load_predictor(checkpoint=None, run_dir=None, device: str = "cpu", bundled: str | None = None) -> Predictor:
    """Load a checkpoint for inference (see `find_checkpoint` for which). Raises NoCheckpointError,
    or CheckpointError for a file that is not a usable checkpoint."""

    path, source = find_checkpoint(checkpoint, run_dir, bundled)
    model, ckpt = load_model(path, device)
    cfg = ckpt["model_config"]
    metrics = inference.run_metrics(path)
    report = (metrics if metrics is not None else ckpt.get("metrics") or {}).get("test")
    return Predictor(model=model, checkpoint=ckpt, path=path, source=source, classes=list(ckpt["classes"]),
                     image_size=int(cfg["image_size"]), channels=int(cfg["in_channels"]),
                     device=torch.device(device), tta=inference.headline_tta(ckpt, metrics),
                     report=report if isinstance(report, dict) and set(REPORTED) <= set(report) else None)


@dataclass
class FacePrediction:
    box: tuple[int, int, int, int]    # (x, y, w, h) in the upright photo's pixels
    detected: bool                    # False: the whole image (no face found, or detection off)
    label: str
    probabilities: dict[str, float]   # class -> probability, in the model's class order
    crop: np.ndarray                  # what the model saw: uint8, C x size x size
    valence_arousal: tuple[float, float] | None = None  # in [-1, 1]; None: the model has no such head


@dataclass
class ImagePrediction:
    """The faces of one photo (iterable, largest first) with messages for the user."""
    image: Image.Image
    faces: list[FacePrediction]
    found: int
    messages: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(self.faces)

    def __len__(self):
        return len(self.faces)

    def __getitem__(self, i):
        return self.faces[i]


@contextmanager
def cpu_threads(n: int):
    """Run with `n` torch CPU threads, then restore. A batch of a few 48-96 px faces is far too small to
    share between threads: on a busy CPU two threads spin-wait for each other and one image took 30 ms
    to over 1 s instead of ~7 ms with one thread (benchmarks/predict_latency.py)."""
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.inference_mode()
def classify(predictor: Predictor, image: Image.Image, face_list: list) -> list[FacePrediction]:
    """Class probabilities (and, with a valence/arousal head, valence and arousal) for faces (faces.Face) of
    an RGB image, in one batch, under the predictor's protocol (`predictor.tta`: flip test-time
    augmentation or one pass)."""
    crops, x = faces_mod.model_input(image, face_list, predictor.image_size, predictor.channels)
    predictor.model.eval()
    small = predictor.device.type == "cpu" and len(face_list) * predictor.image_size ** 2 <= 16 * 96 * 96
    with cpu_threads(1 if small else torch.get_num_threads()):
        logits, va = inference.forward(predictor.model, x.to(predictor.device), flip=predictor.tta)
    probs = torch.softmax(logits, dim=1).double().cpu().numpy()
    va = [None] * len(probs) if va is None else [(float(v), float(a)) for v, a in va.double().cpu().numpy()]
    out = []
    for face, crop, p, face_va in zip(face_list, crops, probs, va):
        p = p / p.sum()
        out.append(FacePrediction(box=tuple(int(v) for v in face.box), detected=face.detected,
                                  label=predictor.classes[int(p.argmax())],
                                  probabilities={c: float(v) for c, v in zip(predictor.classes, p)}, crop=crop,
                                  valence_arousal=face_va))
    return out


def predict_image(source, predictor: Predictor | None = None, detect: bool = True,
                  max_faces: int = faces_mod.MAX_FACES, name: str | None = None,
                  max_pixels: int = faces_mod.MAX_PIXELS) -> ImagePrediction:
    """Read a photo (bytes, path, file object or PIL image), find its faces and classify each.

    Raises faces.ImageError for anything that is not a usable image."""
    predictor = predictor or load_predictor()
    if isinstance(source, Image.Image):
        image = faces_mod.to_rgb(source)
    else:
        image = faces_mod.read_image(source, name, max_pixels)
    found = faces_mod.detect_faces(image, detect, max_faces)
    return ImagePrediction(image, classify(predictor, image, found.faces), found.found, found.messages)


def json_lines(file: str, result: ImagePrediction, digits: int = 6) -> list[str]:
    """The CLI's output for one photo: one JSON line per face (valence and arousal only from a model with
    that head)."""
    lines = []
    for i, face in enumerate(result.faces, 1):
        line = dict(file=file, face=i, box=list(face.box), detected=face.detected, label=face.label,
                    probabilities={c: round(p, digits) for c, p in face.probabilities.items()})
        if face.valence_arousal is not None:
            line.update(valence=round(face.valence_arousal[0], digits), arousal=round(face.valence_arousal[1], digits))
        lines.append(json.dumps(dict(line, notes=result.messages)))
    return lines


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1: `--max-faces 0` would classify no face and `-1`
    would silently drop the smallest one, so both are refused with argparse's one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which model and which protocol, shared by the photo and video commands: --model | --checkpoint |
    --run-dir, and --tta | --no-tta (default: the checkpoint's headline protocol)."""
    group = parser.add_mutually_exclusive_group()
    names = list(BUNDLED_MODELS)
    group.add_argument("--model", choices=names, help=f"a bundled model (default: {names[0]}, the 8-class FER+ "
                       "model with AffectNet's labels; fer2013: 7 classes, no contempt)")
    group.add_argument("--checkpoint", help="a checkpoint (.pt) made by the training engine (fer train)")
    group.add_argument("--run-dir", help="use RUN_DIR/best.pt if it exists (else the bundled model)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-tta", dest="tta", action="store_false", default=None,
                       help="one pass per face (default: the protocol the model's evaluation reported)")
    group.add_argument("--tta", dest="tta", action="store_true", default=None,
                       help="average each face with its mirror image (flip test-time augmentation)")


def predictor_from_args(args: argparse.Namespace) -> Predictor | None:
    """The model `add_model_arguments`' options name, under the protocol they ask for; which model and
    protocol (and any caution) go to stderr. None, after printing the error, when there is no usable model."""
    try:
        predictor = load_predictor(args.checkpoint, args.run_dir, bundled=args.model)
    except (NoCheckpointError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    if args.tta is not None:
        predictor.tta = args.tta
    print(predictor.describe().replace("`", ""), file=sys.stderr)
    if predictor.warning():
        print(f"warning: {predictor.warning()}", file=sys.stderr)
    return predictor


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.app.predict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photo files (JPEG, PNG, WebP, ...)")
    parser.add_argument("--no-detect", action="store_true",
                        help="no face detection: each image is already one cropped face")
    parser.add_argument("--max-faces", type=positive_int, default=faces_mod.MAX_FACES,
                        help="classify at most this many faces per photo, largest first "
                             f"(default {faces_mod.MAX_FACES})")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    predictor = predictor_from_args(args)
    if predictor is None:
        return 2
    failed = 0
    for file in args.images:
        try:
            result = predict_image(file, predictor, detect=not args.no_detect, max_faces=args.max_faces, name=file)
        except ImageError as err:
            failed += 1
            print(json.dumps(dict(file=file, error=str(err))), flush=True)
            continue
        for line in json_lines(file, result):
            print(line, flush=True)
    if failed:
        print(f"error: {failed} of {len(args.images)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
