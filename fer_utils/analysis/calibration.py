"""Calibration: does a confidence of 80% mean right 80% of the time?

- Expected calibration error (ECE): the images are binned by confidence (the top
  class probability) into 15 equal-width bins; ECE is the image-weighted mean
  |accuracy - mean confidence| over the bins.
- Temperature scaling (Guo et al., 2017): one scalar T divides the logits,
  softmax(z / T); T > 1 softens overconfident answers, T < 1 sharpens. T is fitted
  by minimising the negative log-likelihood with a golden-section search over
  log T (NLL is convex in 1/T, so unimodal in log T): no scipy, no gradients.
  It never changes the predicted class, so accuracy stays the same.
- Fitting T and measuring ECE on the same images is optimistic, so `run` fits T on
  the selection split (val) and reports ECE and NLL on the report split (test);
  `cross_fit_temperature` also measures it within the selection split, fitting on
  one half and measuring on the other (both ways round, stratified by class).

Probabilities stand in for logits: log p differs from the logits by a per-image
constant, which softmax ignores, so softmax(log p / T) = softmax(z / T).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from ..data.datasets import Dataset
from ..paths import write_text
from . import evaluate

N_BINS = 15
_TINY = np.finfo(np.float64).tiny


def _check(probs, y_true) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs {probs.shape} and labels {y_true.shape} do not match")
    if len(y_true) == 0:
        raise ValueError("no predictions to calibrate")
    return probs, y_true


def reliability(probs, y_true, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin: lower, upper, count, confidence (mean), accuracy, gap
    (accuracy - confidence). Empty bins are kept with count 0 and NaN accuracy/confidence."""
    probs, y_true = _check(probs, y_true)
    conf = probs.max(1)
    correct = (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lower, upper]; a confidence of exactly 0 cannot happen (it is the max of K probabilities).
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, n_bins) / count
        acc = np.bincount(which, correct, n_bins) / count
    return pd.DataFrame(dict(lower=edges[:-1], upper=edges[1:], count=count, confidence=mean_conf, accuracy=acc,
                             gap=acc - mean_conf))


def ece(probs, y_true, n_bins: int = N_BINS) -> float:
    """Expected calibration error with `n_bins` equal-width bins (0 = perfectly calibrated)."""
    table = reliability(probs, y_true, n_bins)
    used = table["count"] > 0
    return float((table.loc[used, "count"] * table.loc[used, "gap"].abs()).sum() / table["count"].sum())


def nll(probs, y_true) -> float:
    """Mean negative log-likelihood of the true class (scikit-learn's log_loss)."""
    probs, y_true = _check(probs, y_true)
    return float(log_loss(y_true, probs, labels=np.arange(probs.shape[1])))


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T) (= softmax(z / T) for the logits z behind p)."""
    z = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _TINY)) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _nll_at(logp: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logp / temperature
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def fit_temperature(probs, y_true, low: float = 0.05, high: float = 20.0, iterations: int = 80) -> float:
    """The temperature in [low, high] that minimises the NLL of `y_true` (golden-section search on log T)."""
    probs, y_true = _check(probs, y_true)
    logp = np.log(np.maximum(probs, _TINY))
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll_at(logp, y_true, math.exp(c)), _nll_at(logp, y_true, math.exp(d))
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll_at(logp, y_true, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll_at(logp, y_true, math.exp(d))
    return float(math.exp((a + b) / 2))


def _halves(y_true: np.ndarray, seed: int) -> np.ndarray:
    """A stratified 0/1 assignment of the images to two halves."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(y_true), np.int64)
    offset = 0
    for c in np.unique(y_true):
        idx = rng.permutation(np.flatnonzero(y_true == c))
        half[idx] = (np.arange(len(idx)) + offset) % 2  # odd-sized classes alternate which half gets one more
        offset += len(idx)
    return half


def cross_fit_temperature(probs, y_true, seed: int = 0, n_bins: int = N_BINS) -> dict:
    """Temperature scaling measured honestly: fit on one half of the images, measure on the other half,
    both ways round, and pool the held-out calibrated probabilities.

    Returns temperature (fitted on all images: the one to apply to other splits), fold_temperatures,
    ece_before, ece_after (held-out halves), ece_after_in_sample (fitted and measured on all images:
    optimistic), nll_before, nll_after (held-out), nll_after_in_sample, calibrated (held-out calibrated
    probabilities, same order as the input), n."""
    probs, y_true = _check(probs, y_true)
    half = _halves(y_true, seed)
    calibrated = probs.copy()
    fold_t = []
    for h in (0, 1):
        fit_on, apply_to = half != h, half == h
        if fit_on.sum() == 0 or apply_to.sum() == 0:
            continue
        t = fit_temperature(probs[fit_on], y_true[fit_on])
        fold_t.append(t)
        calibrated[apply_to] = apply_temperature(probs[apply_to], t)
    t_all = fit_temperature(probs, y_true)
    in_sample = apply_temperature(probs, t_all)
    return dict(temperature=t_all, fold_temperatures=fold_t, n=int(len(y_true)),
                ece_before=ece(probs, y_true, n_bins), ece_after=ece(calibrated, y_true, n_bins),
                ece_after_in_sample=ece(in_sample, y_true, n_bins),
                nll_before=nll(probs, y_true), nll_after=nll(calibrated, y_true),
                nll_after_in_sample=nll(in_sample, y_true), calibrated=calibrated)


DEFAULT_BUCKETS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def accuracy_by_confidence(probs, y_true, edges=DEFAULT_BUCKETS) -> pd.DataFrame:
    """Accuracy per confidence bucket (lower, upper]: bucket label, count, share of images, mean confidence,
    accuracy. Buckets with no images are left out (they have no accuracy)."""
    probs, y_true = _check(probs, y_true)
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            rows.append(dict(bucket=f"{lo:.0%}–{hi:.0%}", lower=lo, upper=hi, count=int(inside.sum()),
                             share=float(inside.mean()), confidence=float(conf[inside].mean()),
                             accuracy=float(correct[inside].mean())))
    return pd.DataFrame(rows, columns=["bucket", "lower", "upper", "count", "share", "confidence", "accuracy"])


def labelled_probs(frame: pd.DataFrame, classes) -> tuple[np.ndarray, np.ndarray]:
    """A predictions frame's (N, K) probabilities and true class ids, in `classes` order."""
    classes = list(classes)
    return evaluate.prob_columns(frame, classes), frame["true"].map(classes.index).to_numpy()


def run(ds: Dataset, run_dir, seed: int = 0, fit_split: str = "val", report_split: str = "test") -> dict:
    """The calibration step of the errors chapter: the temperature fitted on all saved predictions of the
    selection split (`fit_split`), and ECE and NLL before and after it measured on the report split
    (`report_split`), which played no part in the fit; calibration.json written to the run folder.

    Returns fit_split, report_split, temperature, report (n, ece_before, ece_after, nll_before, nll_after,
    probs, calibrated, y: the report split's probabilities before and after scaling and its labels) and
    selection (`cross_fit_temperature` on the fit split: the fitted temperature's effect on images it
    was not fitted on, for a dataset without a report split too)."""
    run_dir = Path(run_dir)
    probs, y = labelled_probs(evaluate.load_predictions(run_dir, fit_split), ds.classes)
    selection = cross_fit_temperature(probs, y, seed=seed)
    temperature = selection["temperature"]
    report = None
    if report_split in ds.splits and (run_dir / f"predictions_{report_split}.csv").is_file():
        rp, ry = labelled_probs(evaluate.load_predictions(run_dir, report_split), ds.classes)
        scaled = apply_temperature(rp, temperature)
        report = dict(n=int(len(ry)), ece_before=ece(rp, ry), ece_after=ece(scaled, ry), nll_before=nll(rp, ry),
                      nll_after=nll(scaled, ry), probs=rp, calibrated=scaled, y=ry)
    arrays = ("probs", "calibrated", "y")
    write_text(run_dir / "calibration.json", json.dumps(dict(
        fit_split=fit_split, report_split=report_split, bins=N_BINS, temperature=temperature,
        report=None if report is None else {k: v for k, v in report.items() if k not in arrays},
        selection=dict(fold_temperatures=selection["fold_temperatures"], ece_before=selection["ece_before"],
                       ece_after_heldout=selection["ece_after"], nll_before=selection["nll_before"],
                       nll_after_heldout=selection["nll_after"])), indent=2))
    return dict(fit_split=fit_split, report_split=report_split, temperature=temperature, report=report,
                selection=selection)
