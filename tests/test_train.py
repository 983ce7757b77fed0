"""Training engine: exact resume, checkpoint reuse and safety, failures with clear messages,
sampling, augmentation, torchrun. Tiny models (width 8) on a tiny 32 px folders dataset."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fer_utils import metrics
from fer_utils.analysis import evaluate
from fer_utils.data import images
from fer_utils.engine import checkpoint, inference, models, optim, runtime, sampling, targets, train, transforms
from fer_utils.data.datasets import open_dataset
from fer_utils.paths import REPO_ROOT
from fer_utils.engine.models import create_model
from fer_utils.config.params import ParamsError, resolve

CLASSES = ("anger", "happy", "sad", "neutral")
TRAIN_COUNTS = (20, 12, 8, 4)  # imbalanced on purpose


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """train/ and val/ class folders of 32 px PNGs; each class is a bright vertical band (learnable)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(TRAIN_COUNTS[c] if split == "train" else 6):
                img = rng.integers(0, 100, (32, 32)).astype(np.uint8)
                img[:, c * 8:(c + 1) * 8] += 120
                Image.fromarray(img).save(folder / f"{j}.png")
    return root


@pytest.fixture(autouse=True)
def decoded_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "decoded")


def make_params(root, **overrides):
    base = dict(dataset="folders", data_dir=str(root), image_size=32, model="resnet", width=8, epochs=3,
                batch_size=16, device="cpu")
    return resolve(None, {**base, **overrides})


def fit(params, run_dir):
    return train.fit(params, open_dataset(params), run_dir)


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                  "val_macro_f1", "lr"]


# -- exact resume, reuse, checkpoint format -----------------------------------

def test_resume_after_interruption_equals_uninterrupted_run(data_root, tmp_path, monkeypatch, capsys):
    # Every source of randomness on: order (weighted sampler), all augmentations, dropout, DropBlock.
    params = make_params(data_root, model="regularized_cnn", dropout=0.2, dropblock=0.1, imbalance="weighted_sampler",
                         aug_flip=True, aug_rotate=10.0, aug_crop=0.8, aug_jitter=0.2, aug_blur=0.5,
                         aug_erasing=0.5, l1=1e-5, weight_decay=1e-4, label_smoothing=0.1)
    whole = fit(params, tmp_path / "whole")

    # Interrupt in the middle of epoch 3 (3 steps per epoch: the 8th training batch).
    real_prepare, calls = transforms.prepare_batch, [0]

    def interrupted(x, params=None, g=None, **kw):
        if g is not None:
            calls[0] += 1
            if calls[0] == 8:
                raise KeyboardInterrupt
        return real_prepare(x, params, g, **kw)

    monkeypatch.setattr(train, "prepare_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(params, tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(train, "prepare_batch", real_prepare)
    resumed = train.fit(params, open_dataset(params), tmp_path / "resumed", resume=True)
    assert "resuming" in capsys.readouterr().out

    pd.testing.assert_frame_equal(whole["history"][METRIC_COLUMNS], resumed["history"][METRIC_COLUMNS])
    assert whole["best_metrics"] == resumed["best_metrics"] and whole["best_epoch"] == resumed["best_epoch"]
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(tmp_path / "resumed" / name, weights_only=True)
        assert state_dicts_equal(a["model"], b["model"]), name
        assert a["epoch"] == b["epoch"]

    # A third call reuses the finished run without training.
    again = fit(params, tmp_path / "resumed")
    assert again["reused"] and "reusing the finished run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(again["history"], resumed["history"])


def test_checkpoint_is_plain_data_and_outputs_are_written(data_root, tmp_path):
    params = make_params(data_root, epochs=2, aug_flip=True)
    result = fit(params, tmp_path / "run")
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["finished"] and ckpt["classes"] == ["neutral", "happy", "sad", "anger"]
    assert ckpt["model_config"]["name"] == "resnet" and ckpt["params"] == params
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and isinstance(ckpt["rng"]["numpy"][1], list)
    assert len(ckpt["history"]["val_macro_f1"]) == 2
    torch.load(result["best_checkpoint"], weights_only=True)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history.columns) == list(train.HISTORY_COLUMNS) and len(history) == 2
    assert resolve(tmp_path / "run" / "params.yaml")["aug_flip"] is True
    assert not list((tmp_path / "run").glob("*.tmp"))
    model, _ = checkpoint.load_model(result["best_checkpoint"])
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 4)
    assert result["images_per_s"] > 0 and 0 <= result["best_metrics"]["val_macro_f1"] <= 1


def test_refit_trains_on_train_and_the_selection_split_and_keeps_the_last_epoch(data_root, tmp_path, capsys):
    """The final model (refit=true) learns from val too, so val cannot pick its epoch (the last is kept) nor
    its protocol (tta_flip, given), and the evaluation says that val's scores are not held out."""
    params = make_params(data_root, refit=True, tta_flip=False, selection_fraction=0.25, bootstrap=20)
    ds = open_dataset(params)
    n_train, n_val = len(ds.split("train")), len(ds.split("val"))
    out = train.fit(params, ds, tmp_path / "run")
    assert f"on {n_train + n_val} images, {n_val} val" in capsys.readouterr().out
    assert out["best_epoch"] == params["epochs"]
    assert state_dicts_equal(*(torch.load(tmp_path / "run" / f, weights_only=True)["model"] for f in ("best.pt", "last.pt")))
    result = evaluate.run(params, ds, tmp_path / "run", "cpu")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["val"]["role"] == evaluate.REFIT_ROLE and saved["test"]["role"] == "report split"
    assert saved["checkpoint"]["selected_by"] == evaluate.REFIT_SELECTION
    assert result["tta"]["decided_by"] == "forced by tta_flip=false" and not result["tta"]["used"]
    with pytest.raises(train.DataError, match="refit is only offered with num_workers=0"):
        train.fit(dict(params, num_workers=2, retrain=True), ds, tmp_path / "workers")


def test_reuse_ignores_non_training_keys_but_not_training_ones(data_root, tmp_path, capsys):
    params = make_params(data_root, epochs=1)
    fit(params, tmp_path / "run")
    assert fit({**params, "bootstrap": 5, "run_name": "other"}, tmp_path / "run")["reused"]
    changed = fit({**params, "lr": 1e-3}, tmp_path / "run")
    assert not changed["reused"]
    assert "lr: 0.002 -> 0.001" in capsys.readouterr().out
    assert not fit({**params, "lr": 1e-3, "retrain": True}, tmp_path / "run")["reused"]
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # from before targets were recorded
    assert last["targets"] == ""  # a run on the labels
    torch.save({k: v for k, v in last.items() if k != "targets"}, tmp_path / "run" / "last.pt")
    assert fit({**params, "lr": 1e-3}, tmp_path / "run")["reused"]


def test_resume_refuses_a_checkpoint_for_other_params(data_root, tmp_path):
    params = make_params(data_root, epochs=1)
    with pytest.raises(checkpoint.CheckpointError, match="cannot resume: no checkpoint"):
        train.fit(params, open_dataset(params), tmp_path / "run", resume=True)
    fit(params, tmp_path / "run")
    with pytest.raises(checkpoint.CheckpointError, match="other params .*width: 8 -> 16"):
        train.fit({**params, "width": 16}, open_dataset(params), tmp_path / "run", resume=True)


def test_damaged_last_checkpoint_stops_training_says_retrain_and_keeps_best(data_root, tmp_path):
    params = make_params(data_root, epochs=2)
    run = tmp_path / "run"
    fit({**params, "epochs": 1}, run)  # an unfinished run: plain training would resume it
    last, best = run / "last.pt", run / "best.pt"
    last.write_bytes(last.read_bytes()[:3000])  # e.g. a disk that filled up outside atomic_write
    damaged, best_bytes = last.read_bytes(), best.read_bytes()
    expected = (f"not a checkpoint of this project (or damaged): {last}. To train this run from scratch, set "
                f"retrain=true (-p retrain=true, without --resume); that replaces {best} too: copy it first to keep it")
    for resume in (False, True):
        with pytest.raises(checkpoint.CheckpointError) as err:
            train.fit(params, open_dataset(params), run, resume=resume)
        assert str(err.value) == expected
        assert best.read_bytes() == best_bytes and last.read_bytes() == damaged

    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "fer_utils", "train", str(params_file), "--out", str(run), "--resume"],
                          env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [f"error: {expected}"], proc.stderr[-3000:]
    assert best.read_bytes() == best_bytes and last.read_bytes() == damaged

    again = train.fit({**params, "retrain": True}, open_dataset(params), run)  # what the message says works
    assert not again["reused"] and checkpoint.load_checkpoint(last)["finished"]


def test_an_exported_model_copied_over_last_pt_is_not_resumed(data_root, tmp_path):
    params = make_params(data_root, epochs=1)
    run = tmp_path / "run"
    fit(params, run)
    exported = {k: v for k, v in torch.load(run / "last.pt", weights_only=True).items()
                if k not in ("optimizer", "scheduler", "rng", "finished")}
    torch.save(exported, run / "last.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint of this project .*-p retrain=true"):
        fit(params, run)


def test_num_workers_does_not_change_training(data_root, tmp_path):
    params = make_params(data_root, epochs=1, dropout=0.2, aug_flip=True, aug_rotate=10.0, aug_erasing=0.5)
    in_memory = fit(params, tmp_path / "memory")
    workers = fit({**params, "num_workers": 2}, tmp_path / "workers")  # DataLoader path
    a = torch.load(in_memory["last_checkpoint"], weights_only=True)["model"]
    b = torch.load(workers["last_checkpoint"], weights_only=True)["model"]
    assert state_dicts_equal(a, b)


def test_early_stopping_on_val_macro_f1(data_root, tmp_path, capsys):
    # No BN and lr 0: predictions never change, so macro-F1 never improves after epoch 1.
    params = make_params(data_root, model="baseline_cnn", lr=0.0, scheduler="none", epochs=5, early_stopping=2)
    result = fit(params, tmp_path / "run")
    assert list(result["history"]["epoch"]) == [1, 2, 3] and result["best_epoch"] == 1
    assert "early stopping" in capsys.readouterr().out
    assert torch.load(result["last_checkpoint"], weights_only=True)["finished"]


# -- bad input ----------------------------------------------------------------

def poisoned_factory(monkeypatch, after: int, error=None):
    """Make create_model's model return NaN (or raise `error`) from its `after`-th training forward."""
    real, calls = models.create_model, [0]

    def factory(*args, **kwargs):
        model = real(*args, **kwargs)
        forward = model.forward

        def poisoned(x):
            out = forward(x)
            if model.training:
                calls[0] += 1
                if calls[0] >= after:
                    if error is not None:
                        raise error
                    return out * float("nan")
            return out

        model.forward = poisoned
        return model

    monkeypatch.setattr(train, "create_model", factory)


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    params = make_params(data_root, lr=0.01)
    poisoned_factory(monkeypatch, after=5)  # epoch 2, step 2
    with pytest.raises(runtime.TrainingError, match=r"non-finite training loss in epoch 2, step 2 .*lower lr"):
        fit(params, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and not ckpt["finished"]
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 1


def test_out_of_memory_suggests_a_smaller_batch(data_root, tmp_path, monkeypatch):
    poisoned_factory(monkeypatch, after=1, error=torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    with pytest.raises(runtime.TrainingError, match="out of memory .*batch_size=16.* -p batch_size=8"):
        fit(make_params(data_root), tmp_path / "run")


def test_forcing_a_missing_gpu_is_an_error(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(runtime.TrainingError, match="device=cuda was requested but no CUDA GPU"):
        runtime.select_device("cuda")
    with pytest.raises(runtime.TrainingError, match="no CUDA GPU"):
        fit(make_params(data_root, device="cuda"), tmp_path / "run")
    with pytest.raises(SystemExit, match="error: device=cuda was requested"):  # the CLI: a message, no traceback
        train.main(["-p", "device=cuda", "--out", str(tmp_path / "run")])
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        assert runtime.select_device("auto") == torch.device("cpu")


def test_loading_a_checkpoint_for_another_model_or_classes_fails_clearly(data_root, tmp_path):
    result = fit(make_params(data_root, epochs=1), tmp_path / "run")
    path, classes = result["last_checkpoint"], ["neutral", "happy", "sad", "anger"]
    checkpoint.load_checkpoint(path, create_model("resnet", 4, 1, 32, 8), classes)  # the right one loads
    with pytest.raises(checkpoint.CheckpointError, match="name expected 'baseline_cnn', found 'resnet'"):
        checkpoint.load_checkpoint(path, create_model("baseline_cnn", 4, 1, 32, 8), classes)
    with pytest.raises(checkpoint.CheckpointError, match="num_classes expected 7, found 4"):
        checkpoint.load_checkpoint(path, create_model("resnet", 7, 1, 32, 8))
    with pytest.raises(checkpoint.CheckpointError, match=r"trained on classes \['neutral'.*expected \['anger'"):
        checkpoint.load_checkpoint(path, classes=["anger", "happy", "sad", "neutral"])


# -- class imbalance, sampling, schedules -------------------------------------

def test_weighted_loss_and_sampler_balance_the_classes():
    y = np.repeat(np.arange(4), [2000, 1000, 700, 300])
    w = sampling.class_weights(y, num_classes=5)  # class 4 absent
    assert w[4] == 0 and np.isclose(w[:4].mean(), 1.0)
    per_class = np.bincount(y, weights=w[y])  # total loss weight of each class
    assert np.allclose(per_class, per_class[0])

    params = dict(seed=0, imbalance="weighted_sampler")
    order = sampling.epoch_order(y, 4, params, epoch=1)
    shares = np.bincount(y[order.numpy()], minlength=4) / len(y)
    assert np.allclose(shares, 0.25, atol=0.03), shares  # vs 0.5 / 0.075 without the sampler
    assert torch.equal(order, sampling.epoch_order(y, 4, params, epoch=1))
    assert not torch.equal(order, sampling.epoch_order(y, 4, params, epoch=2))
    plain = sampling.epoch_order(y, 4, dict(seed=0, imbalance="none"), epoch=1)
    assert sorted(plain.tolist()) == list(range(len(y)))


def test_shards_cover_the_epoch_with_equal_steps():
    order = torch.randperm(45, generator=torch.Generator().manual_seed(0))
    shards = [sampling.shard(order, r, 4) for r in range(4)]
    assert {len(s) for s in shards} == {12}
    assert set(torch.cat(shards).tolist()) == set(range(45))
    assert [len(b) for b in sampling.batch_indices(torch.arange(33), 16)] == [16, 16]  # a lone image is dropped


def test_optimizer_groups_and_schedules():
    model = create_model("regularized_cnn", 4, 1, 32, 8)
    params = dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, epochs=4, scheduler="cosine", warmup_epochs=1)
    opt = optim.make_optimizer(model, params)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    sched = optim.make_scheduler(opt, params, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(lrs[:10], np.arange(1, 11) / 10 * 0.1)  # linear warm-up, per iteration
    assert lrs[10] == pytest.approx(0.1) and lrs[-1] < 0.001 and np.all(np.diff(lrs[10:]) <= 0)
    one = optim.make_scheduler(optim.make_optimizer(model, {**params, "optimizer": "adamw"}),
                               {**params, "scheduler": "onecycle"}, 10)
    assert one.total_steps == 40


def test_metrics_summary_with_an_absent_class():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn "ill-defined" warnings, no NaN
        s = metrics.summary([0, 0, 1, 1, 3], [0, 1, 1, 1, 2], num_classes=4)
    assert s["absent_classes"] == [2]
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)  # over the present classes 0, 1, 3
    f1 = s["f1_per_class"]
    assert len(f1) == 4 and f1[2] == 0 and s["macro_f1"] == pytest.approx(f1.mean())  # 2 is predicted: counts
    assert metrics.summary([0, 1], [0, 1], 4)["macro_f1"] == 1.0  # classes 2, 3 neither true nor predicted


# -- augmentation -------------------------------------------------------------

AUGMENTATIONS = {
    "flip": lambda x, g: transforms.random_geometry(x, g, flip=True),
    "rotate": lambda x, g: transforms.random_geometry(x, g, rotate=15.0),
    "crop": lambda x, g: transforms.random_geometry(x, g, crop=0.6),
    "flip_rotate_crop": lambda x, g: transforms.random_geometry(x, g, True, 15.0, 0.6),
    "jitter": lambda x, g: transforms.jitter(x, g, 0.4),
    "blur": lambda x, g: transforms.blur(x, g, 1.0),
    "erase": lambda x, g: transforms.erase(x, g, 1.0),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augmentation_keeps_shape_dtype_and_range(name, channels):
    x = torch.rand(8, channels, 32, 32, generator=torch.Generator().manual_seed(0))
    out = AUGMENTATIONS[name](x.clone(), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)  # it did something
    assert torch.equal(out, AUGMENTATIONS[name](x.clone(), torch.Generator().manual_seed(1)))  # seeded


def test_flip_alone_is_exact_and_prepare_batch_normalises():
    x = torch.rand(16, 1, 8, 8)
    out = transforms.random_geometry(x, torch.Generator().manual_seed(0), flip=True)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    assert all(f or torch.equal(o, xi) for f, o, xi in zip(flipped, out, x)) and 0 < sum(flipped) < 16
    u8 = torch.tensor([0, 255], dtype=torch.uint8).repeat(2, 1, 2, 1)
    batch = transforms.prepare_batch(u8)
    assert batch.min() == -1 and batch.max() == 1
    assert batch.is_contiguous(memory_format=torch.channels_last)


# -- torchrun -----------------------------------------------------------------

def torchrun_two_cpu_processes(params: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """`fer_utils.engine.train` under torchrun with 2 CPU processes, writing tmp_path/run; asserts it succeeded."""
    params_file = tmp_path / "ddp.yaml"
    params_file.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fer_utils.engine.train", str(params_file), "-p", "device=cpu", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_two_cpu_processes(data_root, tmp_path):
    proc = torchrun_two_cpu_processes(dict(dataset="folders", data_dir=str(data_root), image_size=32, model="resnet",
                                           width=8, epochs=2, batch_size=16, aug_flip=True), tmp_path)
    # 39 training images (44 less the 5 carved out as the selection split) over 2 ranks: 20 each (one
    # wrapped), 2 steps of <= 16 (a single process takes 3).
    assert "x 2 processes, 2 epochs of 2 steps" in proc.stdout
    assert proc.stdout.count("epoch 2/2") == 1  # only rank 0 logs
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["finished"]
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped from DDP
    checkpoint.load_checkpoint(tmp_path / "run" / "last.pt", create_model("resnet", 4, 1, 32, 8))
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2
    assert Path(tmp_path / "run" / "best.pt").is_file()


def test_torchrun_gathers_valence_arousal_scores_equal_to_one_process(tmp_path):
    """Each rank scores a shard of val; the gathered valence/arousal (and class) scores are one process's."""
    params = dict(dataset="synthetic", data_dir=str(tmp_path / "data"), synthetic_n_train=40, synthetic_n_val=15,
                  synthetic_n_test=4, synthetic_size=32, image_size=32, model="resnet", width=8, epochs=1,
                  batch_size=16, va_weight=0.5)
    torchrun_two_cpu_processes(params, tmp_path)
    logged = pd.read_csv(tmp_path / "run" / "history.csv").iloc[-1]
    run = train.prepare_run(resolve(None, {**params, "device": "cpu"}), None, tmp_path / "run", resume=False)
    arrays = train.load_arrays(run)
    model, _ = checkpoint.load_model(tmp_path / "run" / "last.pt")
    alone = train.validate(model, arrays.x_val, arrays.y_val, arrays.num_classes, run.device, va=arrays.va_val)
    for column in ("val_loss", "val_accuracy", "val_macro_f1", *train.VA_HISTORY_COLUMNS):
        assert logged[column] == pytest.approx(alone[column.removeprefix("val_")], rel=1e-5, abs=1e-6), column
    assert np.isfinite(logged[list(train.VA_HISTORY_COLUMNS)].to_numpy(float)).all()


# -- large images: the disk-backed cache and the DataLoader path ----------------

def test_one_batch_loader_serves_each_epochs_order_with_persistent_workers():
    x = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)
    y = np.arange(10, dtype=np.int64)
    loader = sampling.BatchLoader(x, y, 1, torch.device("cpu"))
    workers = []
    for epoch in (1, 2):
        batches = sampling.batch_indices(sampling.epoch_order(y, 10, dict(seed=0, imbalance="none"), epoch), 4)
        got = list(sampling.iterate_batches(loader, None, batches, torch.device("cpu"), num_workers=1))
        assert [yb.tolist() for _, yb in got] == [b.tolist() for b in batches]
        assert all(torch.equal(xb, torch.from_numpy(x[b.numpy()])) for (xb, _), b in zip(got, batches))
        workers.append([w.pid for w in loader.loader._iterator._workers])
    assert workers[0] == workers[1]


def test_224px_rgb_trains_through_the_disk_backed_cache_with_workers(tmp_path, monkeypatch):
    """The large-image path at the study's size (a small model: the data path is what is tested)."""
    loaded = []

    class Spy(sampling.BatchLoader):
        def __init__(self, x, y, num_workers, device):
            loaded.append((type(x), num_workers))
            super().__init__(x, y, num_workers, device)
    monkeypatch.setattr(train, "BatchLoader", Spy)
    params = resolve(None, dict(dataset="synthetic", data_dir=str(tmp_path / "data"), synthetic_n_train=24,
                                synthetic_n_val=8, synthetic_n_test=8, synthetic_size=224, image_size=224, channels=3,
                                model="resnet", width=8, epochs=1, batch_size=8, num_workers=2, device="cpu"))
    out = fit(params, tmp_path / "run")
    assert loaded == [(np.memmap, 2)]
    assert len(out["history"]) == 1 and np.isfinite(out["history"]["train_loss"]).all()
    assert torch.load(out["last_checkpoint"], weights_only=True)["finished"]
    cached = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "decoded").glob("*-224-3.*"))
    assert cached == ["lock", "lock", "meta.npz", "meta.npz", "npy", "npy"]


def interrupt_then_resume(params, run_dir, monkeypatch, at_batch: int) -> dict:
    """Train until the `at_batch`-th training batch (counted over epochs) raises KeyboardInterrupt, then
    resume from last.pt; returns the resumed fit's result."""
    real_prepare, calls = transforms.prepare_batch, [0]

    def interrupted(x, params=None, g=None, **kw):
        if g is not None:
            calls[0] += 1
            if calls[0] == at_batch:
                raise KeyboardInterrupt
        return real_prepare(x, params, g, **kw)

    monkeypatch.setattr(train, "prepare_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(params, run_dir)
    monkeypatch.setattr(train, "prepare_batch", real_prepare)
    return train.fit(params, open_dataset(params), run_dir, resume=True)


# -- weight averaging and soft labels -----------------------------------------

def test_ema_is_what_is_validated_saved_and_resumed_exactly(data_root, tmp_path, monkeypatch):
    params = make_params(data_root, ema=0.9, aug_flip=True)
    whole = fit(params, tmp_path / "whole")
    last = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    # The checkpoint's model is the average (what evaluation loads), distinct from the trained weights.
    assert not state_dicts_equal(last["model"], last["train_model"])
    assert last["ema_steps"] == 3 * 3  # 44 images / 16 per batch = 3 steps per epoch
    model = create_model("resnet", len(CLASSES), 1, 32, 8)
    model.load_state_dict(last["model"])
    val = train.validate(model, *images.load_split(open_dataset(params), "val", 32)[:2], len(CLASSES),
                         torch.device("cpu"))
    assert val["macro_f1"] == pytest.approx(whole["history"]["val_macro_f1"].iloc[-1])

    resumed = interrupt_then_resume(params, tmp_path / "resumed", monkeypatch, at_batch=8)  # in epoch 3
    pd.testing.assert_frame_equal(whole["history"][METRIC_COLUMNS], resumed["history"][METRIC_COLUMNS])
    again = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert state_dicts_equal(last["model"], again["model"])
    assert state_dicts_equal(last["train_model"], again["train_model"])


def test_cpu_bf16_trains_under_bf16_autocast_validates_in_fp32_and_is_reproducible(data_root, tmp_path,
                                                                                     monkeypatch, capsys):
    params = make_params(data_root, epochs=2, aug_flip=True, cpu_bf16=True)
    dtypes = {True: set(), False: set()}  # the logits' dtype, by model.training
    original = models.SmallResNet.forward

    def spy(self, x):
        out = original(self, x)
        dtypes[self.training].add(out.dtype)
        return out
    monkeypatch.setattr(models.SmallResNet, "forward", spy)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    run = fit(params, tmp_path / "bf16")
    assert dtypes == {True: {torch.bfloat16}, False: {torch.float32}}
    assert "under bfloat16 autocast" in capsys.readouterr().out
    # The best epoch was chosen on fp32 validation: what evaluation and `fer predict` give for the same weights.
    model = create_model("resnet", len(CLASSES), 1, 32, 8)
    model.load_state_dict(torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)["model"])
    val = train.validate(model, *images.load_split(open_dataset(params), "val", 32)[:2], len(CLASSES),
                         torch.device("cpu"))
    assert val["macro_f1"] == pytest.approx(run["history"]["val_macro_f1"].iloc[-1])
    # Seeded bf16 runs repeat exactly; the arithmetic differs from fp32, so the param trains (a new checkpoint).
    again = fit(params, tmp_path / "again")
    fp32 = fit({**params, "cpu_bf16": False}, tmp_path / "fp32")
    weights = {k: torch.load(r["last_checkpoint"], weights_only=True)["model"] for k, r in
               (("bf16", run), ("again", again), ("fp32", fp32))}
    assert state_dicts_equal(weights["bf16"], weights["again"])
    assert not state_dicts_equal(weights["bf16"], weights["fp32"])
    # cpu_bf16=auto is bf16 where the CPU has it natively and fp32 elsewhere, resolved before the run is keyed:
    # each machine reuses the run of the arithmetic it would train with, and the saved params say which.
    auto = {**params, "cpu_bf16": "auto"}
    assert fit(auto, tmp_path / "bf16")["reused"]
    assert yaml.safe_load((tmp_path / "bf16" / "params.yaml").read_text())["cpu_bf16"] is True
    # On a CPU without native bf16 it is emulated: 12x slower, so a run that insists says so; auto does not.
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert fit(auto, tmp_path / "fp32")["reused"]
        capsys.readouterr()
        assert not fit(auto, tmp_path / "auto")["reused"]
        assert "autocast" not in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "auto" / "params.yaml").read_text())["cpu_bf16"] is False
    assert state_dicts_equal(weights["fp32"], torch.load(tmp_path / "auto" / "last.pt", weights_only=True)["model"])
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        assert runtime.amp_dtype(torch.device("cpu"), amp=True, cpu_bf16=True) == torch.bfloat16
    assert runtime.amp_dtype(torch.device("cpu"), amp=True) is None  # off by default: fp32 on the CPU


def test_soft_labels_train_on_the_vote_distribution_and_need_votes(data_root, tmp_path, capsys):
    """A finished soft-label run is reused only while the votes are the same: votes that change no face's
    label change neither the params nor the data fingerprint, but they change the targets."""
    root = tmp_path / "ferplus"
    rows = []
    for split, folder in (("train", "FER2013Train"), ("val", "FER2013Test")):
        for c, name in enumerate(CLASSES):
            for j, src in enumerate(sorted((data_root / split / name).glob("*.png"))):
                (root / folder).mkdir(parents=True, exist_ok=True)
                location = f"{folder}/{name}_{j}.png"
                (root / location).write_bytes(src.read_bytes())
                votes = dict.fromkeys(CLASSES, 0)
                votes[name], votes[CLASSES[(c + 1) % 4]] = 7, 3  # a clear majority and a second opinion
                rows.append(dict(path=location, **votes))
    pd.DataFrame(rows).to_csv(root / "ferplus_votes.csv", index=False)
    params = make_params(root, dataset="ferplus", soft_labels=True, selection_fraction=0.25, epochs=2)
    data = open_dataset(params)
    run = train.prepare_run(params, data, tmp_path / "run", resume=False)
    arrays = train.load_arrays(run)
    # Each face's target is its own vote shares, in the decoded order, with the label as its arg-max.
    assert arrays.y_target.shape == (len(arrays.y_train), len(data.classes))
    np.testing.assert_allclose(arrays.y_target.sum(1), 1, rtol=1e-6)
    assert (arrays.y_target.argmax(1) == arrays.y_train).all()
    assert sorted(set(np.round(arrays.y_target.max(1), 6))) == [0.7]
    out = train.fit(params, data, tmp_path / "run")
    assert len(out["history"]) == 2 and np.isfinite(out["history"]["train_loss"]).all()
    assert train.fit(params, open_dataset(params), tmp_path / "run")["reused"]
    rows[0][CLASSES[1]] = 2  # 7 votes to 2 instead of 7 to 3: the same majority label
    pd.DataFrame(rows).to_csv(root / "ferplus_votes.csv", index=False)
    assert open_dataset(params).fingerprint == data.fingerprint
    capsys.readouterr()
    assert not train.fit(params, open_dataset(params), tmp_path / "run")["reused"]
    assert "was trained on other targets" in capsys.readouterr().out
    assert train.fit(params, open_dataset(params), tmp_path / "run")["reused"]
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # from before targets were recorded
    torch.save({k: v for k, v in last.items() if k != "targets"}, tmp_path / "run" / "last.pt")
    assert not train.fit(params, open_dataset(params), tmp_path / "run")["reused"]
    assert "does not record what its soft targets were made from" in capsys.readouterr().out
    # Soft and hard targets train differently.
    hard = train.fit({**params, "soft_labels": False}, open_dataset(params), tmp_path / "hard")
    assert not np.allclose(out["history"]["train_loss"], hard["history"]["train_loss"])
    with pytest.raises(train.DataError, match="soft_labels=true needs a vote distribution.*has neither"):
        train.fit(make_params(data_root, soft_labels=True), None, tmp_path / "folders")


def test_a_fer2013_folder_copy_takes_the_ferplus_votes_beside_it_mixed_with_its_own_labels(data_root, tmp_path,
                                                                                          capsys):
    """FER+ re-labelled FER2013's faces: with ferplus_votes.csv beside the class folders, soft_labels trains
    each face on vote_share of its votes (contempt and non-emotion votes dropped, the rest renormalised) plus
    the rest of its own label; faces without votes keep their label, and how many is said."""
    root = tmp_path / "fer2013"
    shutil.copytree(data_root, root)
    params = make_params(root, soft_labels=True, vote_share=0.5)
    data = open_dataset(params)
    locations = [str(loc) for loc in images.load_split(data, "train", 32)[2]]
    column = {"anger": "anger", "happy": "happiness", "sad": "sadness", "neutral": "neutral"}  # FER+'s names
    rows = []
    for location in sorted(data.frame["location"]):
        c = CLASSES.index(Path(location).parent.name)
        votes = dict.fromkeys(["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                               "unknown", "NF"], 0)
        votes.update({column[CLASSES[c]]: 6, column[CLASSES[(c + 1) % 4]]: 2, "contempt": 2, "unknown": 1})
        rows.append(dict(path=location, **votes))
    table = pd.DataFrame(rows).set_index("path")
    table.loc[locations[3]] = 0  # votes, but none for this dataset's classes
    table.loc[locations[3], "contempt"] = 5
    table.drop(locations[7]).reset_index().to_csv(root / "ferplus_votes.csv", index=False)  # no FER+ row
    arrays = train.load_arrays(train.prepare_run(params, data, tmp_path / "run", resume=False))
    unvoted = np.isin(locations, [locations[3], locations[7]])
    onehot = np.eye(len(CLASSES))[arrays.y_train]
    second = [data.classes.index(CLASSES[(CLASSES.index(data.classes[y]) + 1) % 4]) for y in arrays.y_train]
    nxt = np.eye(len(CLASSES))[second]
    # Shares over the dataset's classes: 6 own and 2 next of 8 (contempt, unknown dropped), mixed half and half.
    expected = 0.5 * onehot + 0.5 * (0.75 * onehot + 0.25 * nxt)
    np.testing.assert_allclose(arrays.y_target[~unvoted], expected[~unvoted], rtol=1e-6)
    np.testing.assert_array_equal(arrays.y_target[unvoted], onehot[unvoted])
    assert f"2 of {len(locations)} training faces have no votes" in capsys.readouterr().out
    assert "0.5 of each face's vote distribution and 0.5 of its label" in train.objective(params)
    with pytest.raises(ParamsError, match="'vote_share' = 0.5 needs soft_labels=true"):
        make_params(root, vote_share=0.5)
    table.reset_index().iloc[[0, 0, 1]].to_csv(root / "ferplus_votes.csv", index=False)
    with pytest.raises(train.DataError, match="repeats 1 of its paths"):
        train.load_arrays(train.prepare_run(params, data, tmp_path / "run", resume=False))
    table.reset_index().assign(path="other/face.png").iloc[:1].to_csv(root / "ferplus_votes.csv", index=False)
    with pytest.raises(train.DataError, match=f"none of the {len(locations)} training faces has votes"):
        train.load_arrays(train.prepare_run(params, data, tmp_path / "run", resume=False))


def test_distillation_trains_each_face_on_its_teachers_mean_probabilities_and_refuses_teachers_that_saw_val(
        data_root, tmp_path, capsys):
    """teachers: each training face's target is teacher_share of the teachers' mean probabilities (each under
    its evaluation's protocol: flip TTA where metrics.json says so) plus the rest of its own label; which
    teachers (sha256) is written beside the run, and a finished run is reused only while they are the same
    files. A teacher of other data or carve-out, a refit one (it trained
    on val), one of another input size, one without a data fingerprint and the run's own best.pt are refused."""
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    fit(make_params(data_root, epochs=2), t1)
    fit(make_params(data_root, epochs=2, width=16), t2)
    (t1 / "metrics.json").write_text(json.dumps({"test": {"tta": True}, "checkpoint": {"path": str(t1 / "best.pt")}}))
    params = make_params(data_root, teachers=f"{t1}, {t2 / 'best.pt'}", teacher_share=0.5)
    data = open_dataset(params)
    arrays = train.load_arrays(train.prepare_run(params, data, tmp_path / "student", resume=False))
    x = images.load_split(data, "train", 32)[0]
    mean = (inference.predict(checkpoint.load_model(t1 / "best.pt")[0], x, flip=True)
            + inference.predict(checkpoint.load_model(t2 / "best.pt")[0], x)) / 2
    expected = 0.5 * mean + 0.5 * np.eye(len(CLASSES))[arrays.y_train]
    np.testing.assert_allclose(arrays.y_target, expected, rtol=1e-5)
    assert not np.allclose(mean, np.eye(len(CLASSES))[arrays.y_train], atol=0.05)  # not the labels again
    recorded = json.loads((tmp_path / "student" / targets.TEACHERS_FILE).read_text())
    assert [(r["sha256"], r["flip_tta"]) for r in recorded] == [
        (hashlib.sha256((t / "best.pt").read_bytes()).hexdigest(), flip) for t, flip in ((t1, True), (t2, False))]
    assert "teachers' ensemble: agrees with" in capsys.readouterr().out
    assert "0.5 of the teachers' probabilities for each face and 0.5 of its label" in train.objective(params)
    out = fit(params, tmp_path / "student")  # trains on them
    assert np.isfinite(out["history"]["train_loss"]).all() and out["best_epoch"] >= 1
    assert fit(params, tmp_path / "student")["reused"]
    other = torch.load(t2 / "best.pt", weights_only=True)  # other weights at a teacher's path: not reused
    torch.save({**other, "model": {k: v + 0.01 if v.is_floating_point() else v for k, v in other["model"].items()}},
               t2 / "best.pt")
    capsys.readouterr()
    assert not fit(params, tmp_path / "student")["reused"]
    assert "was trained on other targets" in capsys.readouterr().out

    def refused(ckpt_path, match, error=checkpoint.CheckpointError):
        with pytest.raises(error, match=match):
            train.load_arrays(train.prepare_run({**params, "teachers": str(ckpt_path)}, data, tmp_path / "s2",
                                                resume=False))

    ckpt = torch.load(t1 / "best.pt", weights_only=True)
    for name, change, match in [("other", dict(fingerprint="0" * 16), "other data or another carve-out"),
                                ("refit", dict(params={**ckpt["params"], "refit": True}), "refit on train \\+ val")]:
        torch.save({**ckpt, **change}, tmp_path / f"{name}.pt")
        refused(tmp_path / f"{name}.pt", match)
    fit(make_params(data_root, epochs=1, image_size=40), tmp_path / "t40")
    refused(tmp_path / "t40", "takes 40 px faces with 1 channel")
    torch.save({k: v for k, v in ckpt.items() if k != "fingerprint"}, tmp_path / "unknown.pt")
    refused(tmp_path / "unknown.pt", "carries no data fingerprint")
    refused(tmp_path / "missing", "teachers: no checkpoint at", FileNotFoundError)
    refused(",", "names no checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="this run's own best.pt"):
        train.load_arrays(train.prepare_run(params, data, t1, resume=False))
    with pytest.raises(ParamsError, match="'teacher_share' = 0.5 needs 'teachers'"):
        make_params(data_root, teacher_share=0.5)
    with pytest.raises(ParamsError, match="soft_labels=true and 'teachers' both"):
        make_params(data_root, teachers=str(t1), soft_labels=True)


# -- valence and arousal ----------------------------------------------------------

def test_va_loss_is_one_minus_ccc_over_the_annotated_faces_with_finite_gradients_in_any_batch():
    target = torch.tensor([[0.2, 0.1], [0.6, -0.2], [float("nan"), float("nan")], [-0.1, 0.4]])
    pred = torch.tensor([[0.1, 0.2], [0.5, -0.3], [0.9, 0.9], [0.3, 0.3]])
    known = [0, 1, 3]
    expected = sum(1 - metrics.ccc(target[known, i], pred[known, i]) for i in range(2))
    assert train.va_loss(pred, target).item() == pytest.approx(expected.item(), abs=1e-4)  # up to its eps
    # No annotated face; the zero-initialised head's constant answers: finite loss and gradients.
    for target, value in ((torch.full((4, 2), float("nan")), 0.0), (target.nan_to_num(0.3), 2.0)):
        pred = torch.zeros(4, 2, requires_grad=True)
        loss = train.va_loss(pred, target)
        loss.backward()
        assert loss.item() == pytest.approx(value) and torch.isfinite(pred.grad).all()


def test_valence_arousal_targets_ride_the_label_batches_on_both_paths_and_need_annotations(data_root, tmp_path):
    x = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)
    y = np.arange(10, dtype=np.int64)
    va = torch.stack([torch.arange(10.0), -torch.arange(10.0)], 1)
    batches = sampling.batch_indices(sampling.epoch_order(y, 10, dict(seed=0, imbalance="none"), 1), 4)
    cpu = torch.device("cpu")
    in_memory = list(sampling.iterate_batches(torch.from_numpy(x), torch.from_numpy(y), batches, cpu, 0, va))
    with_workers = list(sampling.iterate_batches(x, y, batches, cpu, 1, va))  # the BatchLoader path
    for got in (in_memory, with_workers):
        assert len(got) == len(batches)
        for (xb, yb, vb), b in zip(got, batches):
            assert torch.equal(yb, b) and torch.equal(vb, va[b]) and torch.equal(xb, torch.from_numpy(x[b.numpy()]))
    # Folder data have no valence/arousal: one clear error, before anything is decoded or written.
    with pytest.raises(train.DataError, match="va_weight > 0 trains a valence/arousal head, which needs valence and "
                                              "arousal annotations; the 'folders' dataset has none in its train and "
                                              "val split .*: set va_weight=0"):
        train.fit(make_params(data_root, va_weight=1.0), None, tmp_path / "folders")
    assert not (tmp_path / "folders").exists()


def test_valence_arousal_head_is_logged_saved_and_resumed_exactly(tmp_path, monkeypatch):
    params = resolve(None, dict(dataset="synthetic", data_dir=str(tmp_path / "data"), synthetic_n_train=48,
                                synthetic_n_val=16, synthetic_n_test=8, synthetic_size=32, image_size=32, model="resnet",
                                width=8, epochs=2, batch_size=16, va_weight=0.5, ema=0.9, aug_flip=True, device="cpu"))
    whole = fit(params, tmp_path / "whole")
    history = pd.read_csv(tmp_path / "whole" / "history.csv")
    assert list(history.columns) == [*train.HISTORY_COLUMNS, *train.VA_HISTORY_COLUMNS]
    assert np.isfinite(history[list(train.VA_HISTORY_COLUMNS)].to_numpy()).all()
    assert set(train.VA_HISTORY_COLUMNS) <= set(whole["best_metrics"])
    model, ckpt = checkpoint.load_model(whole["best_checkpoint"])
    assert ckpt["model_config"]["valence_arousal"] and models.valence_arousal(model) is None
    model(torch.zeros(2, 1, 32, 32))
    assert models.valence_arousal(model).shape == (2, 2)

    resumed = interrupt_then_resume(params, tmp_path / "resumed", monkeypatch, at_batch=5)  # epoch 2 of 3
    columns = METRIC_COLUMNS + list(train.VA_HISTORY_COLUMNS)
    pd.testing.assert_frame_equal(whole["history"][columns], resumed["history"][columns])
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("whole", "resumed"))
    assert state_dicts_equal(a["model"], b["model"]) and state_dicts_equal(a["train_model"], b["train_model"])
