"""Predictions for uploaded photos (fer_utils.app.predict): which checkpoint, the API and the CLI's JSON lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fer_utils.app import faces, predict
from fer_utils.engine import inference
from fer_utils.engine.checkpoint import CheckpointError
from photos import FACE, FER2013_CLASSES, astronaut, encode, face_tiles, iou, noise, png_header, tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
needs_bundled = pytest.mark.skipif(
    not all(path.is_file() for path in predict.BUNDLED_MODELS.values()),
    reason="a bundled model of predict.BUNDLED_MODELS is not in this checkout")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def predictor(tiny):
    return predict.load_predictor(tiny)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    astronaut().save(d / "astronaut.png")
    face_tiles(12).save(d / "crowd.jpg", quality=92)
    noise().save(d / "noise.png")
    (d / "notes.txt").write_text("not a photo\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "cut.jpg").write_bytes(encode(astronaut(), "JPEG")[:3000])
    (d / "bomb.png").write_bytes(png_header(30000, 30000))
    return d


# -- which checkpoint ---------------------------------------------------------------

def test_given_checkpoint_is_used(tiny, predictor):
    assert predictor.source == "given" and predictor.path == tiny
    assert predictor.classes == FER2013_CLASSES and (predictor.image_size, predictor.channels) == (48, 1)
    text = predictor.describe()
    assert "checkpoint you gave" in text and str(tiny) in text and "macro-F1 0.100" in text
    assert predictor.warning() is None


def test_the_description_gives_the_report_split_score_when_the_checkpoint_has_one(tmp_path):
    """What the book reports (held out, under the headline protocol), not the optimistic selection split."""
    path = tiny_checkpoint(tmp_path / "scored.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["metrics"] = dict(test=dict(n=3309, accuracy=0.651, balanced_accuracy=0.595, macro_f1=0.611, tta=True))
    torch.save(ckpt, path)
    predictor = predict.load_predictor(path)
    text = predictor.describe()
    assert ("(flip TTA); on its report split (3,309 held-out faces): accuracy 65.1%, balanced accuracy 59.5%, "
            "macro-F1 0.611.") in text and "validation" not in text
    predictor.tta = False  # --no-tta: the score was not measured that way, and the description says so
    assert "(3,309 held-out faces, scored with flip TTA)" in predictor.describe()


def test_run_checkpoint_wins_over_the_bundled_one(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_MODELS", {"ferplus": tiny})
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    assert predict.load_predictor(run_dir=run).source == "bundled"  # no best.pt in the run yet
    tiny_checkpoint(run / "best.pt", seed=1)
    p = predict.load_predictor(run_dir=run)
    assert p.source == "run" and p.path == run / "best.pt" and "this run's checkpoint" in p.describe()


def test_no_checkpoint_anywhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_MODELS", {"ferplus": tmp_path / "weights" / "none.pt"})
    with pytest.raises(predict.NoCheckpointError, match="none.pt"):
        predict.load_predictor(run_dir=tmp_path)
    with pytest.raises(predict.NoCheckpointError, match="no checkpoint at"):
        predict.load_predictor(tmp_path / "missing.pt")


def bad_checkpoints(folder: Path, tiny: Path) -> dict[str, Path]:
    """Files named .pt that are not usable checkpoints: damaged ones and other programs' ones."""
    good = torch.load(tiny, weights_only=True)
    files = {"text": b"not a checkpoint", "empty": b"", "truncated": tiny.read_bytes()[:5000]}
    out = {}
    for name, data in files.items():
        out[name] = folder / f"{name}.pt"
        out[name].write_bytes(data)
    objects = {"state_dict_only": good["model"], "a_list": [1, 2, 3], "other_format": {**good, "format": 99},
               "no_classes": {k: v for k, v in good.items() if k != "classes"},
               "config_missing_width": {**good, "model_config": {k: v for k, v in good["model_config"].items()
                                                                 if k != "width"}},
               "unknown_model": {**good, "model_config": {**good["model_config"], "name": "vgg"}}}
    for name, obj in objects.items():
        out[name] = folder / f"{name}.pt"
        torch.save(obj, out[name])
    torch.save(torch.nn.Linear(2, 2), folder / "pickled_module.pt")  # weights_only refuses whole modules
    out["pickled_module"] = folder / "pickled_module.pt"
    return out


def test_damaged_or_foreign_checkpoint_is_refused_in_one_line(tmp_path, tiny):
    for name, path in bad_checkpoints(tmp_path, tiny).items():
        with pytest.raises(CheckpointError) as err:
            predict.load_predictor(path)
        assert str(err.value) == f"not a checkpoint of this project (or damaged): {path}", name
    good = torch.load(tiny, weights_only=True)
    wrong_shapes = tmp_path / "wrong_shapes.pt"
    torch.save({**good, "model_config": {**good["model_config"], "width": 8}}, wrong_shapes)
    with pytest.raises(CheckpointError) as err:
        predict.load_predictor(wrong_shapes)
    assert str(err.value) == f"{wrong_shapes}: weights do not fit the model 'resnet' it describes (damaged?)"


def test_cli_damaged_checkpoint_is_one_error_line_without_traceback(tmp_path, tiny):
    bad = bad_checkpoints(tmp_path, tiny)["truncated"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fer_utils", "predict", "face.png", "--checkpoint", str(bad)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: not a checkpoint of this project (or damaged): {bad}"], proc.stderr


@pytest.mark.parametrize("value, message", [("0", "must be at least 1, got 0"), ("-1", "must be at least 1, got -1"),
                                            ("two", "'two' is not a whole number")])
def test_cli_max_faces_below_one_is_a_usage_error(value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.main(["face.png", "--max-faces", value])  # refused before any checkpoint is loaded
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines()[-1].endswith(f"error: argument --max-faces: {message}"), err
    assert "Traceback" not in err


def test_a_synthetic_model_warns_about_real_photos(tmp_path):
    p = predict.load_predictor(tiny_checkpoint(tmp_path / "synth.pt", dataset="synthetic"))
    assert "synthetic" in p.warning()


# -- predict_image --------------------------------------------------------------------

def test_predict_image_gives_box_label_probabilities(predictor):
    result = predict.predict_image(encode(astronaut()), predictor, name="astronaut.png")
    assert len(result) == 1 and result.found == 1 and result.messages == []
    face = result[0]
    assert face.detected and iou(face.box, FACE) > 0.7
    assert list(face.probabilities) == FER2013_CLASSES
    assert sum(face.probabilities.values()) == pytest.approx(1, abs=1e-9)
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    assert face.crop.shape == (1, 48, 48)


@pytest.mark.parametrize("model, channels, size", [("resnet", 3, 64), ("baseline_cnn", 1, 48),
                                                   ("regularized_cnn", 3, 48)])
def test_any_architecture_channels_and_size(tmp_path, model, channels, size):
    p = predict.load_predictor(tiny_checkpoint(tmp_path / "m.pt", model=model, channels=channels, image_size=size))
    assert (p.channels, p.image_size) == (channels, size)
    face, = predict.predict_image(astronaut(), p)
    assert face.crop.shape == (channels, size, size)
    assert sum(face.probabilities.values()) == pytest.approx(1)


def test_predict_image_accepts_paths_and_pil_images(predictor, photo_dir):
    a = predict.predict_image(photo_dir / "astronaut.png", predictor)
    b = predict.predict_image(astronaut(), predictor)
    assert a[0].box == b[0].box and a[0].probabilities == pytest.approx(b[0].probabilities)


def test_predict_image_without_detection_and_with_many_faces(predictor):
    whole = predict.predict_image(astronaut(), predictor, detect=False)
    assert len(whole) == 1 and not whole[0].detected and whole[0].box == (0, 0, 512, 512)
    crowd = predict.predict_image(face_tiles(12), predictor)
    assert len(crowd) == 10 and crowd.found == 12 and "only the 10 largest" in crowd.messages[0]


def test_predict_image_bad_upload_raises_image_error(predictor):
    with pytest.raises(faces.ImageError, match="not an image"):
        predict.predict_image(b"GIF89a but not really", predictor, name="fake.gif")


# -- the CLI ------------------------------------------------------------------------

def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fer_utils.app.predict", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def _check_face_line(line: dict, file: str) -> None:
    assert set(line) == {"file", "face", "box", "detected", "label", "probabilities", "notes"}, line
    assert line["file"] == file
    assert isinstance(line["face"], int) and line["face"] >= 1
    assert len(line["box"]) == 4 and all(isinstance(v, int) for v in line["box"])
    assert line["box"][2] > 0 and line["box"][3] > 0
    assert list(line["probabilities"]) == FER2013_CLASSES
    assert all(0 <= p <= 1 for p in line["probabilities"].values())
    assert sum(line["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert line["label"] == max(line["probabilities"], key=line["probabilities"].get)
    assert isinstance(line["notes"], list)


def test_cli_one_json_line_per_face_and_error_lines(tiny, photo_dir):
    names = ["astronaut.png", "notes.txt", "crowd.jpg", "empty.jpg", "noise.png", "cut.jpg", "bomb.png",
             "missing.png"]
    proc = _cli(*[photo_dir / n for n in names], "--checkpoint", tiny)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    by_file = {}
    for line in lines:
        by_file.setdefault(Path(line["file"]).name, []).append(line)
    assert list(by_file) == names  # every file answered, in order, none stopped the others
    for name in ("notes.txt", "empty.jpg", "cut.jpg", "bomb.png", "missing.png"):
        assert len(by_file[name]) == 1 and set(by_file[name][0]) == {"file", "error"}, by_file[name]
    assert "not an image" in by_file["notes.txt"][0]["error"]
    assert "empty" in by_file["empty.jpg"][0]["error"]
    assert "truncated" in by_file["cut.jpg"][0]["error"]
    assert "too large" in by_file["bomb.png"][0]["error"]
    assert "no such file" in by_file["missing.png"][0]["error"]
    for name in ("astronaut.png", "crowd.jpg", "noise.png"):
        for i, line in enumerate(by_file[name], 1):
            _check_face_line(line, str(photo_dir / name))
            assert line["face"] == i
    assert len(by_file["astronaut.png"]) == 1 and iou(by_file["astronaut.png"][0]["box"], FACE) > 0.7
    assert len(by_file["crowd.jpg"]) == 10 and "12 faces were found" in by_file["crowd.jpg"][0]["notes"][0]
    noise_line, = by_file["noise.png"]
    assert noise_line["detected"] is False and noise_line["box"] == [0, 0, 400, 300]
    assert "No face was found" in noise_line["notes"][0]
    assert "checkpoint you gave" in proc.stderr and "5 of 8 files could not be read" in proc.stderr


def test_cli_no_detect_and_exit_codes(tiny, photo_dir, tmp_path, monkeypatch):
    proc = _cli(photo_dir / "astronaut.png", photo_dir / "crowd.jpg", "--checkpoint", tiny, "--no-detect")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 2 and not any(line["detected"] for line in lines)
    assert lines[0]["box"] == [0, 0, 512, 512]
    missing = _cli(photo_dir / "astronaut.png", "--checkpoint", tmp_path / "none.pt")
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr and missing.stdout == ""


def test_valence_and_arousal_are_answered_only_by_a_model_with_that_head(tmp_path, tiny, predictor, photo_dir):
    from fer_utils.app import demo

    headed = tiny_checkpoint(tmp_path / "va.pt", valence_arousal=True)
    proc = _cli(photo_dir / "astronaut.png", "--checkpoint", headed, "--no-detect")
    assert proc.returncode == 0, proc.stderr
    line, = [json.loads(text) for text in proc.stdout.splitlines()]
    assert list(line)[5:8] == ["probabilities", "valence", "arousal"]  # the face's answers together
    assert -1 <= line["valence"] <= 1 and -1 <= line["arousal"] <= 1
    _check_face_line({k: v for k, v in line.items() if k not in ("valence", "arousal")}, str(photo_dir / "astronaut.png"))
    face, = predict.predict_image(astronaut(), predict.load_predictor(headed), detect=False)
    assert demo.valence_arousal_text(face) == ", valence {:+.2f}, arousal {:+.2f}".format(*face.valence_arousal)
    assert "and valence and arousal" in predict.load_predictor(headed).describe()
    # Without the head: nothing extra anywhere (the JSON keys are checked exactly in _check_face_line).
    plain, = predict.predict_image(astronaut(), predictor, detect=False)
    assert plain.valence_arousal is None and demo.valence_arousal_text(plain) == ""
    assert "valence" not in predict.json_lines("a.png", predict.ImagePrediction(astronaut(), [plain], 1))[0]
    assert "valence" not in predictor.describe()


# -- the bundled model ----------------------------------------------------------------

@needs_bundled
def test_the_default_is_the_8_class_model_and_each_bundled_model_can_be_chosen():
    default = predict.load_predictor()
    assert default.source == "bundled" and default.path == predict.BUNDLED_MODELS["ferplus"]
    assert len(default.classes) == 8 and "contempt" in default.classes  # AffectNet's label set
    for name, path in predict.BUNDLED_MODELS.items():
        chosen = predict.load_predictor(bundled=name)
        assert chosen.path == path and chosen.source == "bundled" and chosen.warning() is None
        assert chosen.checkpoint["params"]["dataset"] != "synthetic"
    with pytest.raises(predict.NoCheckpointError, match="no bundled model 'affectnet'; bundled models: ferplus"):
        predict.load_predictor(bundled="affectnet")


@needs_bundled
@pytest.mark.parametrize("name", list(predict.BUNDLED_MODELS))
def test_every_bundled_model_sees_the_smiling_astronaut_as_happy(name):
    result = predict.predict_image(astronaut(), predict.load_predictor(bundled=name))
    assert len(result) == 1 and sum(result[0].probabilities.values()) == pytest.approx(1)
    assert result[0].label == "happy", result[0].probabilities


@needs_bundled
def test_cli_chooses_a_bundled_model_by_name(photo_dir):
    proc = _cli(photo_dir / "astronaut.png", "--model", "fer2013")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["probabilities"]) == 7
    assert f"Using the bundled model, {predict.BUNDLED_MODELS['fer2013']}" in proc.stderr
    assert _cli(photo_dir / "astronaut.png", "--model", "nope").returncode == 2


@needs_bundled
def test_bundled_model_is_in_the_package_data():
    text = (REPO / "pyproject.toml").read_text()
    assert "weights/*.pt" in text


def test_export_keeps_what_predicting_needs_and_nothing_machine_specific(tmp_path, one_thread):
    from conftest import TINY
    from fer_utils.analysis import evaluate
    from fer_utils.app import export
    from fer_utils.config import params as params_mod
    from fer_utils.engine import train
    from fer_utils.data.datasets import open_dataset

    params_file = tmp_path / "tiny.yaml"
    params_file.write_text(TINY + f"data_dir: {tmp_path / 'synthetic'}\n")
    params, run_dir = params_mod.resolve(params_file), tmp_path / "run"
    with pytest.raises(FileNotFoundError):
        export.export_run(run_dir, tmp_path / "x.pt")
    ds = open_dataset(params)
    train.fit(params, ds, run_dir)
    model, ckpt = evaluate.load_for_evaluation(params, run_dir, ds)
    frame, *_ = evaluate.predict_split(model, ckpt, ds, "val")
    evaluate.save_predictions(frame, run_dir, "val")
    summary = evaluate.split_summary(frame["true"], frame["predicted"], ds.classes, "happy", 20, 0, "val")
    evaluate.save_metrics([summary], run_dir, checkpoint=dict(path=str(ckpt["path"]), epoch=int(ckpt["epoch"])))

    out = export.export_run(run_dir, tmp_path / "weights" / "m.pt")
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert set(state) == set(export.KEEP) | {"metrics"}  # no provenance.json in this run folder
    assert state["params"]["data_dir"] is None and str(tmp_path) not in repr(state["params"])
    assert state["metrics"]["val"]["accuracy"] == summary["accuracy"]
    f1 = evaluate.per_class_table(frame["true"], frame["predicted"], ds.classes)["f1"].dropna()
    assert sum(state["metrics"]["val"]["f1_per_class"].values()) / len(f1) == pytest.approx(summary["macro_f1"])
    assert out.stat().st_size < (run_dir / "best.pt").stat().st_size
    photo = astronaut()
    exported = predict.predict_image(photo, predict.load_predictor(out))
    original = predict.predict_image(photo, predict.load_predictor(run_dir / "best.pt"))
    assert exported[0].probabilities == pytest.approx(original[0].probabilities)


# -- the protocol users get: the book's headline ----------------------------------------

def _with_metrics(tmp_path, tta: bool):
    """A tiny model exported with the evaluation's metrics (report split scored with or without flip TTA)."""
    path = tiny_checkpoint(tmp_path / f"tta-{tta}.pt", seed=3)
    ckpt = torch.load(path, weights_only=True)
    ckpt["metrics"] = {"test": {"accuracy": 0.5, "tta": tta}}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("tta", [True, False])
def test_cli_default_protocol_is_the_checkpoints_headline_protocol(tmp_path, tta):
    path = _with_metrics(tmp_path, tta)
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(encode(astronaut()))
    default, plain, flipped = (json.loads(_cli(photo, "--checkpoint", path, *flags).stdout.splitlines()[0])
                               for flags in ([], ["--no-tta"], ["--tta"]))
    assert default["probabilities"] == (flipped if tta else plain)["probabilities"]
    assert plain["probabilities"] != flipped["probabilities"]
    # the photo's one face, scored as inference.predict scores it: mean logits of the face and its mirror image
    predictor = predict.load_predictor(path)
    face = predict.predict_image(encode(astronaut()), predictor)[0]
    crop = torch.from_numpy(face.crop[None])
    expected = inference.predict(predictor.model, crop, flip=tta)[0]
    assert [face.probabilities[c] for c in predictor.classes] == pytest.approx(expected.tolist(), abs=1e-6)


def test_run_metrics_decide_the_protocol_only_for_the_checkpoint_they_scored(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "best.pt")
    (run / "metrics.json").write_text(json.dumps({"test": {"tta": True}, "checkpoint": {"path": str(run / "best.pt")}}))
    assert predict.load_predictor(run_dir=run).tta
    tiny_checkpoint(run / "last.pt")
    assert not predict.load_predictor(run / "last.pt").tta  # metrics.json scored best.pt, not this file
