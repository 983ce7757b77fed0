"""Cross-dataset evaluation: the run's model scored on a second dataset (params `eval_dataset`,
`eval_data_dir`, `eval_split`), its classes matched to the model's by name.

A score on the training data's own report split measures how well the model fits those photographs
and those annotators; another dataset's faces measure how much of it carries over. Datasets label
different class sets (FER2013 has no contempt), so the comparison needs rules, and the chapter states
them:

- Shared classes: the model's classes that the second dataset also has, matched by canonical name
  (`data.labels`: every reader maps its names onto the canonical ones, never by position).
- A face whose true class the model does not know is left out of the scores and counted: no answer of
  the model could be right.
- A face answered with a model class that the second dataset lacks is counted wrong: its true class is
  a shared one, so that answer cannot be its label.
- Scores are `metrics.scores` over the faces left: accuracy, balanced accuracy (mean recall over the
  shared classes present in the split) and macro-F1 over those same classes (f1_over="true"). A class
  the dataset lacks has no true faces, so its F1 would be 0 whatever the model learnt; its answers
  already count as errors of the faces' true classes.

- Faces the model has seen: a scored face whose decoded pixels equal those of a face in the training data's
  train split (learnt from) or val split (chose the epoch and protocol) is counted (`seen_in_training`), and
  the scores are given again without those faces. FER+ and FER2013 share their images, so a FER2013 model
  scored on FER+ (or the other way round) meets its own training faces in any split but the report split.

The second dataset is read by its own reader, in its own roles (`data.splits`); the split scored is its
report split (test) unless `eval_split` names another. Images are decoded at the checkpoint's image size
and channels, whatever the params say, and predicted under the run's headline protocol (flip test-time
augmentation or not, as the evaluation decided on the selection split: `engine.inference.headline_tta`).
`run` writes cross_dataset.json (and predictions_cross_dataset.csv) in the run folder.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from ..config.registry import DATASETS
from ..data.datasets import DataError, Dataset, open_dataset
from ..data.images import load_split
from ..data.splits import pixel_hashes
from ..engine import inference
from ..metrics import scores
from ..paths import display_path, write_text
from . import evaluate

FILE = "cross_dataset.json"
PREDICTIONS = "cross_dataset"  # evaluate.save_predictions -> predictions_cross_dataset.csv
SPLIT_PREFERENCE = ("test", "val", "heldout", "train")  # no eval_split: the report split, else the next role
DISABLED = ("This run is not scored on a second dataset. Set `eval_dataset` (a format: "
            + ", ".join(DATASETS) + ") and `eval_data_dir` (its folder) to score the model on another "
            "dataset's faces, classes matched by name.")


def open_eval_dataset(params: dict) -> Dataset:
    """The second dataset, read by its own reader with the run's data settings (seed, selection_fraction,
    dedup, max_per_split, ferplus_rule); errors name `eval_dataset`/`eval_data_dir`, not the training data's
    params. FER_DATA_DIR is not used: it names the training data's folder."""
    fmt = params["eval_dataset"]
    if fmt is None:
        raise DataError(f"no second dataset: {DISABLED}")
    if fmt != "synthetic" and not params["eval_data_dir"]:
        raise DataError(f"eval_dataset '{fmt}' needs eval_data_dir (the second dataset's folder). "
                        f"Expected layout: {DATASETS[fmt]}")
    try:
        return open_dataset(dict(params, dataset=fmt, data_dir=params["eval_data_dir"]))
    except DataError as err:
        raise DataError(f"eval_dataset '{fmt}' (eval_data_dir): {err}") from None


def split_to_score(ds: Dataset, params: dict) -> str:
    """`eval_split` when given (an error when the dataset lacks it), else the first role of SPLIT_PREFERENCE
    that the dataset has: its report split whenever it has one."""
    wanted = params["eval_split"]
    if wanted is not None:
        if wanted not in ds.splits:
            raise DataError(f"eval_split '{wanted}': the second dataset ({ds.format}, {ds.root}) has no such "
                            f"split; it has {', '.join(ds.splits)}")
        return wanted
    return next(s for s in SPLIT_PREFERENCE if s in ds.splits)


def match_classes(model_classes, dataset_classes) -> dict:
    """shared (in the model's order), model_only (answers that count as wrong), dataset_only (faces left
    out); a DataError when nothing is shared, since then no face could be scored."""
    model_classes, dataset_classes = list(model_classes), list(dataset_classes)
    shared = [c for c in model_classes if c in dataset_classes]
    if not shared:
        raise DataError(f"the model's classes ({', '.join(model_classes)}) and the second dataset's "
                        f"({', '.join(dataset_classes)}) share none: nothing can be scored")
    return dict(shared=shared, model_only=[c for c in model_classes if c not in dataset_classes],
                dataset_only=[c for c in dataset_classes if c not in model_classes])


def _counts(values, order) -> dict:
    found = pd.Series(values, dtype=object).value_counts()
    return {c: int(found[c]) for c in order if c in found}


def score(true, predicted, model_classes, dataset_classes) -> dict:
    """The rules of the module docstring applied to one split's true and predicted class names.

    Returns the class lists of `match_classes`, faces (all decoded), left_out ({class: faces} of true classes
    the model lacks), scored, accuracy, balanced_accuracy, macro_f1, unshared_predictions ({model class the
    dataset lacks: scored faces answered with it}), absent_shared (shared classes without faces in the
    split) and confusion (true: shared classes, predicted: the shared then the model's other classes, counts)."""
    classes = match_classes(model_classes, dataset_classes)
    true, predicted = np.asarray(true, dtype=object), np.asarray(predicted, dtype=object)
    known = np.isin(true, classes["shared"])
    y_true, y_pred = true[known], predicted[known]
    if not len(y_true):
        raise DataError(f"no face of the split has a class the model knows ({', '.join(classes['shared'])})")
    accuracy, balanced_accuracy, macro_f1 = scores(y_true, y_pred, f1_over="true")
    columns = classes["shared"] + classes["model_only"]  # shared first: the (true, true) cells on the diagonal
    cm = confusion_matrix(y_true, y_pred, labels=columns)[:len(classes["shared"])]
    return dict(**classes, faces=int(len(true)), left_out=_counts(true[~known], classes["dataset_only"]),
                scored=int(known.sum()), accuracy=accuracy, balanced_accuracy=balanced_accuracy, macro_f1=macro_f1,
                unshared_predictions=_counts(y_pred, classes["model_only"]),
                absent_shared=[c for c in classes["shared"] if c not in set(y_true)],
                confusion=dict(true=classes["shared"], predicted=columns, counts=cm.astype(int).tolist()))


TRAINING_SPLITS = ("train", "val")  # what the model learnt from, what chose its epoch and protocol


def seen_in_training(ds: Dataset, locations, train_ds: Dataset) -> np.ndarray:
    """For each face of `ds` at `locations`: the training dataset's split (TRAINING_SPLITS; train first when
    both hold it) holding a face with the same decoded pixels, else "". Images compare by
    `splits.pixel_hashes`, so two folders holding the same files (FER2013 and FER+) match, as do copies."""
    scored = replace(ds, frame=ds.frame[ds.frame["location"].isin(set(locations))])  # hash only those faces
    hashes = dict(zip(scored.frame["location"], pixel_hashes(scored)))
    training = replace(train_ds, frame=train_ds.frame[train_ds.frame["split"].isin(TRAINING_SPLITS)])
    trained = pd.DataFrame(dict(hash=pixel_hashes(training), split=training.frame["split"]))
    owner = {}
    for split in reversed(TRAINING_SPLITS):  # a later write wins: train over val
        owner.update(dict.fromkeys(trained.loc[trained["split"] == split, "hash"], split))
    owner.pop("", None)  # undecodable images share no face
    return np.array([owner.get(hashes.get(loc, ""), "") for loc in locations], dtype=object)


def run(params: dict, run_dir, device="cpu", ds: Dataset | None = None, train_ds: Dataset | None = None) -> dict:
    """Score the run's checkpoint (params["checkpoint"]) on the second dataset's split (`split_to_score`):
    what `score` returns, plus dataset, data_dir, fingerprint, split, split_role, skipped ({reason: images}
    the reader or the decoder left out of that split), tta, checkpoint, seen ({train/val: scored faces that
    are pixel copies of a face of that split of the training data, each counted once, by
    `seen_in_training`}, None when the checkpoint was not trained on `train_ds`, the run's own data by
    default) and unseen (`score` without those faces; None when none is
    seen, or when every scored face is). Written to cross_dataset.json in the run folder, the scored faces'
    predictions to predictions_cross_dataset.csv."""
    run_dir = Path(run_dir)
    ds = ds if ds is not None else open_eval_dataset(params)
    train_ds = train_ds if train_ds is not None else open_dataset(params)
    model, ckpt = evaluate.load_for_evaluation(params, run_dir, None, device)
    model_classes = list(ckpt["classes"])
    match_classes(model_classes, ds.classes)  # no shared class: the error comes before any decoding
    split = split_to_score(ds, params)
    metrics_file = run_dir / "metrics.json"
    flip = inference.headline_tta(ckpt, json.loads(metrics_file.read_text()) if metrics_file.is_file() else None)
    config = ckpt["model_config"]
    x, y, locations = load_split(ds, split, config["image_size"], config["in_channels"])
    if not len(x):
        raise DataError(f"split '{split}' of the second dataset ({ds.format}, {ds.root}) has no readable images")
    probs = inference.predict(model, x, 2 * params["batch_size"], device, params["amp"], flip=flip)
    true = np.asarray(ds.classes, dtype=object)[y]
    predicted = np.asarray(model_classes, dtype=object)[probs.argmax(1)]
    result = score(true, predicted, model_classes, ds.classes)
    known = np.isin(true, result["shared"])
    seen, unseen = None, None
    if ckpt.get("fingerprint") == train_ds.fingerprint:
        copy_of = seen_in_training(ds, locations, train_ds)
        seen = {trained: int(((copy_of == trained) & known).sum()) for trained in TRAINING_SPLITS}
        fresh = copy_of == ""
        if sum(seen.values()) and (fresh & known).any():
            unseen = {k: v for k, v in score(true[fresh], predicted[fresh], model_classes, ds.classes).items()
                      if k in ("scored", "accuracy", "balanced_accuracy", "macro_f1")}
    evaluate.save_predictions(evaluate.predictions_frame(locations[known], true[known], probs[known], model_classes),
                              run_dir, PREDICTIONS)
    skipped = ds.skip_counts()
    skipped = skipped[skipped["split"] == split]
    result.update(dataset=ds.format, data_dir=str(ds.root), fingerprint=ds.fingerprint, split=split,
                  split_role=ds.split_roles.get(split, ""), skipped=dict(zip(skipped["reason"],
                                                                             skipped["count"].astype(int).tolist())),
                  tta=bool(flip), checkpoint=str(ckpt["path"]), seen=seen, unseen=unseen)
    write_text(run_dir / FILE, json.dumps(result, indent=2))
    return result


def _faces(n: int) -> str:
    return f"{n:,} face{'' if n == 1 else 's'}"


def describe(result: dict | None) -> str:
    """The chapter's sentences (Markdown) for a `run` result: which dataset and split, which classes are
    shared, what happened to the others, the scores; DISABLED when there is none."""
    if result is None:
        return DISABLED
    r = result
    lines = [f"**Second dataset: {r['dataset']}** (`{display_path(r['data_dir'])}`, data fingerprint "
             f"`{r['fingerprint']}`), split **{r['split']}**" + (f" ({r['split_role']})" if r["split_role"] else "")
             + f": {_faces(r['faces'])} decoded at the checkpoint's image size and channels.",
             f"Classes are matched by name. The model and this dataset share {len(r['shared'])}: "
             f"{', '.join(r['shared'])}."]
    if r["dataset_only"]:
        left = sum(r["left_out"].values())
        lines.append(f"The dataset's {', '.join(r['dataset_only'])} {'is' if len(r['dataset_only']) == 1 else 'are'} "
                     f"unknown to the model: those {_faces(left)} are left out of the scores, since no answer "
                     f"could be right.")
    else:
        lines.append("Every face's class is one the model knows: none is left out.")
    if r["model_only"]:
        unshared = sum(r["unshared_predictions"].values())
        lines.append(f"The model's {', '.join(r['model_only'])} {'does' if len(r['model_only']) == 1 else 'do'} not "
                     f"exist in this dataset: a face answered with "
                     f"{'it' if len(r['model_only']) == 1 else 'one of them'} counts as wrong "
                     f"({unshared:,} of the {_faces(r['scored'])} scored were).")
    else:
        lines.append("Every class of the model exists in this dataset, so no answer is wrong by construction.")
    protocol = ("each face predicted together with its mirror image (flip test-time augmentation), the run's "
                "headline protocol" if r["tta"] else "one prediction per face, the run's headline protocol")
    lines.append(f"On the {_faces(r['scored'])} scored ({protocol}), the model reaches **{r['accuracy']:.1%}** "
                 f"accuracy, **{r['balanced_accuracy']:.1%}** balanced accuracy and macro-F1 **{r['macro_f1']:.3f}** "
                 f"on {r['dataset']} {r['split']}; balanced accuracy and macro-F1 average over the shared classes "
                 f"present in the split.")
    lines.append(_seen_text(r))
    if r["absent_shared"]:
        lines.append(f"The split has no faces of {', '.join(r['absent_shared'])}: not measured.")
    if r["skipped"]:
        lines.append("Left out by the reader or the decoder: " + ", ".join(
            f"{n:,} ({reason})" for reason, n in r["skipped"].items()) + ".")
    return " ".join(lines)


def _seen_text(r: dict) -> str:
    """The sentences on faces the model has seen (`run`'s seen and unseen)."""
    if r["seen"] is None:
        return ("Whether the model has seen any of these faces is not checked: the checkpoint was not trained on "
                "this run's data.")
    train, val = r["seen"]["train"], r["seen"]["val"]
    if not train + val:
        return "None of the scored faces is a copy of a face the model was trained or selected on."
    text = (f"**{train + val:,} of the {_faces(r['scored'])} scored are copies of faces of the model's own data** "
            f"({train:,} of its train split, which it learnt from, and {val:,} of its val split, which chose its "
            f"epoch and protocol): the scores above count faces the model has seen.")
    u = r["unseen"]
    if u is None:
        return text + " No scored face is left without them."
    return text + (f" Without them, on the {_faces(u['scored'])} it has never seen: **{u['accuracy']:.1%}** accuracy, "
                   f"**{u['balanced_accuracy']:.1%}** balanced accuracy, macro-F1 **{u['macro_f1']:.3f}**.")


def confusion_frame(result: dict) -> pd.DataFrame:
    """The confusion counts of a `run` result: rows the shared true classes, columns every model class (the
    shared ones first, so the correct answers are the diagonal)."""
    c = result["confusion"]
    return pd.DataFrame(c["counts"], index=pd.Index(c["true"], name="true"),
                        columns=pd.Index(c["predicted"], name="predicted"))


def class_table(result: dict) -> pd.DataFrame:
    """Per shared class: faces, recall, and how many were answered with a class the dataset lacks."""
    cm = confusion_frame(result)
    faces = cm.sum(axis=1)
    return pd.DataFrame(dict(emotion=cm.index, faces=faces.to_numpy(),
                             recall=[cm.loc[c, c] / n if n else np.nan for c, n in faces.items()],
                             answered_unshared=cm[result["model_only"]].sum(axis=1).to_numpy()))
