"""Small on-disk datasets in each supported format, written per test, and the tiny book (TINY), built once."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

# A book that builds in seconds: tiny synthetic data, a tiny model, two epochs.
TINY = """dataset: synthetic
synthetic_n_train: 120
synthetic_n_val: 32
synthetic_n_test: 32
synthetic_size: 32
image_size: 32
epochs: 2
width: 8
batch_size: 32
bootstrap: 50
ablation: baseline,resnet
ablation_epochs: 1
"""

FER_DATA_DIR = os.environ.get("FER_DATA_DIR") or str(Path.home() / ".cache/fer-data/fer2013")


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory):
    """TINY's book, built once for the tests that read it (a build takes minutes on 2 cores): `root` holds
    runs/ and _build/, `params` is the params file, `code` the pipeline's exit code, `log` what it printed."""
    from fer_utils.book import pipeline
    root = tmp_path_factory.mktemp("tiny-book")
    params = root / "tiny.yaml"
    params.write_text(TINY + f"data_dir: {root / 'synthetic'}\n")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(pipeline, "RUNS_DIR", root / "runs")
        mp.setattr(pipeline, "BUILD_DIR", root / "_build")
        code = pipeline.main([str(params)])
    return SimpleNamespace(root=root, params=params, code=code, log=printed.getvalue())


def face(seed: int, size: int = 24, mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.fixture
def folders_dataset(tmp_path):
    """train/ and val/ class folders (Kaggle FER2013 style names), 3 images per class."""
    root = tmp_path / "fer"
    for split in ("train", "val"):
        for i, cls in enumerate(["Angry", "happy", "Sadness", "neutral"]):
            d = root / split / cls
            d.mkdir(parents=True)
            for j in range(3):
                face(100 * i + j).save(d / f"{j}.png")
    return root


@pytest.fixture
def affectnet_mini(tmp_path):
    """AffectNet-mini layout with ids 0..10 (8-10 are not emotions) plus an out-of-range 12."""
    root = tmp_path / "affectnet"
    for split_dir, ids in (("train_set", [0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]), ("val_set", list(range(8)))):
        images, ann = root / split_dir / "images", root / split_dir / "annotations"
        images.mkdir(parents=True)
        ann.mkdir()
        for n, label in enumerate(ids):
            face(n, mode="RGB").save(images / f"{n}.jpg")
            np.save(ann / f"{n}_exp.npy", np.array(str(label)))
            np.save(ann / f"{n}_val.npy", np.array("0.25"))
            np.save(ann / f"{n}_aro.npy", np.array("-0.5"))
            np.save(ann / f"{n}_lnd.npy", np.array(";".join(["1.5"] * 136)))
    return root


@pytest.fixture
def fer2013_csv(tmp_path):
    rows = []
    for i in range(14):
        rows.append(dict(emotion=i % 7, pixels=" ".join(map(str, np.full(48 * 48, i * 10))),
                         Usage=["Training", "PublicTest", "PrivateTest"][i % 3]))
    rows.append(dict(emotion=9, pixels=" ".join(["0"] * 2304), Usage="Training"))      # unknown label
    rows.append(dict(emotion=3, pixels="1 2 3", Usage="Training"))                      # bad pixel row
    path = tmp_path / "fer2013.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return tmp_path


@pytest.fixture
def affectnet_csv(tmp_path):
    root = tmp_path / "AffectNet"
    images = root / "Manually_Annotated_Images" / "1"
    images.mkdir(parents=True)
    rows = {"train": [], "val": []}
    for n, label in enumerate([0, 1, 2, 7, 8, 1, 3, 6]):
        face(n, size=40, mode="RGB").save(images / f"{n}.jpg")
        rows["train" if n < 5 else "val"].append(dict(
            subDirectory_filePath=f"1/{n}.jpg", face_x=5, face_y=6, face_width=20, face_height=24,
            facial_landmarks=";".join(["10.0"] * 136), expression=label, valence=0.1, arousal=0.2))
    rows["val"].append(dict(subDirectory_filePath="1/missing.jpg", face_x=0, face_y=0, face_width=1,
                            face_height=1, facial_landmarks="", expression=1, valence=0, arousal=0))
    pd.DataFrame(rows["train"]).to_csv(root / "training.csv", index=False)
    pd.DataFrame(rows["val"]).to_csv(root / "validation.csv", index=False)
    return root


@pytest.fixture(scope="session", autouse=True)
def data_caches(tmp_path_factory):
    """Pixel hashes (fer_utils.data.splits) and AffectNet-mini manifests (datasets) go to folders of this
    test session, not the repository's .cache/: each test's data folder would leave a table there; the real
    data's are decoded once per session."""
    from fer_utils.data import datasets, splits
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(splits, "HASH_CACHE_DIR", tmp_path_factory.mktemp("pixel-hashes"))
        mp.setattr(datasets, "MANIFEST_CACHE_DIR", tmp_path_factory.mktemp("manifests"))
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on 2 shared cores this avoids OpenMP stalls when other jobs
    compete, and keeps CPU results bit-reproducible within the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
