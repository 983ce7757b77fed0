"""Tests of the built-in synthetic dataset (fer_utils.data.synthetic)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fer_utils.data import synthetic
from fer_utils.data.synthetic import AFFECTNET_SHARES, class_counts, generate, render_face

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(n_train=80, n_val=16, n_test=8, size=40)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _split(root: Path, split: str) -> list[str]:
    return sorted(p.stem for p in (root / split / "images").glob("*.jpg"))


def _str(path: Path) -> str:
    arr = np.load(path, allow_pickle=False)
    assert arr.shape == () and arr.dtype.kind == "U", path  # AffectNet mini: 0-d str array
    return str(arr.item())


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("a") / "synth", seed=1, **SMALL)


# ----------------------------------------------------------------------------- counts

def test_shares_are_affectnets():
    assert sorted(AFFECTNET_SHARES) == list(range(8))
    assert AFFECTNET_SHARES[1] == pytest.approx(0.467) and AFFECTNET_SHARES[0] == pytest.approx(0.26)


def test_train_counts_follow_affectnet_shares():
    n = 100_000
    counts = class_counts(n, balanced=False)
    assert sum(counts) == n and len(counts) == 8
    for c, share in AFFECTNET_SHARES.items():
        assert abs(counts[c] / n - share) <= 0.01, (c, counts[c])
    for n in (0, 1, 7, 8, 80, 999, 4000):
        counts = class_counts(n, balanced=False)
        assert sum(counts) == n and min(counts) >= 0
    assert class_counts(4000, False) == [1041, 1870, 357, 196, 88, 52, 344, 52]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 801])
def test_val_counts_balanced(n):
    counts = class_counts(n, balanced=True)
    assert sum(counts) == n and max(counts) - min(counts) <= 1


# ----------------------------------------------------------------------------- rendering

def test_render_face_outputs():
    for label in range(8):
        rng = np.random.Generator(np.random.PCG64(label))
        img, ann = render_face(label, rng, 48)
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8
        assert img.std() > 5  # something was drawn
        assert ann["landmarks"].shape == (68, 2)
        assert -1 <= ann["valence"] <= 1 and -1 <= ann["arousal"] <= 1
        assert 0 <= ann["intensity"] <= 1
    with pytest.raises(ValueError):
        render_face(8, np.random.default_rng(0), 48)
    with pytest.raises(ValueError):
        render_face(1, np.random.default_rng(0), 48, intensity=1.5)


# Digests of the output of GENERATOR_VERSION 3 (recorded when the camera's float steps became fixed-order
# elementwise arithmetic; 408 of 14 M pixel values of version 2 moved by one level). A refactor must not
# change a byte, and a change that does is a new generator version (bump GENERATOR_VERSION and record new
# digests). Recorded on an AVX2 machine; version 2's, recorded on an AVX-512 one, failed there. No step now
# picks its arithmetic by CPU (the next test switches OpenCV's SIMD code off).
GOLDEN_FACES_SHA256 = "071364c935a460fea103b2cf43e4d52e04123f64156a6a0a2a95b02de1ce8e29"
GOLDEN_DATASET_SHA256 = "52c1bcdda6beb9b81a7cff9c7b7d2dc98fdf8eccb8fc7b3a8b9d0384786d2e12"


def _faces_digest() -> str:
    """sha256 over render_face's pixels and annotations for every class at three sizes.

    32 and 48 px are drawn at 2x and downsampled, 300 px at 1x; seeds 0-3 draw the intensity,
    4-5 pass it. These 144 faces run every drawing branch (glasses, dark glasses, hand and
    object occlusion, teeth, wrinkles, blur, grayscale), and the valence/arousal, drawn last,
    pin the full sequence of random draws.
    """
    h = hashlib.sha256()
    for size in (32, 48, 300):
        for label in range(8):
            for seed in range(6):
                rng = np.random.Generator(np.random.PCG64([size, label, seed]))
                img, ann = render_face(label, rng, size, None if seed < 4 else 0.25 * (seed - 3))
                h.update(img.tobytes())
                h.update(ann["landmarks"].tobytes())
                h.update(np.array([ann["valence"], ann["arousal"], ann["intensity"]]).tobytes())
    return h.hexdigest()


def test_render_face_output_is_pinned():
    assert _faces_digest() == GOLDEN_FACES_SHA256


def test_render_face_does_not_depend_on_the_cpus_simd_kernels():
    """OpenCV runs its float kernels in the widest SIMD code the CPU has (AVX2, AVX-512), and they differ in
    the last bit, which moved a rounded pixel now and then: version 2's faces differed between machines, and
    with OpenCV's SIMD code switched off. The faces are the same bytes either way."""
    optimized = cv2.useOptimized()
    try:
        cv2.setUseOptimized(False)
        scalar = _faces_digest()
    finally:
        cv2.setUseOptimized(optimized)
    assert scalar == _faces_digest()


def test_dataset_bytes_are_pinned(tmp_path):
    """Images, annotations, README and synthetic.json of a small dataset, file by file."""
    digests = _digests(generate(tmp_path / "g", n_train=40, n_val=16, n_test=8, size=48, seed=3))
    assert hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest() == GOLDEN_DATASET_SHA256


def test_worker_processes_write_the_same_bytes(tmp_path, monkeypatch):
    """Large data are drawn by one spawned process per core; forced here on a small set (two workers even on
    one core), the pinned bytes come out."""
    monkeypatch.setattr(synthetic, "FACES_PER_WORKER", 10)
    monkeypatch.setattr(synthetic, "usable_cores", lambda: 2)
    digests = _digests(generate(tmp_path / "g", n_train=40, n_val=16, n_test=8, size=48, seed=3))
    assert hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest() == GOLDEN_DATASET_SHA256


def _valence_arousal(label: int, intensity: float, n: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([label, int(intensity * 100)]))
    return np.array([[render_face(label, rng, 32, intensity=intensity)[1][k] for k in ("valence", "arousal")]
                     for _ in range(n)])


def test_valence_and_arousal_are_not_determined_by_class():
    """Faces of one class and intensity spread around the class's circumplex point; the mean still moves
    with the class and the intensity (neutral's point at 0, the class's at 1)."""
    strong = _valence_arousal(1, 0.8, 150)                 # happy, intensity 0.8
    assert strong.std(axis=0) == pytest.approx(synthetic.VA_SPREAD, rel=0.25)
    assert strong[:, 0].mean() == pytest.approx(0.8 * 0.72, abs=0.04)
    weak = _valence_arousal(1, 0.1, 150)
    assert weak[:, 0].mean() < strong[:, 0].mean() - 0.4
    assert (weak[:, 0] < 0).mean() > 0.2                   # a weak smile can read as negative
    sad = _valence_arousal(2, 0.8, 150)
    assert sad[:, 0].mean() < -0.4 and sad[:, 0].max() > strong[:, 0].min() - 0.9  # own spread, own mean
    assert (_valence_arousal(3, 0.8, 50)[:, 1] > 0).mean() > 0.9    # surprise is aroused


def test_label_noise_rate_and_uniform_confusion():
    n, noise = 8000, synthetic.LABEL_NOISE
    rng = np.random.Generator(np.random.PCG64(0))
    clean = rng.integers(8, size=n)
    noisy = np.array([synthetic.noisy_label(int(c), noise, rng) for c in clean])
    again = np.array([synthetic.noisy_label(int(c), noise, rng) for c in clean])
    flipped = noisy != clean
    assert flipped.mean() == pytest.approx(noise, abs=0.015)          # 4.5 binomial standard deviations
    assert (noisy == again).mean() == pytest.approx(0.60, abs=0.015)  # as AffectNet's annotators agree
    shift = (noisy[flipped] - clean[flipped]) % 8                       # 1..7: the other class, uniformly
    assert set(shift) == set(range(1, 8))
    assert np.bincount(shift, minlength=8)[1:].min() > 0.8 * flipped.sum() / 7
    assert all(synthetic.noisy_label(c, 0.0, rng) == c for c in range(8))


# ----------------------------------------------------------------------------- dataset

def test_layout_counts_and_annotations(small):
    meta = json.loads((small / "synthetic.json").read_text())
    assert meta["generator"] == "fer_utils.data.synthetic"
    assert (small / "README.md").is_file()
    noisy = 0
    for code, (split, n, balanced) in enumerate((("train_set", 80, False), ("val_set", 16, True),
                                                 ("test_set", 8, True))):
        ids = _split(small, split)
        assert len(ids) == n and all(len(i) == 6 and i.isdigit() for i in ids)
        assert len(list((small / split / "annotations").iterdir())) == 5 * n
        labels = []
        for i in ids:
            ann = small / split / "annotations"
            with Image.open(small / split / "images" / f"{i}.jpg") as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (40, 40)
            clean, exp = int(_str(ann / f"{i}_exp_clean.npy")), int(_str(ann / f"{i}_exp.npy"))
            # the annotated label is the clean one through the noise stream of (seed, split, 2, image)
            stream = np.random.Generator(np.random.PCG64(np.random.SeedSequence([1, code, 2, int(i)])))
            assert exp == synthetic.noisy_label(clean, synthetic.LABEL_NOISE, stream)
            noisy += exp != clean
            labels.append(clean)
            for kind in ("val", "aro"):
                assert -1.0 <= float(_str(ann / f"{i}_{kind}.npy")) <= 1.0
            lnd = np.array([float(v) for v in _str(ann / f"{i}_lnd.npy").split(";")])
            assert lnd.shape == (136,)
            pts = lnd.reshape(68, 2)
            assert (pts >= 0).all() and (pts <= 39).all()
            # iBUG sanity: brows above eyes above nose tip above mouth above chin
            assert pts[17:27, 1].mean() < pts[36:48, 1].mean() < pts[33, 1] < pts[48:68, 1].mean() < pts[8, 1]
        counts = np.bincount(labels, minlength=8).tolist()
        assert counts == class_counts(n, balanced) == meta["counts"][split]
        assert labels != sorted(labels)  # shuffled: ids do not reveal the class
    assert 0 < noisy < 104 / 2  # some labels are noisy, most are not


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    again = generate(tmp_path / "again", seed=1, **SMALL)
    assert _digests(again) == _digests(small)
    other = _digests(generate(tmp_path / "other", seed=2, **SMALL))
    assert other.keys() == _digests(small).keys()
    images = [k for k in other if k.endswith(".jpg")]
    assert all(other[k] != _digests(small)[k] for k in images)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_reuse_refuse_and_overwrite(tmp_path):
    out = generate(tmp_path / "d", seed=0, **SMALL)
    before = _digests(out)
    stamp = (out / "synthetic.json").stat().st_mtime_ns
    assert generate(out, seed=0, **SMALL) == out  # complete with same params: reused
    assert (out / "synthetic.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other parameters"):
        generate(out, seed=5, **SMALL)
    assert _digests(out) == before
    generate(out, seed=5, overwrite=True, **SMALL)
    assert json.loads((out / "synthetic.json").read_text())["params"]["seed"] == 5
    # an incomplete dataset of ours (files lost) is rebuilt
    next((out / "train_set" / "images").iterdir()).unlink()
    generate(out, seed=5, **SMALL)
    assert len(_split(out, "train_set")) == 80


def test_rebuilds_ours_from_another_generator_version(tmp_path, monkeypatch):
    out = generate(tmp_path / "d", n_train=8, n_val=0, size=32)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    generate(out, n_train=8, n_val=0, size=32)  # same user params: a stale cache, rebuilt
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["params"]["version"] == synthetic.GENERATOR_VERSION


def test_never_touches_a_foreign_folder(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a synthetic dataset"):
            generate(foreign, overwrite=overwrite, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(_split(generate(empty, **SMALL), "val_set")) == 16  # an empty folder is fine


@pytest.mark.parametrize("kwargs", [
    dict(n_train=0), dict(n_train=-5), dict(n_train=10.0), dict(n_train="10"), dict(n_train=True),
    dict(n_val=-1), dict(size=31), dict(size=513), dict(size=64.5), dict(seed=-1), dict(seed=None),
    dict(n_test=-1), dict(label_noise=1.5), dict(label_noise=-0.1), dict(label_noise=True), dict(label_noise="0.2"),
])
def test_argument_validation(tmp_path, kwargs):
    args = dict(SMALL, **kwargs)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError):
        class_counts(-1, balanced=True)


def test_zero_val_is_allowed(tmp_path):
    out = generate(tmp_path / "noval", n_train=8, n_val=0, size=32)
    assert _split(out, "val_set") == [] and len(_split(out, "train_set")) == 8


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "fer_utils.data.synthetic", "--out", str(out), "--n-train", "24",
           "--n-val", "8", "--n-test", "8", "--label-noise", "0.5", "--size", "32", "--seed", "3"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout and "happy" in res.stdout
    assert len(_split(out, "train_set")) == 24 and len(_split(out, "val_set")) == len(_split(out, "test_set")) == 8
    assert json.loads((out / "synthetic.json").read_text())["params"]["label_noise"] == 0.5
    res = subprocess.run(cmd[:-1] + ["4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "--overwrite" in res.stderr
    res = subprocess.run(cmd[:-1] + ["4", "--overwrite"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "synthetic.json").read_text())["params"]["seed"] == 4
