"""What the loss compares each training face with, when that is not its single label: a distribution.

Two sources, both mixed with the face's own label (one-hot) by a share param:
- crowd votes (`soft_labels`, `vote_share`): FER+'s votes for the face (`datasets.vote_shares`);
- teachers (`teachers`, `teacher_share`): distillation from an ensemble of finished runs of this project.
  The teachers are the checkpoints of earlier runs on the same data and the same carve-out (the data
  fingerprint, which includes each face's role, must match), none of them refit: their selection split is
  this run's, so a teacher that had trained on it would leak val into the student's targets, and into
  every choice made there. Each teacher scores the unaugmented training faces as its evaluation scored the
  report split (`inference.headline_tta`: flip TTA or one pass), in the precision the run trains in
  (cpu_bf16: 2.6x the images per second of fp32 on this project's CPU); the ensemble's probabilities are
  the mean. The targets are fixed before the first epoch (offline distillation): one pass of each teacher
  over the training faces rather than one per augmented batch, which on a CPU would cost more than the
  student. Which teachers (their sha256) and under which protocol are written to the run folder
  (TEACHERS_FILE).

Neither source is in the params' values or the data fingerprint: the params name the teachers by path and
the votes not at all, and a path can hold other weights, or a vote file other votes, since. `source_digest`
is what a run's targets were made from; its checkpoint records it, and a run is reused or resumed (and the
book's chapters served from cache) only while it is the same.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..data.datasets import DataError, Dataset, vote_shares
from ..paths import write_text
from .checkpoint import CheckpointError, load_model
from .inference import headline_tta, predict, run_metrics
from .runtime import log

TEACHERS_FILE = "teachers.json"


def mix(distribution: np.ndarray, y: np.ndarray, share: float | np.ndarray) -> np.ndarray:
    """`share` of each row of `distribution` (N x classes, rows summing to 1) plus 1 - `share` of the
    one-hot label `y`, as float32. share: one for all rows, or one per row (N x 1)."""
    onehot = np.eye(distribution.shape[1], dtype=np.float64)[y]
    return (share * distribution + (1.0 - share) * onehot).astype(np.float32)


def vote_targets(data: Dataset, locations, y: np.ndarray, share: float = 1.0) -> np.ndarray:
    """Each training face's target (load_split's order): `share` of its vote distribution
    (`datasets.vote_shares`) and the rest its own label.

    A face without votes (FER2013 files FER+ could not match, or whose votes are all contempt) keeps its
    one-hot label; how many is logged. A dataset with no votes at all is an error (vote_shares)."""
    votes = vote_shares(data).reindex([str(loc) for loc in locations])
    unvoted = votes.isna().any(axis=1).to_numpy()
    if unvoted.all():
        raise DataError(f"soft_labels=true: none of the {len(y)} training faces has votes for the classes "
                        f"{', '.join(data.classes)}")
    if unvoted.any():
        log(f"soft_labels: {int(unvoted.sum())} of {len(y)} training faces have no votes; their own label is "
            "their target")
    return mix(votes.fillna(0.0).to_numpy(), y, np.where(unvoted, 0.0, share)[:, None])


def teacher_checkpoints(spec: str, run_dir: Path) -> list[Path]:
    """The `teachers` param's comma-separated entries as checkpoint paths: a run folder means its best.pt.

    Raises FileNotFoundError for an entry with no checkpoint, and CheckpointError for this run's own
    best.pt (training would overwrite its teacher)."""
    paths = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        path = Path(entry).expanduser()
        path = path / "best.pt" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"teachers: no checkpoint at {path} (give run folders or checkpoint files, "
                                    "separated by commas)")
        if path.resolve() == (Path(run_dir) / "best.pt").resolve():
            raise CheckpointError(f"teachers: {path} is this run's own best.pt, which training replaces: copy it "
                                  "elsewhere, or give this run another run_name")
        paths.append(path)
    return paths


def digest(path: Path) -> str:
    """sha256 of a teacher's checkpoint file: which weights made a run's targets."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_digest(params: dict, data: Dataset, run_dir: Path) -> str:
    """What this run's targets are made from, as a sha256 prefix; "" when the loss compares with the labels.

    soft_labels: every face's vote shares (`datasets.vote_shares`, whichever file or columns they come from);
    teachers: each teacher's checkpoint file, in the order the param names them. Hashing files and a vote
    table is cheap next to what it guards: a student trained on targets that are no longer there."""
    if params["soft_labels"]:
        content = vote_shares(data).sort_index().to_csv().encode()
    elif params["teachers"]:
        content = "\n".join(digest(p) for p in teacher_checkpoints(params["teachers"], run_dir)).encode()
    else:
        return ""
    return hashlib.sha256(content).hexdigest()[:16]


def check_teacher(path: Path, ckpt: dict, data: Dataset, image_size: int, channels: int) -> None:
    """A teacher must have been trained on this data and carve-out (its fingerprint; an exported model keeps
    it), not refit (see the module docstring), with this run's classes and input size; else a
    CheckpointError saying which and why."""
    params, cfg = ckpt.get("params") or {}, ckpt["model_config"]
    if "fingerprint" not in ckpt:
        raise CheckpointError(f"teacher {path} carries no data fingerprint: whether it trained on this run's "
                              "selection split cannot be checked")
    if ckpt["fingerprint"] != data.fingerprint:
        raise CheckpointError(f"teacher {path} was trained on other data or another carve-out of it (fingerprint "
                              f"{ckpt['fingerprint']}, this run's {data.fingerprint}): its training faces may "
                              "include this run's selection split")
    if params.get("refit"):
        raise CheckpointError(f"teacher {path} was refit on train + val: it has seen this run's selection split")
    if list(ckpt["classes"]) != list(data.classes):
        raise CheckpointError(f"teacher {path} has classes {list(ckpt['classes'])}; this run's are "
                              f"{list(data.classes)}")
    if (cfg["image_size"], cfg["in_channels"]) != (image_size, channels):
        raise CheckpointError(f"teacher {path} takes {cfg['image_size']} px faces with {cfg['in_channels']} "
                              f"channel(s); this run decodes {image_size} px with {channels}")


def teacher_targets(params: dict, data: Dataset, x, y: np.ndarray, device, run_dir: Path,
                    record: bool = True) -> np.ndarray:
    """Each training face's target (x, y: load_split's uint8 images and labels): `teacher_share` of the
    teachers' mean probabilities and the rest its own label. record: write TEACHERS_FILE into `run_dir`
    (each teacher's path, sha256, protocol and accuracy on these faces)."""
    paths = teacher_checkpoints(params["teachers"], run_dir)
    if not paths:
        raise CheckpointError(f"teachers = {params['teachers']!r} names no checkpoint")
    total, records = 0.0, []
    for path in paths:
        model, ckpt = load_model(path, device)
        check_teacher(path, ckpt, data, params["image_size"], params["channels"])
        flip = headline_tta(ckpt, run_metrics(path))
        probs = predict(model, x, 2 * params["batch_size"], device, params["amp"], flip=flip,
                        cpu_bf16=params["cpu_bf16"])
        agree = float((probs.argmax(1) == y).mean())
        log(f"teacher {path}: {'flip TTA' if flip else 'one pass'}, agrees with {agree:.1%} of the training "
            "labels")
        total = total + probs
        records.append(dict(path=str(path), sha256=digest(path), flip_tta=flip, train_label_agreement=agree))
    ensemble = total / len(paths)
    log(f"teachers' ensemble: agrees with {float((ensemble.argmax(1) == y).mean()):.1%} of the training labels, "
        f"mean probability of the label {float(ensemble[np.arange(len(y)), y].mean()):.2f}")
    if record:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(run_dir) / TEACHERS_FILE, json.dumps(records, indent=2) + "\n")
    return mix(ensemble, y, params["teacher_share"])
