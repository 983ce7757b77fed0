"""Classification metrics that stay defined when a class is missing from a split.

Small validation splits (and the synthetic data) can lack a class entirely.
scikit-learn then either divides by zero (recall of an absent class) or drags
a macro average down with a 0 that measures nothing, so each average here says
which classes it is over:

- balanced_accuracy: mean recall over the classes present in y_true (the
  classes whose recall is defined); `absent_classes` lists the others.
- macro_f1: mean F1 over the classes present in y_true *or* predicted. A class
  predicted but never true keeps its F1 of 0 (those predictions are all wrong);
  a class neither true nor predicted has no F1 and is left out.
- f1_per_class: F1 for every class id 0..num_classes-1, 0 where undefined.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score


def summary(y_true, y_pred, num_classes: int) -> dict:
    """accuracy, balanced_accuracy, macro_f1, f1_per_class, absent_classes (ids with no true sample), n."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    present = np.unique(y_true)
    seen = np.union1d(present, np.unique(y_pred))
    return dict(
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        macro_f1=float(f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0)),
        f1_per_class=f1_score(y_true, y_pred, labels=np.arange(num_classes), average=None, zero_division=0),
        absent_classes=sorted(set(range(num_classes)) - set(present.tolist())),
        n=int(y_true.size),
    )
