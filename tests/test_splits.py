"""Split roles (train / selection val / report test / heldout) and cross-split pixel deduplication."""
from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from conftest import face
from fer_utils.config.params import resolve
from fer_utils.data import splits
from fer_utils.data.datasets import open_dataset, read_folders

CLASSES = {"anger": 40, "happy": 25, "sad": 9, "neutral": 2}  # train images per class


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "HASH_CACHE_DIR", tmp_path / "pixel-hashes")


@pytest.fixture
def faces(tmp_path):
    """train/ (imbalanced, 76 images) and val/ (3 per class) class folders of distinct random faces."""
    root = tmp_path / "faces"
    seed = 0
    for split in ("train", "val"):
        for cls, n in CLASSES.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for j in range(n if split == "train" else 3):
                seed += 1
                face(seed).save(folder / f"{j}.png")
    return root


def params(root, **overrides):
    return resolve(None, dict(dataset="folders", data_dir=str(root), **overrides))


def test_selection_split_is_a_stratified_seeded_disjoint_carve_out(faces):
    ds = open_dataset(params(faces))
    assert ds.splits == ["train", "val", "test"]
    assert set(ds.frame.loc[ds.frame["split"].isin(["train", "val"]), "origin"]) == {"train"}
    assert (ds.split("test")["origin"] == "val").all() and len(ds.split("test")) == 12  # the own val reports
    train, val = set(ds.split("train")["location"]), set(ds.split("val")["location"])
    assert not train & val and len(train | val) == sum(CLASSES.values())
    per_class = ds.split("val")["emotion"].value_counts().to_dict()
    # 10% of 76 = 8 shared by largest remainder (4.0, 2.5, 0.9, 0.2); every class of 2+ images gives one
    assert per_class == {"anger": 4, "happy": 3, "sad": 1, "neutral": 1}
    again = open_dataset(params(faces))
    assert set(again.split("val")["location"]) == val and again.fingerprint == ds.fingerprint
    other = open_dataset(params(faces, seed=1))
    assert set(other.split("val")["location"]) != val
    assert other.fingerprint != ds.fingerprint  # the assignment is part of the data's identity
    assert open_dataset(params(faces, selection_fraction=0.2)).fingerprint != ds.fingerprint
    assert ds.split_roles["val"].startswith("selection: a seeded, stratified 10% of the dataset's own train split")
    assert ds.split_roles["test"] == "report: the dataset's own val split (12 images)"


def test_carve_does_not_depend_on_row_order(faces):
    frame = read_folders(faces).split("train")
    mask = splits.carve(frame, 0.25, seed=3)
    shuffled = frame.sample(frac=1.0, random_state=0)
    mask2 = splits.carve(shuffled, 0.25, seed=3)
    assert set(frame["location"][mask]) == set(shuffled["location"][mask2])
    assert mask.sum() == round(0.25 * len(frame))


def test_roles_for_each_layout():
    def frame(counts):
        rows = [dict(location=f"{s}/{e}/{i}", emotion=e, split=s)
                for s, n in counts.items() for e in ("a", "b") for i in range(n)]
        return pd.DataFrame(rows)

    # three own splits (fer2013_csv): val carved from train, own val reports, own test held out
    f = splits.assign_roles(frame(dict(train=50, val=10, test=10)), 0.1, seed=0)
    assert pd.crosstab(f["origin"], f["split"]).to_dict() == {
        "heldout": {"test": 10 * 2, "train": 0, "val": 0}, "test": {"test": 0, "train": 0, "val": 20},
        "train": {"test": 0, "train": 90, "val": 0}, "val": {"test": 0, "train": 10, "val": 0}}
    # train and test only (Kaggle FER2013 folders): the own test reports, nothing held out
    f = splits.assign_roles(frame(dict(train=50, test=10)), 0.1, seed=0)
    assert f.groupby("split")["origin"].agg(set).to_dict() == {"train": {"train"}, "val": {"train"},
                                                               "test": {"test"}}
    # train only: both val and test carved out of it, disjoint
    f = splits.assign_roles(frame(dict(train=50)), 0.1, seed=0)
    assert f["split"].value_counts().to_dict() == {"train": 80, "val": 10, "test": 10}
    # the synthetic data keep their own selection and report splits
    f = splits.assign_roles(frame(dict(train=50, val=10, test=10)), 0.1, seed=0, own_selection=True)
    assert (f["split"] == f["origin"]).all()


def _copy_pixels(src, dst, **save):
    with Image.open(src) as im:
        im.load()
        im.save(dst, **save)


def test_dedup_moves_pixel_duplicates_and_lists_conflicts(faces):
    # same pixels, other bytes (PNG compression level), same label: a plain duplicate
    _copy_pixels(faces / "train" / "anger" / "0.png", faces / "val" / "anger" / "dup.png", compress_level=0)
    # same pixels, other label: a conflicting duplicate
    _copy_pixels(faces / "train" / "happy" / "1.png", faces / "val" / "sad" / "dup.png")
    assert (faces / "val" / "anger" / "dup.png").read_bytes() != (faces / "train" / "anger" / "0.png").read_bytes()
    ds = open_dataset(params(faces))
    assert sorted(ds.split("test_dup")["location"]) == ["val/anger/dup.png", "val/sad/dup.png"]
    assert len(ds.split("test")) == 12 and len(ds.split("test")) + len(ds.split("test_dup")) == 14
    d = ds.duplicates.set_index("location")
    assert list(ds.duplicates.columns) == splits.DUPLICATE_COLUMNS
    assert d.loc["val/anger/dup.png"].to_dict() == dict(split="test", duplicate_of="train/anger/0.png",
                                                         label="anger", label_of_duplicate="anger", conflicting=False)
    assert d.loc["val/sad/dup.png"].to_dict() == dict(split="test", duplicate_of="train/happy/1.png",
                                                      label="sad", label_of_duplicate="happy", conflicting=True)
    counts = splits.duplicate_counts(ds).set_index("split")
    assert counts.loc["test"].to_dict() == dict(images=2, groups=2, conflicting_groups=1)
    assert "2 duplicates of train and val images moved to test_dup" in ds.split_roles["test"]
    kept = open_dataset(params(faces, dedup=False))
    assert len(kept.split("test")) == 14 and kept.duplicates.empty and kept.fingerprint != ds.fingerprint


def test_pixel_hashes_are_cached_and_follow_file_changes(faces, monkeypatch):
    ds = read_folders(faces)
    first = splits.pixel_hashes(ds)
    assert first.index.equals(ds.frame.index) and first.nunique() == len(ds.frame)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")
    real = splits._file_pixel_hash
    monkeypatch.setattr(splits, "_file_pixel_hash", no_decoding)
    assert splits.pixel_hashes(ds).equals(first)
    face(999).save(faces / "train" / "anger" / "0.png")  # new contents: only this file is decoded again
    decoded = []
    monkeypatch.setattr(splits, "_file_pixel_hash", lambda path: decoded.append(path) or real(path))
    again = splits.pixel_hashes(ds)
    assert decoded == [faces / "train" / "anger" / "0.png"]
    assert (again != first).sum() == 1


def test_undecodable_images_are_never_duplicates(faces):
    (faces / "train" / "anger" / "bad.png").write_bytes(b"not a png")
    (faces / "val" / "anger" / "bad.png").write_bytes(b"not a png")
    ds = open_dataset(params(faces))
    assert ds.duplicates.empty  # the decoding step counts them as unreadable instead


def test_fer2013_csv_private_test_is_held_out_and_csv_pixels_deduplicated(fer2013_csv):
    table = pd.read_csv(fer2013_csv / "fer2013.csv")
    copy = table.iloc[0].copy()  # row 0 is Training: its pixels again, as PublicTest, another label
    copy["Usage"], copy["emotion"] = "PublicTest", 3
    pd.concat([table, copy.to_frame().T]).to_csv(fer2013_csv / "fer2013.csv", index=False)
    # five train rows, one per class: 40% of them (2 rows) make the selection split
    ds = open_dataset(resolve(None, dict(dataset="fer2013_csv", data_dir=str(fer2013_csv), selection_fraction=0.4)))
    assert ds.frame.groupby("split")["origin"].agg(set).to_dict() == {
        "train": {"train"}, "val": {"train"}, "test": {"val"}, "heldout": {"test"}, "test_dup": {"val"}}
    assert ds.duplicates[["location", "duplicate_of", "conflicting"]].values.tolist() == [["row:14", "row:0", True]]
    assert ds.split_roles["heldout"].startswith("held out, not used by default: the dataset's own test split")
