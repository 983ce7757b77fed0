"""Evaluation, calibration and saliency: the numbers equal scikit-learn's, edge cases stay defined."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score, log_loss,
                             precision_recall_fscore_support)

from conftest import FER_DATA_DIR
from fer_utils import metrics
from fer_utils.analysis import calibration, evaluate, saliency
from fer_utils.engine import checkpoint, inference, train
from fer_utils.data.datasets import open_dataset, read_folders
from fer_utils.config.params import resolve
from fer_utils.data.labels import EMOTIONS
from fer_utils.engine.models import create_model

CLASSES = list(EMOTIONS)
REPO = Path(__file__).resolve().parent.parent


def fake_predictions(n=240, k=8, seed=0, skill=2.0, absent=()):
    """Labels with AffectNet-like imbalance and probabilities that are right more often than chance."""
    rng = np.random.default_rng(seed)
    shares = np.array([0.26, 0.47, 0.09, 0.05, 0.03, 0.02, 0.06, 0.02])[:k]
    shares[list(absent)] = 0
    y = rng.choice(k, n, p=shares / shares.sum())
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_tables_equal_sklearn_on_the_saved_csv(tmp_path):
    y, probs = fake_predictions()
    frame = evaluate.predictions_frame([f"img/{i}.jpg" for i in range(len(y))], y, probs, CLASSES)
    assert list(frame.columns[:4]) == ["location", "true", "predicted", "confidence"]
    assert [c for c in frame.columns if c.startswith("prob_")] == [f"prob_{c}" for c in CLASSES]
    path = evaluate.save_predictions(frame, tmp_path, "val")
    assert path.name == "predictions_val.csv"

    csv = pd.read_csv(path)  # what a reader of the run folder sees, nothing else
    t, p = csv["true"], csv["predicted"]
    s = evaluate.split_summary(t, p, CLASSES, "happy", n_boot=50, seed=1, split="val")
    assert s["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))
    assert s["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
    assert s["weighted_f1"] == pytest.approx(f1_score(t, p, average="weighted"))
    guess = np.full(len(t), "happy", dtype=object)
    assert s["majority_accuracy"] == pytest.approx(accuracy_score(t, guess))
    assert s["majority_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, guess))
    assert s["n"] == len(csv) and s["balanced"] is False and "imbalanced" in s["protocol"]
    # the stored probabilities give back the stored predictions
    probs_csv = evaluate.prob_columns(csv, CLASSES)
    assert (np.asarray(CLASSES)[probs_csv.argmax(1)] == p).all()
    assert np.allclose(probs_csv.max(1), csv["confidence"])

    table = evaluate.per_class_table(t, p, CLASSES)
    present = sorted(set(t) | set(p), key=CLASSES.index)
    prec, rec, f1, sup = precision_recall_fscore_support(t, p, labels=present, zero_division=0)
    rows = table.set_index("emotion").loc[present]
    assert np.allclose(rows["recall"], rec) and np.allclose(rows["f1"], f1)
    defined = rows["predicted"] > 0
    assert np.allclose(rows["precision"][defined], prec[defined.to_numpy()])
    assert (rows["support"].to_numpy() == sup).all()
    assert table["f1"].mean() == pytest.approx(s["macro_f1"])  # mean over defined F1s = macro-F1
    summary = evaluate.summary_table([s])
    assert list(summary["predictor"]) == ["model", "always 'happy'"]


def test_bootstrap_ci_contains_the_point_estimate():
    y, probs = fake_predictions(n=300, seed=3)
    s = evaluate.split_summary(y, probs.argmax(1), CLASSES, 1, n_boot=200, seed=0)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = s[f"{key}_ci"]
        assert low <= s[key] <= high and high - low > 0


def test_each_bootstrap_resample_is_scored_as_scikit_learn_scores_it():
    """The CIs come from each resample's confusion matrix (microseconds, not scikit-learn's 20 ms a call);
    the same draws scored by scikit-learn give the same bounds, with a class absent and one predicted but
    absent, and so does decide_tta's paired CI."""
    y, probs = fake_predictions(n=150, seed=4, absent=(7,))
    pred = probs.argmax(1)
    pred[:2] = 7
    draws = np.random.default_rng(5)
    by_sklearn, flip_gain = [], []
    other = np.where(np.arange(150) % 3 == 0, y, pred)
    for _ in range(40):
        i = draws.integers(0, 150, 150)
        by_sklearn.append(metrics.scores(y[i], pred[i]))
        flip_gain.append(metrics.scores(y[i], other[i])[2] - metrics.scores(y[i], pred[i])[2])
    expected = np.quantile(by_sklearn, [0.025, 0.975], axis=0)
    got = evaluate.bootstrap_ci(y, pred, n_boot=40, seed=5)
    for j, key in enumerate(("accuracy", "balanced_accuracy", "macro_f1")):
        assert got[key] == pytest.approx(tuple(expected[:, j]), abs=1e-12)
    frame = lambda p: pd.DataFrame(dict(true=y, predicted=p))  # noqa: E731
    decided = evaluate.decide_tta(frame(pred), frame(other), None, n_boot=40, seed=5)
    assert decided["difference_ci"] == pytest.approx(list(np.quantile(flip_gain, [0.025, 0.975])), abs=1e-12)
    weights = np.random.default_rng(6).integers(0, 4, 150)
    cm = np.zeros((8, 8))
    np.add.at(cm, (y, pred), weights)
    expand = np.repeat(np.arange(150), weights)
    assert metrics.scores_from_confusion(cm) == pytest.approx(metrics.scores(y[expand], pred[expand]), abs=1e-12)


def test_a_class_absent_from_the_split_is_stated_not_nan():
    y, probs = fake_predictions(absent=(7,), seed=2)  # no contempt in the split
    pred = probs.argmax(1)
    pred[:3] = 7  # ...but the model answers contempt a few times
    s = evaluate.split_summary(y, pred, CLASSES, "happy", n_boot=30, split="val")
    assert s["absent_classes"] == ["contempt"] and s["balanced"] is False
    assert "no images of contempt" in s["protocol"]
    numbers = [v for v in s.values() if isinstance(v, float)] + [x for k in s if k.endswith("_ci") for x in s[k]]
    assert all(math.isfinite(v) for v in numbers)
    table = evaluate.per_class_table(y, pred, CLASSES).set_index("emotion")
    assert "no images in this split" in table.loc["contempt", "note"]
    assert table.loc["contempt", "f1"] == 0  # predicted but never true: all those answers are wrong
    assert np.isfinite(table.drop(index="contempt")["recall"]).all()


def test_balanced_split_says_accuracy_equals_balanced_accuracy():
    y = np.repeat(np.arange(8), 10)
    s = evaluate.split_summary(y, np.roll(y, 3), CLASSES, "happy", n_boot=20)
    assert s["balanced"] and s["accuracy"] == pytest.approx(s["balanced_accuracy"])
    assert s["majority_accuracy"] == pytest.approx(1 / 8) and "balanced split" in s["protocol"]


def test_is_balanced_needs_every_class_within_ten_percent():
    assert evaluate.is_balanced([100, 110, 105])
    assert not evaluate.is_balanced([100, 111, 105])
    assert not evaluate.is_balanced([100, 0, 100])  # an absent class is not "balanced"


def test_one_scoring_definition_with_its_macro_f1_label_sets():
    """Training, evaluation and the data chapter share metrics.scores; the label set of macro-F1 is named."""
    y, guess = np.array([0, 0, 1, 1, 2]), np.full(5, 3)  # guessing a class the split lacks
    acc, bal, f1_seen = metrics.scores(y, guess)
    assert (acc, bal) == (0.0, 0.0) and f1_seen == 0.0
    assert metrics.scores(y, guess, f1_over="true")[2] == 0.0
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 3])
    assert metrics.scores(y, pred)[2] == pytest.approx(f1_score(y, pred, average="macro"))  # sklearn's own set
    assert metrics.scores(y, pred, f1_over="true")[2] == pytest.approx(f1_score(y, pred, labels=[0, 1],
                                                                                average="macro"))
    names = np.asarray(CLASSES, dtype=object)
    assert metrics.scores(names[y], names[pred]) == metrics.scores(y, pred)  # names or ids: the same numbers
    s = metrics.summary(y, pred, 4)
    assert (s["accuracy"], s["balanced_accuracy"], s["macro_f1"]) == metrics.scores(y, pred)
    with pytest.raises(ValueError, match="f1_over"):
        metrics.scores(y, pred, f1_over="all")


def test_ccc_is_lins_coefficient_for_numpy_and_torch_and_va_scores_skip_unannotated_faces():
    t, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 3.0, 5.0])
    # By hand: means 2.5 and 3, cov 1.25, variances 1.25 and 1.5 (1/n), shift 0.25: 2 * 1.25 / 3.
    assert metrics.ccc(t, p) == pytest.approx(2.5 / 3)
    assert metrics.ccc(torch.as_tensor(t), torch.as_tensor(p)).item() == pytest.approx(2.5 / 3)
    assert metrics.ccc(t, t) == pytest.approx(1) and metrics.ccc(t, 2 * t.mean() - t) == pytest.approx(-1)
    assert metrics.ccc(t, t + 1) < 1 and metrics.ccc(t, 2 * t) < 1  # a shift or a rescaling costs, unlike Pearson's r
    w = np.array([1.0, 1.0, 0.0, 1.0])  # weighted (training's loss): a face of weight 0 does not count
    assert metrics.ccc(t, p, w) == pytest.approx(metrics.ccc(t[w > 0], p[w > 0]))
    assert metrics.ccc(t, p, np.zeros(4), eps=1e-6) == 0  # nothing to score, yet finite
    true = np.array([[0.5, 0.1], [np.nan, np.nan], [-0.5, 0.3], [0.0, -0.4]])
    pred = np.array([[0.4, 0.0], [0.9, 0.9], [-0.6, 0.2], [0.1, -0.2]])
    s = metrics.valence_arousal_scores(true, pred)
    known = [0, 2, 3]
    assert s["va_n"] == 3 and set(s) == {*metrics.VA_SCORES, "va_n"}
    assert s["valence_ccc"] == pytest.approx(metrics.ccc(true[known, 0], pred[known, 0]))
    assert s["arousal_rmse"] == pytest.approx(np.sqrt(np.mean((true[known, 1] - pred[known, 1]) ** 2)))
    with pytest.raises(ValueError, match="no face has a valence annotation"):
        metrics.valence_arousal_scores(np.full((2, 2), np.nan), pred[:2])


def test_metrics_table_rows_for_the_front_page_and_the_model_card():
    m = dict(n=3589, accuracy=0.6234, balanced_accuracy=0.5812, macro_f1=0.5723, accuracy_ci=[0.61, 0.64],
             majority_class="happy", majority_balanced_accuracy=1 / 7, protocol="PublicTest")
    metrics_json = dict(val=m, checkpoint=dict(path="best.pt", epoch=3))  # checkpoint is not a split
    assert evaluate.metrics_header(run=True) == [
        "| run | split | accuracy | balanced accuracy | macro-F1 | protocol |", "|---|---|---|---|---|---|"]
    assert evaluate.metrics_rows(metrics_json, run="fer2013") == [
        "| fer2013 | val | 62.3% | 58.1% | 0.572 | PublicTest |"]
    assert len(evaluate.metrics_header(detail=True)[1].split("---")) == 8
    assert evaluate.metrics_rows(metrics_json, detail=True) == [
        "| val | 3589 | 62.3% (61.0% to 64.0%) | 58.1% | 0.572 | 14.3% (happy) | PublicTest |"]


def test_calibration_is_fitted_on_the_selection_split_and_scored_on_the_report_split(tmp_path):
    y, probs = fake_predictions(n=200, seed=4)
    ty, tprobs = fake_predictions(n=100, seed=5)
    for split, labels, p in (("val", y, probs), ("test", ty, tprobs)):
        frame = evaluate.predictions_frame([f"{split}/{i}.jpg" for i in range(len(labels))], labels, p, CLASSES)
        evaluate.save_predictions(frame, tmp_path, split)
    ds = SimpleNamespace(classes=CLASSES, splits=["train", "val", "test"])
    result = calibration.run(ds, tmp_path, seed=3)
    saved = json.loads((tmp_path / "calibration.json").read_text())
    val_probs, val_y = calibration.labelled_probs(evaluate.load_predictions(tmp_path, "val"), CLASSES)
    fitted = calibration.fit_temperature(val_probs, val_y)  # on val: all of it, nothing of test
    assert saved["fit_split"] == "val" and saved["report_split"] == "test" and saved["bins"] == calibration.N_BINS
    assert saved["temperature"] == fitted == result["temperature"]
    test_probs, test_y = calibration.labelled_probs(evaluate.load_predictions(tmp_path, "test"), CLASSES)
    scaled = calibration.apply_temperature(test_probs, fitted)
    assert saved["report"]["n"] == 100
    assert saved["report"]["ece_before"] == calibration.ece(test_probs, test_y) == result["report"]["ece_before"]
    assert saved["report"]["ece_after"] == calibration.ece(scaled, test_y)
    assert saved["report"]["nll_after"] == calibration.nll(scaled, test_y)
    expected = calibration.cross_fit_temperature(val_probs, val_y, seed=3)
    assert saved["selection"]["ece_after_heldout"] == expected["ece_after"]
    assert calibration.run(SimpleNamespace(classes=CLASSES, splits=["train", "val"]), tmp_path)["report"] is None


def test_ece_and_temperature_scaling():
    rng = np.random.default_rng(0)
    n, k = 20000, 4
    conf = rng.uniform(0.3, 1.0, n)
    pred = rng.integers(0, k, n)
    correct = rng.random(n) < conf  # right exactly as often as claimed
    y = np.where(correct, pred, (pred + rng.integers(1, k, n)) % k)
    probs = np.full((n, k), 0.0)
    probs[:] = ((1 - conf) / (k - 1))[:, None]
    probs[np.arange(n), pred] = conf
    assert calibration.ece(probs, y) < 0.02

    sharp = calibration.apply_temperature(probs, 0.4)  # same answers, overconfident
    assert (sharp.argmax(1) == pred).all()
    assert calibration.ece(sharp, y) > 0.1
    t = calibration.fit_temperature(sharp, y)
    assert 2.0 < t < 3.0  # undoes the 0.4 sharpening
    fixed = calibration.apply_temperature(sharp, t)
    assert calibration.nll(fixed, y) < calibration.nll(sharp, y)
    assert calibration.nll(sharp, y) == pytest.approx(log_loss(y, sharp))
    result = calibration.cross_fit_temperature(sharp, y)
    assert result["ece_after"] < result["ece_before"] and result["nll_after"] < result["nll_before"]
    table = calibration.reliability(sharp, y)
    assert len(table) == calibration.N_BINS and table["count"].sum() == n
    buckets = calibration.accuracy_by_confidence(sharp, y)
    assert buckets["count"].sum() == n and buckets["accuracy"].between(0, 1).all()


@pytest.mark.parametrize("name", ["baseline_cnn", "resnet"])
def test_grad_cam_and_occlusion_maps_have_the_input_size(name):
    torch.manual_seed(0)
    model = create_model(name, 4, 1, 32, width=8).eval()
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 32, 32), dtype=np.uint8)
    cam = saliency.grad_cam(model, x, targets=[0, 1, 2])
    assert cam.shape == (3, 32, 32) and np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert saliency.feature_layer(model) is not None
    assert all(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))  # restored
    occ = saliency.occlusion(model, x[:2], patch=8, stride=8)
    assert occ.shape == (2, 32, 32) and np.isfinite(occ).all()


def test_predict_normalises_as_training_does():
    torch.manual_seed(0)
    model = create_model("baseline_cnn", 3, 1, 32, width=8).eval()
    x = np.random.default_rng(1).integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
    y = np.arange(10) % 3
    probs = inference.predict(model, x, batch_size=4, device="cpu")
    assert probs.shape == (10, 3) and np.allclose(probs.sum(1), 1)
    reference = train.validate(model, torch.from_numpy(x), torch.from_numpy(y), 3, torch.device("cpu"))
    assert (probs.argmax(1) == reference["y_pred"]).all()


def _checkpoint(path, classes, model):
    checkpoint.save_checkpoint(dict(format=checkpoint.CHECKPOINT_FORMAT, model_config=model.config,
                               model=model.state_dict(), classes=list(classes), fingerprint="x"), path)


def test_checkpoint_with_other_classes_is_a_clear_error(folders_dataset, tmp_path):
    ds = read_folders(folders_dataset)
    model = create_model("baseline_cnn", len(ds.classes), 1, 32, width=8)
    run = tmp_path / "run"
    run.mkdir()
    _checkpoint(run / "best.pt", ds.classes, model)
    loaded, ckpt = evaluate.load_for_evaluation(dict(checkpoint="best"), run, ds)
    assert ckpt["path"] == run / "best.pt" and not loaded.training

    other = ["neutral", "happy", "sad", "surprise"]
    _checkpoint(run / "last.pt", other, model)
    with pytest.raises(checkpoint.CheckpointError) as err:
        evaluate.load_for_evaluation(dict(checkpoint="last"), run, ds)
    assert str(other) in str(err.value) and str(list(ds.classes)) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate.load_for_evaluation(dict(checkpoint=str(tmp_path / "nope.pt")), run, ds)


def test_figures_build_with_class_names(tmp_path):
    from fer_utils.analysis import figures

    y, probs = fake_predictions(n=120, seed=4)
    frame = evaluate.predictions_frame([f"{i}" for i in range(len(y))], y, probs, CLASSES)
    cm = evaluate.confusion(frame["true"], frame["predicted"], CLASSES)
    table = evaluate.per_class_table(frame["true"], frame["predicted"], CLASSES)
    s = evaluate.split_summary(y, probs.argmax(1), CLASSES, "happy", n_boot=20, split="val")
    faces = [np.full((48, 48), 10 * i, np.uint8) for i in range(5)]
    maps = np.random.default_rng(0).random((5, 48, 48))
    figs = [
        figures.confusion_matrices(cm), figures.confusion_bars(cm), figures.per_class_bars(table),
        figures.protocol_bars(evaluate.summary_table([s])),
        figures.reliability_diagram({"before": calibration.reliability(probs, y)}),
        figures.confidence_buckets(calibration.accuracy_by_confidence(probs, y)),
        figures.face_gallery(faces, ["a<br>b"] * 5, "gallery"),
        figures.saliency_gallery(faces, maps, ["a<br>b"] * 5, ["Grad-CAM"] * 5),
        figures.errors_valence_arousal(frame.assign(valence=0.1, arousal=-0.2), CLASSES),
        figures.compare_confusions({"a": cm, "b": cm}), figures.compare_f1({"a": table, "b": table}),
    ]
    heat = figures.confusion_matrices(cm).data[0]
    assert list(heat.x) == CLASSES and list(heat.y) == CLASSES
    for fig in figs:
        assert fig.to_plotly_json()["data"]
    overlay = figures.heat_overlay(faces[0], maps[0])
    assert overlay.shape == (48, 48, 3) and overlay.dtype == np.uint8
    with pytest.raises(ValueError, match="no faces"):
        figures.face_gallery([], [], "empty")


@pytest.mark.skipif(not Path(FER_DATA_DIR, "train").is_dir(),
                    reason="real FER2013 data absent (set FER_DATA_DIR to the unpacked fer2013/)")
def test_fer2013_evaluation_equals_what_training_reported(tmp_path, one_thread):
    """The evaluation chapter's path (its own decoding, its own model rebuilt from best.pt, scikit-learn)
    gives the validation scores the training chapter reported for the same checkpoint, on real JPEGs."""
    params = resolve(REPO / "params" / "fer2013.yaml",
                     dict(data_dir=FER_DATA_DIR, max_per_split=700, epochs=2, width=8, ablation=""))
    ds = open_dataset(params)
    result = train.fit(params, ds, tmp_path)
    model, ckpt = evaluate.load_for_evaluation(params, tmp_path, ds)
    assert ckpt["epoch"] == result["best_epoch"]
    frame, *_ = evaluate.predict_split(model, ckpt, ds, "val", 256)
    summary = evaluate.split_summary(frame["true"], frame["predicted"], ds.classes, evaluate.train_majority(ds),
                                     20, 0, "val")
    reported = result["best_metrics"]
    assert evaluate.reported_by_training(ckpt) == pytest.approx(
        (reported["val_accuracy"], reported["val_balanced_accuracy"], reported["val_macro_f1"]))
    assert summary["n"] == len(ds.split("val"))
    assert summary["accuracy"] == pytest.approx(reported["val_accuracy"], abs=1e-9)
    assert summary["balanced_accuracy"] == pytest.approx(reported["val_balanced_accuracy"], abs=1e-9)
    assert summary["macro_f1"] == pytest.approx(reported["val_macro_f1"], abs=1e-9)


def test_flip_tta_averages_the_logits_of_each_face_and_its_mirror():
    torch.manual_seed(0)
    model = create_model("regularized_cnn", 4, 1, 32, width=4).eval()
    x = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    _, logits = inference.predict(model, x, return_logits=True)
    _, mirrored = inference.predict(model, x.flip(-1), return_logits=True)
    probs, both = inference.predict(model, x, batch_size=4, return_logits=True, flip=True)
    assert both == pytest.approx((logits + mirrored) / 2, abs=1e-5)
    assert probs == pytest.approx(torch.softmax(torch.as_tensor(both), 1).numpy())
    symmetric = torch.cat([x[..., :16], x[..., :16].flip(-1)], -1)
    assert inference.predict(model, symmetric, flip=True) == pytest.approx(inference.predict(model, symmetric),
                                                                            abs=1e-6)


def test_decide_tta_on_val_macro_f1_or_as_forced():
    frame = lambda pred: pd.DataFrame(dict(true=["a", "a", "b", "b"], predicted=pred))
    plain, better = frame(["a", "b", "b", "b"]), frame(["a", "a", "b", "b"])
    decided = evaluate.decide_tta(plain, better, None)
    assert decided["used"] and decided["split"] == "val" and decided["decided_by"] == "val macro-F1"
    assert decided["val_macro_f1_flip"] == 1.0 and decided["val_macro_f1_plain"] < 1.0
    low, high = decided["difference_ci"]
    assert 0 <= low <= decided["val_macro_f1_flip"] - decided["val_macro_f1_plain"] <= high
    assert not evaluate.decide_tta(plain, plain, None)["used"]  # a tie keeps the plain protocol
    forced = evaluate.decide_tta(better, plain, True)
    assert forced["used"] and forced["decided_by"] == "forced by tta_flip=true"


def test_clean_label_scores_beside_the_noisy_ones():
    ds = SimpleNamespace(frame=pd.DataFrame(dict(location=["1", "2", "3", "4"], clean_emotion=["a", "a", "b", "b"])))
    frame = pd.DataFrame(dict(location=["1", "2", "3", "4"], true=["a", "b", "b", "b"], predicted=["a", "a", "b", "a"]))
    assert evaluate.clean_label_scores(ds, frame) == dict(clean_accuracy=0.75, label_agreement=0.75)
    assert evaluate.clean_label_scores(SimpleNamespace(frame=ds.frame.drop(columns="clean_emotion")), frame) == {}


def test_headline_is_the_report_split_choices_come_from_val_and_the_original_is_scored_beside(tmp_path, one_thread):
    """evaluate.run on a folder dataset whose own val split (the report split) holds copies of train images:
    metrics.json leads with test, scores test + test_dup as test_original, records the TTA decision made on
    val, and app.export still bundles it."""
    from conftest import face
    from fer_utils.app import export

    root = tmp_path / "fer"
    for split, offset, n in (("train", 0, 12), ("val", 5000, 4)):
        for i, cls in enumerate(["angry", "happy", "sad", "neutral"]):
            (root / split / cls).mkdir(parents=True)
            for j in range(n):
                face(offset + 100 * i + j).save(root / split / cls / f"{j}.png")
    face(0).save(root / "val" / "sad" / "copy_of_angry.png")  # a duplicate of a train image, another label
    face(101).save(root / "val" / "happy" / "copy_of_happy.png")
    params = resolve(None, dict(dataset="folders", data_dir=str(root), epochs=1, width=4, image_size=24,
                                batch_size=16, bootstrap=20, selection_fraction=0.25, ablation=""))
    ds = open_dataset(params)
    assert len(ds.split("test_dup")) == 2 and len(ds.split("test")) == 16
    run_dir = tmp_path / "run"
    train.fit(params, ds, run_dir)
    result = evaluate.run(params, ds, run_dir, "cpu")
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert list(evaluate.split_headlines(saved)) == ["test", "test_original", "val"]
    assert saved["test"]["role"] == "report split" and saved["val"]["role"] == "selection split"
    assert "published" in saved["test_original"]["role"]
    assert saved["test"]["n"] == 16 and saved["test_original"]["n"] == 18 and saved["val"]["n"] == len(ds.split("val"))
    assert saved["checkpoint"]["report_split"] == "test"
    # Folder data annotate no valence/arousal and the model has no head: nothing about them anywhere.
    assert result["valence_arousal"] == dict(head=False, annotated=False)
    assert not set(saved["test"]) & {*metrics.VA_SCORES, "va_n"} and len(evaluate.valence_arousal_table(result["summaries"])) == 0
    model, ckpt = evaluate.load_for_evaluation(params, run_dir, ds)
    plain, flipped = (evaluate.predict_split(model, ckpt, ds, "val", 64, flip=f)[0] for f in (False, True))
    assert saved["checkpoint"]["tta_flip"] == result["tta"] == evaluate.decide_tta(plain, flipped, None, 20, 0)
    assert result["recomputed"] == evaluate.reported_by_training(ckpt)
    original = evaluate.load_predictions(run_dir, "test_original")
    test = evaluate.load_predictions(run_dir, "test")
    assert set(original["location"]) == set(ds.frame.loc[ds.frame["split"].isin(["test", "test_dup"]), "location"])
    assert saved["test"]["accuracy"] == accuracy_score(test["true"], test["predicted"])
    assert "to" in evaluate.metrics_rows(saved, detail=True)[0] and "(report split)" in evaluate.metrics_rows(saved)[0]
    bundled = checkpoint.load_checkpoint(export.export_run(run_dir, tmp_path / "bundled.pt"))
    assert list(bundled["metrics"]) == ["test", "test_original", "val"]

    forced = evaluate.run(dict(params, tta_flip=True), ds, run_dir, "cpu")
    assert forced["tta"]["used"] and forced["summaries"][0]["tta"] and "mirror" in forced["summaries"][0]["protocol"]


def test_valence_arousal_head_learns_on_synthetic_faces_and_the_evaluation_scores_it(tmp_path, one_thread):
    """Synthetic faces carry valence and arousal: a model trained with va_weight > 0 predicts them, the
    evaluation writes CCC and RMSE per split to metrics.json and the predicted values to the predictions, and
    the head has learned (on the faces it was trained on: on 240 faces, unseen ones are noise). A model
    without the head on the same data is stated, not scored."""
    params = resolve(None, dict(dataset="synthetic", data_dir=str(tmp_path / "data"), synthetic_n_train=240,
                                synthetic_n_val=32, synthetic_n_test=32, synthetic_size=32, image_size=32,
                                model="regularized_cnn", width=8, epochs=8, batch_size=16, va_weight=1.0, bootstrap=20,
                                ablation="", checkpoint="last"))  # the epoch that trained longest
    ds = open_dataset(params)
    run_dir = tmp_path / "run"
    train.fit(params, ds, run_dir)
    result = evaluate.run(params, ds, run_dir, "cpu")
    assert result["valence_arousal"] == dict(head=True, annotated=True)
    saved = json.loads((run_dir / "metrics.json").read_text())
    for split in ("test", "val"):
        assert saved[split]["va_n"] == len(ds.split(split))
        assert all(np.isfinite(saved[split][k]) for k in (*metrics.VA_SCORES, *evaluate.VA_GUESSES))
    assert list(evaluate.valence_arousal_table(result["summaries"])["split"]) == ["test", "val"]
    test = evaluate.load_predictions(run_dir, "test")
    assert test[["predicted_valence", "predicted_arousal"]].abs().to_numpy().max() <= 1

    model, ckpt = evaluate.load_for_evaluation(params, run_dir, ds)
    seen = evaluate.predict_split(model, ckpt, ds, "train")[0]
    true = ds.frame.set_index("location").loc[seen["location"], ["valence", "arousal"]].to_numpy(np.float64)
    pred = seen[["predicted_valence", "predicted_arousal"]].to_numpy()
    rmse, always_the_mean = np.sqrt(((pred - true) ** 2).mean(0)), true.std(0)
    assert (rmse < 0.8 * always_the_mean).all(), (rmse, always_the_mean)
    assert min(metrics.ccc(true[:, i], pred[:, i]) for i in range(2)) > 0.5

    plain = create_model("regularized_cnn", len(ds.classes), 1, 32, 8)  # the same data, a checkpoint without the head
    other = tmp_path / "plain"
    other.mkdir()
    checkpoint.save_checkpoint({**{k: v for k, v in ckpt.items() if k not in ("path", "notes")},
                                "model_config": plain.config, "model": plain.state_dict()}, other / "last.pt")
    result = evaluate.run(params, ds, other, "cpu")
    assert result["valence_arousal"] == dict(head=False, annotated=True)
    assert "va_n" not in json.loads((other / "metrics.json").read_text())["test"]
    assert "predicted_valence" not in evaluate.load_predictions(other, "test")
