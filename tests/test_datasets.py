"""Readers: every format gives the same manifest; bad input is skipped and counted, never a crash."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FER_DATA_DIR, face
from fer_utils.data import datasets, labels, splits
from fer_utils.data.datasets import (DataError, fingerprint, landmarks, manifest_bytes, open_dataset,
                                read_affectnet_csv, read_affectnet_mini, read_fer2013_csv, read_ferplus, read_folders)
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
    assert row["valence"] == 0.25 and row["arousal"] == -0.5
    assert landmarks(ds, [row["location"]])[0].shape == (68, 2)


def test_affectnet_mini_annotations_are_read_once_until_a_file_changes(affectnet_mini, monkeypatch):
    """Each chapter opens the data again: the annotations' values come from .cache/manifests/ while every file
    of the split folders keeps its name, size and modification time; a changed, added or removed file, or an
    unreadable cache, reads them all again. Served from the cache, the manifest is the same, skips included."""
    first = read_affectnet_mini(affectnet_mini)

    def not_read(path):
        raise AssertionError(f"{path} was read")

    with monkeypatch.context() as mp:
        mp.setattr(datasets, "_npy_scalar", not_read)
        again = read_affectnet_mini(affectnet_mini)
        pd.testing.assert_frame_equal(again.frame, first.frame)
        pd.testing.assert_frame_equal(again.skipped, first.skipped)
        assert manifest_bytes(again.frame) == manifest_bytes(first.frame)  # labels shared, as the reader's are
        np.save(affectnet_mini / "val_set" / "annotations" / "0_exp.npy", np.array("1"))  # neutral -> happy
        with pytest.raises(AssertionError, match="was read"):
            read_affectnet_mini(affectnet_mini)
    changed = read_affectnet_mini(affectnet_mini).frame.set_index("location")
    assert changed.loc["val_set/images/0.jpg", "emotion"] == "happy"
    (affectnet_mini / "val_set" / "annotations" / "1_aro.npy").unlink()  # gone: that face has no arousal
    latest = read_affectnet_mini(affectnet_mini).frame
    assert np.isnan(latest.set_index("location").loc["val_set/images/1.jpg", "arousal"])
    for cache in datasets.MANIFEST_CACHE_DIR.glob("*.npz"):
        cache.write_bytes(b"not an npz")
    pd.testing.assert_frame_equal(read_affectnet_mini(affectnet_mini).frame, latest)


def test_affectnet_csv_crops_to_face_box(affectnet_csv):
    ds = read_affectnet_csv(affectnet_csv)
    assert ds.classes == ("neutral", "happy", "sad", "surprise", "anger", "contempt")
    assert sorted(ds.skipped["reason"]) == ["file not found", "not an emotion: 8 (none)"]
    ds.fingerprint = fingerprint(ds)
    assert all((points == 10.0).all() and points.shape == (68, 2) for points in landmarks(ds, ds.frame["location"]))
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


FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                   "NF"]


@pytest.mark.parametrize("votes, majority, plurality", [
    ([0, 8, 0, 0, 0, 0, 0, 2, 0, 0], 1, 1),                     # clear winner
    ([2, 1, 1, 1, 1, 1, 1, 1, 1, 0], 0, 0),                     # single votes dropped: 2 of 2 remaining
    ([4, 3, 3, 0, 0, 0, 0, 0, 0, 0], "no FER+ majority", 0),    # 40%: a plurality, not a majority
    ([5, 3, 1, 1, 0, 0, 0, 0, 0, 0], 0, 0),                     # 5 of 8 once the two single votes go
    ([6, 4, 0, 0, 0, 0, 0, 0, 0, 0], 0, 0),                     # 60% > 50%
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "no FER+ majority", "tied plurality vote"),  # exactly half: no winner
    ([3, 3, 2, 2, 0, 0, 0, 0, 0, 0], "no FER+ majority", "tied plurality vote"),
    ([1] * 10, "no FER+ majority", "tied plurality vote"),      # only single votes: nothing is left
    ([2, 0, 0, 0, 0, 0, 0, 0, 0, 8], "majority vote is not an emotion: NF", "plurality vote is not an emotion: NF"),
    ([0, 0, 0, 0, 2, 0, 0, 0, 5, 3], "no FER+ majority", "plurality vote is not an emotion: unknown"),
    ([0] * 10, "no votes", "no votes"),
])
def test_ferplus_rules_on_hand_made_votes(votes, majority, plurality):
    for rule, expected in (("majority", majority), ("plurality", plurality)):
        top, reason = labels.ferplus_winner(votes, FERPLUS_COLUMNS, 8, rule)
        if isinstance(expected, int):
            assert (top, reason) == (expected, None), rule
        else:
            assert top == -1 and reason.startswith(expected), rule
    with pytest.raises(ValueError, match="majority"):
        labels.ferplus_winner(votes, FERPLUS_COLUMNS, 8, "mean")


def _write_votes(root: Path, votes: list[tuple[str, list[int]]]) -> None:
    table = pd.DataFrame([[p] + v for p, v in votes], columns=["path"] + FERPLUS_COLUMNS)
    # Shuffle the column order: votes are matched by name, never by position.
    table[["path"] + FERPLUS_COLUMNS[::-1]].to_csv(root / "ferplus_votes.csv", index=False)


def test_ferplus_reader_rules_skipped_reasons_and_vote_shares(folders_dataset):
    _write_votes(folders_dataset, [
        ("train/happy/0.png", [0, 8, 0, 0, 0, 0, 0, 2, 0, 0]),   # happy under both
        ("train/happy/1.png", [0, 1, 0, 0, 0, 0, 0, 9, 0, 0]),   # contempt under both
        ("train/happy/2.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),   # tie: dropped by both
        ("val/neutral/0.png", [1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),   # not a face
        ("val/neutral/1.png", [4, 0, 0, 3, 3, 0, 0, 0, 0, 0]),   # neutral by plurality only
        ("val/neutral/2.png", [0, 0, 0, 7, 3, 0, 0, 0, 0, 0]),   # sad
    ])
    majority = read_ferplus(folders_dataset)  # the FER+ paper's rule is the default
    assert dict(zip(majority.frame["location"], majority.frame["emotion"])) == {
        "train/happy/0.png": "happy", "train/happy/1.png": "contempt", "val/neutral/2.png": "sad"}
    assert dict(zip(majority.skipped["location"], majority.skipped["reason"])) == {
        "train/happy/2.png": labels.FERPLUS_NO_MAJORITY, "val/neutral/0.png": "majority vote is not an emotion: NF",
        "val/neutral/1.png": labels.FERPLUS_NO_MAJORITY}
    plurality = read_ferplus(folders_dataset, rule="plurality")
    assert plurality.frame.set_index("location").loc["val/neutral/1.png", "emotion"] == "neutral"
    assert sorted(plurality.skipped["reason"]) == ["plurality vote is not an emotion: NF", "tied plurality vote"]
    # soft labels: the raw emotion votes as shares (unknown / not-a-face left out)
    shares = majority.frame.set_index("location").filter(like="votes_")
    assert list(shares.columns) == [f"votes_{e}" for e in labels.EMOTIONS]
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert shares.loc["train/happy/0.png", "votes_happy"] == pytest.approx(0.8)
    assert shares.loc["train/happy/1.png", "votes_contempt"] == pytest.approx(0.9)


def test_ferplus_official_folder_names_map_and_unknown_folders_are_refused(tmp_path):
    root = tmp_path / "ferplus"
    for f, folder in enumerate(("FER2013Train", "FER2013Valid", "FER2013Test")):
        (root / folder).mkdir(parents=True)
        for j in range(4):
            face(10 * f + j).save(root / folder / f"fer{j}.png")
    votes = [(f"{folder}/fer{j}.png", [0, 8, 0, 0, 0, 0, 0, 0, 0, 0] if j % 2 else [7, 0, 3, 0, 0, 0, 0, 0, 0, 0])
             for folder in ("FER2013Train", "FER2013Valid", "FER2013Test") for j in range(4)]
    _write_votes(root, votes)
    ds = read_ferplus(root)
    origin = dict(zip(ds.frame["location"].str.split("/").str[0], ds.frame["split"]))
    assert origin == {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
    roles = open_dataset(resolve(None, dict(dataset="ferplus", data_dir=str(root), selection_fraction=0.4)))
    assert set(roles.split("heldout")["location"].str.split("/").str[0]) == {"FER2013Test"}  # never trained on
    assert set(roles.split("test")["location"].str.split("/").str[0]) == {"FER2013Valid"}
    _write_votes(root, votes + [("FER2013Private/fer0.png", [0, 8, 0, 0, 0, 0, 0, 0, 0, 0])])
    with pytest.raises(DataError, match="'FER2013Private'"):
        read_ferplus(root)


def test_missing_or_wrong_folder_names_path_and_layout(tmp_path, folders_dataset, monkeypatch):
    monkeypatch.delenv("FER_DATA_DIR", raising=False)  # no folder given anywhere: the error names the variable
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
def test_real_fer2013_counts_roles_and_duplicates():
    ds = open_dataset(resolve(Path("params/fer2013.yaml"), dict(data_dir=FER_DATA_DIR)))
    own = pd.crosstab(ds.frame["emotion"], ds.frame["origin"])
    assert own.sum().to_dict() == {"train": 28709, "val": 3589}
    assert len(ds.classes) == 7
    assert own.loc["disgust", "train"] == 436 and own.loc["happy", "train"] == 7215
    # the selection split: a stratified 10% of train (2,871 images), less its copies of train images
    assert len(ds.split("val")) + len(ds.split("val_dup")) == 2871
    # PublicTest: 280 of its 3,589 images are pixel copies of train images, in 270 groups, 13 of them with
    # conflicting labels; 114 of its 415 surprise faces have a copy in train
    counts = splits.duplicate_counts(ds).set_index("split")
    assert counts.loc["test"].to_dict() == dict(images=280, groups=270, conflicting_groups=13)
    assert len(ds.split("test")) == 3589 - 280 and len(ds.split("test_dup")) == 280
    surprise = ds.frame[(ds.frame["origin"] == "val") & (ds.frame["emotion"] == "surprise")]
    assert len(surprise) == 415 and (surprise["split"] == "test_dup").sum() == 114


@real
def test_real_ferplus_rules_kept_and_dropped():
    """The FER+ paper's majority rule keeps 28,224 of the 32,139 voted faces, the arg-max 30,331: the
    majority rule drops 2,107 more low-agreement faces, 206 of them in PublicTest."""
    dropped = {"majority": {labels.FERPLUS_NO_MAJORITY: 3820, "majority vote is not an emotion: unknown": 93,
                            "majority vote is not an emotion: NF": 2},
               "plurality": {"tied plurality vote": 1606, "plurality vote is not an emotion: unknown": 199,
                             "plurality vote is not an emotion: NF": 3}}
    kept = {}
    for rule in ("majority", "plurality"):
        ds = read_ferplus(Path(FER_DATA_DIR), rule=rule)
        assert ds.classes == labels.EMOTIONS and len(ds.frame) + len(ds.skipped) == 32139
        assert ds.skipped["reason"].value_counts().to_dict() == dropped[rule]
        kept[rule] = (len(ds.frame), len(ds.split("val")))
    assert kept == {"majority": (28224, 3190), "plurality": (30331, 3396)}


def test_synthetic_output_read_back_by_affectnet_mini_reader(tmp_path):
    from fer_utils.data import synthetic
    root = synthetic.generate(tmp_path / "syn", n_train=400, n_val=40, size=32, seed=3, n_test=16)
    ds = read_affectnet_mini(root, fmt="synthetic")
    assert ds.classes == labels.EMOTIONS and ds.skipped.empty
    assert ds.splits == ["train", "val", "test"]
    train = ds.split("train")["clean_label"].value_counts(normalize=True).sort_index()
    for label_id, share in synthetic.AFFECTNET_SHARES.items():
        assert abs(train[label_id] - share) <= 0.01
    assert set(ds.split("val")["clean_label"].value_counts()) == {5}  # balanced before the label noise
    assert set(ds.split("test")["clean_label"].value_counts()) == {2}
    noisy = (ds.frame["label"] != ds.frame["clean_label"]).mean()
    assert 0.15 < noisy < 0.31  # 456 faces, noise 0.23: the 99.9% binomial interval is about 0.16-0.30
    assert ds.frame["valence"].between(-1, 1).all()


def test_manifest_takes_under_256_bytes_an_image_and_landmarks_read_back_as_annotated(tmp_path):
    """Per-row landmark arrays made the manifest about 800 bytes an image (1.6 KiB of the process's memory):
    at 50,000 images more than the decoding added. Landmarks are read from the annotations when asked."""
    from fer_utils.data import synthetic
    root = synthetic.generate(tmp_path / "syn", n_train=300, n_val=0, size=32, seed=1, n_test=0)
    ds = read_affectnet_mini(root, fmt="synthetic")
    assert manifest_bytes(ds.frame) / len(ds.frame) < 256
    shuffled = ds.frame["location"].sample(frac=1.0, random_state=0).tolist()
    for location, points in zip(shuffled, landmarks(ds, shuffled), strict=True):
        text = str(np.load(root / location.replace("images", "annotations").replace(".jpg", "_lnd.npy")))
        assert points.dtype == np.float32 and np.array_equal(points.ravel(), np.array(text.split(";"), np.float32))
