"""Cross-dataset evaluation: a model trained on one folder dataset, scored on another whose classes overlap."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import face
from fer_utils.analysis import cross_dataset, evaluate, figures
from fer_utils.book import pipeline
from fer_utils.config.params import ParamsError, resolve
from fer_utils.data.datasets import DataError, open_dataset
from fer_utils.data.images import load_split
from fer_utils.engine import checkpoint, inference, train

MODEL_CLASSES = ["neutral", "happy", "sad", "anger"]  # what the folders below train (canonical names, id order)


def write_folders(root, split_counts: dict, offset: int, mode: str = "L", size: int = 24):
    """<split>/<class>/<j>.png with distinct random faces."""
    for split, classes in split_counts.items():
        for i, (cls, n) in enumerate(classes.items()):
            (root / split / cls).mkdir(parents=True)
            for j in range(n):
                face(offset + 100 * i + j, size=size, mode=mode).save(root / split / cls / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A 4-class model (angry, happy, sad, neutral) trained for one epoch on a tiny folder dataset, and a
    second folder dataset with only a test split: RGB, another size, classes happy, sad, neutral (shared),
    surprise (unknown to the model), one unreadable image and one folder that is no emotion."""
    tmp = tmp_path_factory.mktemp("cross")
    first = write_folders(tmp / "first", {"train": dict.fromkeys(["angry", "happy", "sad", "neutral"], 12),
                                          "val": dict.fromkeys(["angry", "happy", "sad", "neutral"], 4)}, 0)
    second = write_folders(tmp / "second", {"test": {"Happiness": 5, "sad": 4, "Neutral": 3, "surprised": 2}},
                           9000, mode="RGB", size=40)
    (second / "test" / "sad" / "broken.png").write_bytes(b"not a png")
    (second / "test" / "people").mkdir()
    face(1).save(second / "test" / "people" / "0.png")
    params = resolve(None, dict(dataset="folders", data_dir=str(first), epochs=1, width=4, image_size=24,
                                batch_size=16, bootstrap=20, selection_fraction=0.25, ablation="",
                                eval_dataset="folders", eval_data_dir=str(second)))
    run_dir = tmp / "run"
    train.fit(params, open_dataset(params), run_dir)
    return params, run_dir, tmp


def test_shared_classes_left_out_faces_and_unshared_answers_follow_the_stated_rules():
    """Hand-made answers: surprise faces are left out, an 'anger' answer (a class the dataset lacks) is wrong,
    and the scores are the hand computation over the shared classes present."""
    true = ["happy", "happy", "happy", "sad", "sad", "neutral", "surprise", "surprise"]
    pred = ["happy", "anger", "sad", "sad", "happy", "neutral", "happy", "anger"]
    r = cross_dataset.score(true, pred, MODEL_CLASSES, ["neutral", "happy", "sad", "surprise"])
    assert (r["shared"], r["model_only"], r["dataset_only"]) == (["neutral", "happy", "sad"], ["anger"], ["surprise"])
    assert r["faces"] == 8 and r["left_out"] == {"surprise": 2} and r["scored"] == 6
    assert r["unshared_predictions"] == {"anger": 1}  # the surprise face answered anger is not scored at all
    assert r["accuracy"] == pytest.approx(3 / 6)
    recall = dict(happy=1 / 3, sad=1 / 2, neutral=1.0)
    assert r["balanced_accuracy"] == pytest.approx(np.mean(list(recall.values())))
    f1 = dict(happy=2 * 1 / (3 + 2), sad=2 * 1 / (2 + 2), neutral=1.0)  # 2 TP / (true + predicted); no F1 for anger
    assert r["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    cm = cross_dataset.confusion_frame(r)
    assert list(cm.index) == ["neutral", "happy", "sad"] and list(cm.columns) == ["neutral", "happy", "sad", "anger"]
    assert cm.loc["happy", "anger"] == 1 and cm.to_numpy().sum() == 6 and np.trace(cm.to_numpy()) == 3
    table = cross_dataset.class_table(r).set_index("emotion")
    assert table.loc["happy", "answered_unshared"] == 1 and table.loc["sad", "recall"] == 0.5


def test_run_scores_the_checkpoint_on_a_second_dataset_by_class_name(trained):
    params, run_dir, _ = trained
    # the headline protocol is what the evaluation recorded in metrics.json: flip TTA here
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5, "tta": True}}))
    ds = cross_dataset.open_eval_dataset(params)
    result = cross_dataset.run(params, run_dir, "cpu", ds)

    assert result["split"] == "test" and result["dataset"] == "folders" and result["fingerprint"] == ds.fingerprint
    assert result["shared"] == ["neutral", "happy", "sad"]
    assert result["model_only"] == ["anger"] and result["dataset_only"] == ["surprise"]
    assert result["faces"] == 14 and result["left_out"] == {"surprise": 2} and result["scored"] == 12
    assert result["skipped"] == {"unreadable image": 1, "unknown class folder": 1}
    assert result["tta"] is True
    assert result["seen"] == {"train": 0, "val": 0} and result["unseen"] is None  # other faces than the model's
    assert json.loads((run_dir / cross_dataset.FILE).read_text()) == result

    saved = evaluate.load_predictions(run_dir, cross_dataset.PREDICTIONS)  # what a reader of the run folder sees
    assert len(saved) == 12 and set(saved["true"]) == {"neutral", "happy", "sad"}
    model, ckpt = evaluate.load_for_evaluation(params, run_dir)
    assert ckpt["model_config"]["image_size"] == 24 and ckpt["model_config"]["in_channels"] == 1
    x, _, locations = load_split(ds, "test", 24, 1)
    probs = pd.DataFrame(inference.predict(model, x, flip=True), index=locations)
    assert np.allclose(probs.loc[saved["location"]].to_numpy(), evaluate.prob_columns(saved, MODEL_CLASSES), atol=1e-6)
    t, p = saved["true"], saved["predicted"]
    assert result["accuracy"] == pytest.approx((t == p).mean())
    assert result["balanced_accuracy"] == pytest.approx(np.mean([(p[t == c] == c).mean() for c in result["shared"]]))
    f1 = [2 * ((t == c) & (p == c)).sum() / ((t == c).sum() + (p == c).sum()) for c in result["shared"]]
    assert result["macro_f1"] == pytest.approx(np.mean(f1))
    assert result["unshared_predictions"] == ({"anger": int((p == "anger").sum())} if (p == "anger").any() else {})

    text = cross_dataset.describe(result)
    for claim in ("share 3: neutral, happy, sad", "surprise is unknown to the model: those 2 faces are left out",
                  "anger does not exist in this dataset", "counts as wrong", "on folders test",
                  "1 (unreadable image)", f"{result['accuracy']:.1%}",
                  "None of the scored faces is a copy of a face the model was trained or selected on"):
        assert claim in text
    fig = figures.confusion_matrices(cross_dataset.confusion_frame(result))
    assert list(fig.data[0].x) == ["neutral", "happy", "sad", "anger"] and list(fig.data[0].y) == result["shared"]


def test_an_answer_of_a_class_the_second_dataset_lacks_counts_as_wrong(trained):
    """The trained checkpoint rewired to answer 'anger' for every face: every scored face is wrong."""
    params, run_dir, tmp = trained
    ckpt = checkpoint.load_checkpoint(run_dir / "best.pt")
    head = [k for k, v in ckpt["model"].items() if k.endswith(".bias") and v.shape == (4,)][-1]
    ckpt["model"][head.replace(".bias", ".weight")] = torch.zeros_like(ckpt["model"][head.replace(".bias", ".weight")])
    ckpt["model"][head] = torch.tensor([0.0, 0.0, 0.0, 5.0])
    checkpoint.save_checkpoint(ckpt, tmp / "anger.pt")
    result = cross_dataset.run(dict(params, checkpoint=str(tmp / "anger.pt")), run_dir, "cpu")
    assert result["unshared_predictions"] == {"anger": 12} and result["scored"] == 12
    assert result["accuracy"] == result["balanced_accuracy"] == result["macro_f1"] == 0.0


def test_faces_the_model_trained_on_are_counted_and_the_scores_given_without_them(trained, tmp_path):
    """A second dataset holding byte-for-byte copies of 3 training faces among 8 new ones (as FER+ holds
    FER2013's images): the copies are counted by the split they came from, and the scores without them are
    the hand computation over the other faces; scored on the model's own train split, every face is seen."""
    params, run_dir, tmp = trained
    second = write_folders(tmp_path / "second", {"test": {"happy": 4, "sad": 4}}, 7000)
    copied = sorted((tmp / "first" / "train" / "happy").glob("*.png"))[:3]
    for i, source in enumerate(copied):
        (second / "test" / "happy" / f"copy{i}.png").write_bytes(source.read_bytes())
    p = dict(params, eval_data_dir=str(second))
    train_ds = open_dataset(params)
    result = cross_dataset.run(p, run_dir, "cpu", train_ds=train_ds)
    assert result["scored"] == 11 and sum(result["seen"].values()) == 3
    names = {loc: split for loc, split in zip(train_ds.frame["location"], train_ds.frame["split"])}
    from_split = [names[str(c.relative_to(tmp / "first"))] for c in copied]
    assert result["seen"] == {s: from_split.count(s) for s in ("train", "val")}
    saved = evaluate.load_predictions(run_dir, cross_dataset.PREDICTIONS)
    fresh = saved[~saved["location"].str.contains("copy")]
    t, pr = fresh["true"], fresh["predicted"]
    assert result["unseen"]["scored"] == 8 and result["unseen"]["accuracy"] == pytest.approx((t == pr).mean())
    assert result["unseen"]["balanced_accuracy"] == pytest.approx(np.mean([(pr[t == c] == c).mean()
                                                                           for c in ("happy", "sad")]))
    text = cross_dataset.describe(result)
    assert "**3 of the 11 faces scored are copies of faces of the model's own data**" in text
    assert f"on the 8 faces it has never seen: **{result['unseen']['accuracy']:.1%}** accuracy" in text

    own = cross_dataset.run(dict(params, eval_data_dir=params["data_dir"], eval_split="train"), run_dir, "cpu")
    assert own["seen"] == {"train": own["scored"], "val": 0} and own["unseen"] is None
    assert "No scored face is left without them" in cross_dataset.describe(own)

    other_data = dict(params, data_dir=str(second))  # the checkpoint was not trained on this: nothing to compare
    unchecked = cross_dataset.run(p, run_dir, "cpu", train_ds=open_dataset(other_data))
    assert unchecked["seen"] is None and unchecked["unseen"] is None
    assert "is not checked: the checkpoint was not trained on this run's data" in cross_dataset.describe(unchecked)


def test_bad_second_dataset_settings_are_one_line_errors(trained, tmp_path):
    params, run_dir, tmp = trained
    with pytest.raises(ParamsError, match="'eval_data_dir' = .* needs 'eval_dataset'"):
        resolve(None, dict(eval_data_dir=str(tmp_path)))
    with pytest.raises(ParamsError, match="'eval_split' = 'val' needs 'eval_dataset'"):
        resolve(None, dict(eval_split="val"))
    with pytest.raises(ParamsError, match="'eval_dataset' = 'imagenet'; allowed: synthetic"):
        resolve(None, dict(eval_dataset="imagenet"))
    errors = []
    for bad in (dict(eval_data_dir=str(tmp_path / "missing")), dict(eval_data_dir=None),
                dict(eval_dataset="fer2013_csv", eval_data_dir=str(tmp / "second"))):
        with pytest.raises(DataError) as err:
            cross_dataset.open_eval_dataset(dict(params, **bad))
        errors.append(str(err.value))
    assert "does not exist" in errors[0] and str(tmp_path / "missing") in errors[0]
    assert "needs eval_data_dir" in errors[1] and "fer2013.csv" in errors[2]
    assert all(e.startswith("eval_dataset '") for e in errors)
    ds = cross_dataset.open_eval_dataset(params)
    with pytest.raises(DataError) as err:
        cross_dataset.split_to_score(ds, dict(params, eval_split="heldout"))
    errors.append(str(err.value))
    assert "no such split; it has test" in errors[-1]
    other = write_folders(tmp_path / "other", {"test": {"surprise": 2, "fear": 2}}, 500)
    with pytest.raises(DataError) as err:
        cross_dataset.run(dict(params, eval_data_dir=str(other)), run_dir, "cpu")
    errors.append(str(err.value))
    assert "share none" in errors[-1] and "neutral, happy, sad, anger" in errors[-1]
    assert not any("\n" in e for e in errors)


def test_without_eval_dataset_the_chapter_says_how_to_enable_it():
    assert resolve(None)["eval_dataset"] is None
    text = cross_dataset.describe(None)
    assert "`eval_dataset`" in text and "`eval_data_dir`" in text and "\n" not in text


def test_the_pipeline_re_executes_chapters_when_the_second_dataset_changes(trained, tmp_path, monkeypatch):
    """The chapters' cache key covers the second dataset's fingerprint, not only its params."""
    params, _, tmp = trained
    params_file = tmp_path / "cross.yaml"
    params_file.write_text("\n".join(f"{k}: {json.dumps(params[k])}" for k in (
        "dataset", "data_dir", "eval_dataset", "eval_data_dir")) + "\nrun_name: test-cross-dataset-dry-run\n")
    keys = []
    monkeypatch.setattr(pipeline, "cache_key", lambda notebook, p, data_key: keys.append(data_key))
    pipeline.run(params_file, {}, dry_run=True)
    added = tmp / "second" / "test" / "Happiness" / "new.png"
    face(77).save(added)
    try:
        pipeline.run(params_file, {}, dry_run=True)
    finally:
        added.unlink()
    first, second = keys[0], keys[-1]
    assert first.split("+")[0] == second.split("+")[0] and first != second
