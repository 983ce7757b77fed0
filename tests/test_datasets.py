"""Readers: every format gives the same manifest; bad input is skipped and counted, never a crash."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FER_DATA_DIR, face
from fer_utils.data import labels
from fer_utils.data.datasets import (DataError, fingerprint, open_dataset, read_affectnet_csv, read_affectnet_mini,
                                read_fer2013_csv, read_ferplus, read_folders)
from fer_utils.data.explore import class_counts, majority_baseline
from fer_utils.data.images import load_split
from fer_utils.config.params import resolve


def test_labels_map_by_name_not_position():
    assert labels.canonical("Angry") == labels.canonical("anger") == "anger"
    assert labels.canonical("HAPPINESS") == "happy"
    assert labels.canonical("not-an-emotion") is None
    # FER2013 id 0 is anger, AffectNet id 0 is neutral: the class list follows AffectNet order.
    assert labels.class_list(labels.FER2013_IDS) == ("neutral", "happy", "sad", "surprise", "fear", "disgust",
                                                     "anger")


def test_folders_reader_synonyms_and_own_class_list(folders_dataset):
    ds = read_folders(folders_dataset)
    assert ds.classes == ("neutral", "happy", "sad", "anger")
    assert ds.splits == ["train", "val"]
    assert len(ds.split("train")) == 12
    assert set(ds.frame.columns) >= {"location", "label", "emotion", "split"}
    assert (ds.frame["label"] == ds.frame["emotion"].map(ds.classes.index)).all()


def test_corrupt_and_non_image_files_are_skipped_and_counted(folders_dataset):
    happy = folders_dataset / "train" / "happy"
    (happy / "notes.txt").write_text("not an image")
    (happy / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = happy / "0.png"
    (happy / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    ds = read_folders(folders_dataset)
    ds.fingerprint = fingerprint(ds)
    x, y, locations = load_split(ds, "train", 16, cache=False)
    assert x.shape == (12, 1, 16, 16) and x.dtype == np.uint8 and len(y) == len(locations) == 12
    reasons = dict(zip(ds.skipped["location"], ds.skipped["reason"]))
    assert reasons["train/happy/notes.txt"] == "not an image file"
    assert reasons["train/happy/broken.png"].startswith("unreadable image")
    assert reasons["train/happy/truncated.png"].startswith("unreadable image")
    counts = ds.skip_counts().set_index("reason")["count"]
    assert counts["unreadable image"] == 2 and counts["not an image file"] == 1
    assert len(ds.split("train")) == 12  # the manifest only keeps what decodes


def test_unknown_class_folder_and_empty_class_are_reported(folders_dataset):
    (folders_dataset / "train" / "bored").mkdir()
    face(1).save(folders_dataset / "train" / "bored" / "a.png")
    (folders_dataset / "val" / "contempt").mkdir()
    ds = read_folders(folders_dataset)
    assert "contempt" not in ds.classes  # an empty class is not a class pretending to be measured
    assert any("val/contempt" in n and "empty" in n for n in ds.notes)
    assert ds.skipped["reason"].tolist() == ["unknown class folder: bored"]


def test_class_absent_from_one_split_is_noted(folders_dataset):
    for f in (folders_dataset / "val" / "happy").iterdir():
        f.unlink()
    ds = read_folders(folders_dataset)
    assert "happy" in ds.classes
    assert "split 'val' has no images of: happy" in ds.notes
    assert class_counts(ds).loc["happy", "val"] == 0


def test_affectnet_mini_drops_non_emotions_and_unknown_ids(affectnet_mini):
    ds = read_affectnet_mini(affectnet_mini)
    assert ds.classes == labels.EMOTIONS
    assert len(ds.split("train")) == 9 and len(ds.split("val")) == 8
    reasons = sorted(ds.skipped["reason"])
    assert reasons == ["label outside the known set: 12", "not an emotion: 10 (no-face)",
                       "not an emotion: 8 (none)", "not an emotion: 9 (uncertain)"]
    row = ds.frame.iloc[0]
    assert row["valence"] == 0.25 and row["arousal"] == -0.5 and row["landmarks"].shape == (68, 2)


def test_affectnet_csv_crops_to_face_box(affectnet_csv):
    ds = read_affectnet_csv(affectnet_csv)
    assert ds.classes == ("neutral", "happy", "sad", "surprise", "anger", "contempt")
    assert sorted(ds.skipped["reason"]) == ["file not found", "not an emotion: 8 (none)"]
    ds.fingerprint = fingerprint(ds)
    from fer_utils.data.images import open_image
    assert open_image(ds, ds.frame.iloc[0]).size == (20, 24)
    x, _, _ = load_split(ds, "val", 32, channels=3, cache=False)
    assert x.shape == (3, 3, 32, 32)


def test_fer2013_csv_splits_and_bad_rows(fer2013_csv):
    ds = read_fer2013_csv(fer2013_csv)
    assert len(ds.classes) == 7 and "contempt" not in ds.classes
    assert ds.splits == ["train", "val", "test"]
    assert sorted(ds.skipped["reason"]) == ["bad pixel row", "label outside the known set: 9"]
    # Row 0 is FER2013 id 0 = anger, whatever position anger has in our class list.
    assert ds.frame.set_index("location").loc["row:0", "emotion"] == "anger"
    ds.fingerprint = fingerprint(ds)
    x, y, _ = load_split(ds, "train", 48, cache=False)
    assert x.shape[1:] == (1, 48, 48)


def test_fer2013_csv_gz(fer2013_csv):
    table = pd.read_csv(fer2013_csv / "fer2013.csv")
    (fer2013_csv / "fer2013.csv").unlink()
    table.to_csv(fer2013_csv / "fer2013.csv.gz", index=False)
    assert len(read_fer2013_csv(fer2013_csv).frame) == 14


def test_ferplus_majority_ties_and_non_faces(folders_dataset):
    cols = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
    votes = [
        ("train/happy/0.png", [0, 8, 0, 0, 0, 0, 0, 2, 0, 0]),   # happy
        ("train/happy/1.png", [0, 1, 0, 0, 0, 0, 0, 9, 0, 0]),   # contempt
        ("train/happy/2.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),   # tie
        ("val/neutral/0.png", [1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),   # not a face
        ("val/neutral/1.png", [0, 0, 0, 0, 2, 0, 0, 0, 8, 0]),   # unknown wins
        ("val/neutral/2.png", [0, 0, 0, 7, 3, 0, 0, 0, 0, 0]),   # sad
    ]
    # Shuffle the column order: votes are matched by name, never by position.
    table = pd.DataFrame([[p] + v for p, v in votes], columns=["path"] + cols)
    table = table[["path"] + cols[::-1]]
    table.to_csv(folders_dataset / "ferplus_votes.csv", index=False)
    ds = read_ferplus(folders_dataset)
    assert dict(zip(ds.frame["location"], ds.frame["emotion"])) == {
        "train/happy/0.png": "happy", "train/happy/1.png": "contempt", "val/neutral/2.png": "sad"}
    assert sorted(ds.skipped["reason"]) == ["majority vote is not an emotion: NF",
                                            "majority vote is not an emotion: unknown", "tied vote"]


def test_missing_or_wrong_folder_names_path_and_layout(tmp_path, folders_dataset):
    with pytest.raises(DataError, match=r"nowhere.*Expected layout.*<split>/<class>"):
        open_dataset(resolve(None, dict(dataset="folders", data_dir=str(tmp_path / "nowhere"))))
    with pytest.raises(DataError, match=r"train_set/ and val_set/"):
        open_dataset(resolve(None, dict(dataset="affectnet_mini", data_dir=str(folders_dataset))))
    with pytest.raises(DataError, match="FER_DATA_DIR"):
        open_dataset(resolve(None, dict(dataset="fer2013_csv")))


def test_majority_baseline_on_imbalanced_and_balanced_splits(affectnet_mini):
    ds = read_affectnet_mini(affectnet_mini)
    table = majority_baseline(ds).set_index("split")
    assert table.loc["train", "guess"] == "happy"
    assert table.loc["train", "accuracy"] == pytest.approx(2 / 9)
    assert table.loc["val", "accuracy"] == pytest.approx(1 / 8)            # balanced: 1/K
    assert table.loc["val", "balanced_accuracy"] == pytest.approx(1 / 8)


def test_fingerprint_changes_with_labels(folders_dataset):
    a = fingerprint(read_folders(folders_dataset))
    assert a == fingerprint(read_folders(folders_dataset))
    (folders_dataset / "train" / "happy" / "0.png").rename(folders_dataset / "train" / "Angry" / "9.png")
    assert fingerprint(read_folders(folders_dataset)) != a


real = pytest.mark.skipif(not Path(FER_DATA_DIR, "train").is_dir(),
                          reason="real FER2013 data absent (set FER_DATA_DIR to the unpacked fer2013/)")


@real
def test_real_fer2013_counts():
    ds = open_dataset(resolve(Path("params/fer2013.yaml"), dict(data_dir=FER_DATA_DIR)))
    counts = class_counts(ds)
    assert counts.sum().to_dict() == {"train": 28709, "val": 3589}
    assert len(ds.classes) == 7
    assert counts.loc["disgust", "train"] == 436 and counts.loc["happy", "train"] == 7215


@real
def test_real_ferplus_has_eight_classes():
    ds = open_dataset(resolve(Path("params/ferplus.yaml"), dict(data_dir=FER_DATA_DIR)))
    assert ds.classes == labels.EMOTIONS
    assert len(ds.frame) + len(ds.skipped) == 32139
    assert set(ds.skipped["reason"]) <= {"tied vote", "majority vote is not an emotion: unknown",
                                         "majority vote is not an emotion: NF", "no votes"}


def test_synthetic_output_read_back_by_affectnet_mini_reader(tmp_path):
    from fer_utils.data import synthetic
    root = synthetic.generate(tmp_path / "syn", n_train=400, n_val=40, size=32, seed=3)
    ds = read_affectnet_mini(root, fmt="synthetic")
    assert ds.classes == labels.EMOTIONS and ds.skipped.empty
    train = ds.split("train")["label"].value_counts(normalize=True).sort_index()
    for label_id, share in synthetic.AFFECTNET_SHARES.items():
        assert abs(train[label_id] - share) <= 0.01
    assert set(ds.split("val")["label"].value_counts()) == {5}  # balanced
    assert ds.frame["valence"].between(-1, 1).all() and ds.frame["landmarks"].map(len).eq(68).all()
