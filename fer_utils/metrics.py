"""Classification scores: the one definition that training, evaluation and data exploration share.

Small validation splits (and the synthetic data) can lack a class entirely.
scikit-learn then either divides by zero (recall of an absent class) or drags
a macro average down with a 0 that measures nothing, so each average here says
which classes it is over:

- accuracy: share of correct answers.
- balanced_accuracy: mean recall over the classes present in y_true (the
  classes whose recall is defined); `absent_classes` lists the others.
- macro_f1: mean F1 over the classes present in y_true *or* predicted
  (f1_over="seen", the default and scikit-learn's own label set). A class
  predicted but never true keeps its F1 of 0 (those predictions are all wrong);
  a class neither true nor predicted has no F1 and is left out.
  f1_over="true" averages over the classes present in y_true only: the data
  chapter's majority-guess table uses it, so a guessed class that the split
  lacks does not count (the two differ only when it does).
- f1_per_class: F1 for every class id 0..num_classes-1, 0 where undefined.

Labels may be integer ids or class names (any labels scikit-learn accepts).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

F1_LABEL_SETS = ("seen", "true")


def scores(y_true, y_pred, f1_over: str = "seen") -> tuple[float, float, float]:
    """(accuracy, balanced accuracy, macro-F1), with the label sets of the module docstring."""
    if f1_over not in F1_LABEL_SETS:
        raise ValueError(f"f1_over must be one of {F1_LABEL_SETS}, got {f1_over!r}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = np.unique(y_true)
    f1_labels = present if f1_over == "true" else np.union1d(present, np.unique(y_pred))
    return (float(accuracy_score(y_true, y_pred)),
            float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
            float(f1_score(y_true, y_pred, labels=f1_labels, average="macro", zero_division=0)))


def scores_from_confusion(cm) -> tuple[float, float, float]:
    """`scores` (f1_over="seen") of the predictions a confusion matrix counts: rows true, columns predicted,
    over any label set; the counts may be weights (a bootstrap resample's: how often each image was drawn).

    The same definitions, from the counts: a class's recall is TP / true (classes present in y_true), its F1
    2 TP / (true + predicted) (classes true or predicted). A bootstrap scores a split a thousand times or
    more, and scikit-learn checks its inputs on every call (about 20 ms for three scores; this: microseconds);
    the tests hold the two equal."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, true, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    present, seen = true > 0, true + predicted > 0
    return (float(tp.sum() / cm.sum()), float((tp[present] / true[present]).mean()),
            float((2 * tp[seen] / (true[seen] + predicted[seen])).mean()))


def summary(y_true, y_pred, num_classes: int) -> dict:
    """accuracy, balanced_accuracy, macro_f1, f1_per_class, absent_classes (ids with no true sample), n."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    accuracy, balanced_accuracy, macro_f1 = scores(y_true, y_pred)
    return dict(
        accuracy=accuracy,
        balanced_accuracy=balanced_accuracy,
        macro_f1=macro_f1,
        f1_per_class=f1_score(y_true, y_pred, labels=np.arange(num_classes), average=None, zero_division=0),
        absent_classes=sorted(set(range(num_classes)) - set(np.unique(y_true).tolist())),
        n=int(y_true.size),
    )


# -- valence and arousal --------------------------------------------------------

VA_NAMES = ("valence", "arousal")
VA_SCORES = tuple(f"{name}_{score}" for name in VA_NAMES for score in ("ccc", "rmse"))  # valence_arousal_scores'


def ccc(y_true, y_pred, weight=None, eps: float = 0.0):
    """Lin's concordance correlation coefficient of two equally long vectors (numpy arrays or torch tensors;
    the result is of the same kind, so training's loss and the reported score share this one definition):

        CCC = 2 cov(t, p) / (var(t) + var(p) + (mean(t) - mean(p))^2)

    with population (1/n) moments, as Lin (1989) defines it. 1 means p equals t, -1 means p = 2 mean(t) - t
    (the mirror image), 0 no agreement. Unlike Pearson's r it also penalises a shift or a rescaling of the
    predictions, which is why AffectNet's valence/arousal results are reported with it. Undefined (NaN)
    when the denominator is 0 (both constant and equal).

    `weight` (same kind and length; e.g. 0 for a face without an annotation, whose value must then be
    finite) makes every moment a weighted mean; `eps`, added to every divisor, keeps a set of total weight
    0 finite (CCC 0). Training's loss needs both (`engine.train.va_loss`); scores use neither."""
    def mean(v):
        return v.mean() if weight is None else (weight * v).sum() / (weight.sum() + eps)

    mt, mp = mean(y_true), mean(y_pred)
    dt, dp = y_true - mt, y_pred - mp
    return 2 * mean(dt * dp) / (mean(dt * dt) + mean(dp * dp) + (mt - mp) ** 2 + eps)


def valence_arousal_scores(y_true, y_pred) -> dict:
    """CCC and RMSE of predicted valence and arousal: `y_true`, `y_pred` (N, 2) in VA_NAMES order; rows with a
    NaN annotation are left out of that dimension's scores (not every face is annotated). Keys:
    valence_ccc, valence_rmse, arousal_ccc, arousal_rmse, va_n (faces with both annotations)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != len(VA_NAMES):
        raise ValueError(f"valence/arousal need (N, 2) arrays; got {y_true.shape} and {y_pred.shape}")
    out = {}
    for i, name in enumerate(VA_NAMES):
        known = ~np.isnan(y_true[:, i])
        if not known.any():
            raise ValueError(f"no face has a {name} annotation: nothing to score")
        t, p = y_true[known, i], y_pred[known, i]
        out[f"{name}_ccc"] = float(ccc(t, p))
        out[f"{name}_rmse"] = float(np.sqrt(np.mean((t - p) ** 2)))
    out["va_n"] = int((~np.isnan(y_true).any(1)).sum())
    return out
