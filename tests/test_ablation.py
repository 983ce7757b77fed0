"""The ablation ladder: one idea per rung, the main recipe as a rung, variants train into their own folders,
are scored like the evaluation chapter (train in eval mode without augmentation, the gap in balanced
accuracy), each rung is compared with the rung above by a paired bootstrap, finished variants are reused,
and a failing variant is reported without losing the others. On the CPU the rungs train side by side in
one-thread worker processes, to the same weights as one-thread training in turn; a worker's crash names
its rung."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from conftest import TINY
from fer_utils.analysis import ablation, evaluate
from fer_utils.config import ladder
from fer_utils.config import params as params_mod
from fer_utils.data.datasets import open_dataset
from fer_utils.data.images import load_split
from fer_utils.engine.checkpoint import load_model
from fer_utils.engine.models import count_flops

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    path = tmp / "tiny.yaml"
    path.write_text(TINY + f"data_dir: {tmp / 'synthetic'}\nablation: resnet,baseline,augmented\nablation_seeds: 2\n")
    params = params_mod.resolve(path)
    return params, open_dataset(params), tmp / "run"


def test_unknown_variant_is_a_params_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("ablation: baseline,dropout_only\n")
    with pytest.raises(params_mod.ParamsError, match="dropout_only.*valid: baseline"):
        params_mod.resolve(path)


def test_each_rung_differs_from_the_one_above_by_one_idea():
    rungs = list(ladder.VARIANTS.values())
    assert rungs[0].group == "start"
    keys = set(rungs[0].overrides)
    for above, rung in zip(rungs, rungs[1:]):
        assert set(rung.overrides) == keys  # every rung sets the same keys: none leaks in from the run's params
        changed = {k for k in keys if rung.overrides[k] != above.overrides[k]}
        assert changed and changed <= set(ladder.GROUPS[rung.group]), (rung.change, changed)
    # the imbalance is handled from the first rung on, so no step measures the prior shift
    assert {r.overrides["imbalance"] for r in rungs} == {"weighted_loss"}


def test_the_main_recipe_is_a_rung():
    default = params_mod.resolve(REPO / "params/default.yaml")
    recipe = ladder.VARIANTS[ladder.RECIPE].overrides
    assert {k: default[k] for k in recipe} == recipe
    assert set(ladder.variant_names(default)) == set(ladder.VARIANTS)  # the default book runs the whole ladder


def test_variant_params_keep_the_run_and_change_one_step(tiny):
    params, _, _ = tiny
    assert ablation.variant_names(params) == ["baseline", "augmented", "resnet"]  # ladder order
    assert ladder.variant_seeds(params) == [params["seed"], params["seed"] + 1]
    base, reg = (ladder.variant_params(params, n) for n in ("baseline", "regularized"))
    assert base["model"] == "baseline_cnn" and reg["model"] == "regularized_cnn"
    assert base["epochs"] == reg["epochs"] == params["ablation_epochs"] == 1
    for key in ("dataset", "data_dir", "image_size", "seed", "width", "lr", "batch_size"):
        assert base[key] == reg[key] == params[key]
    changed = {k for k in reg if reg[k] != base[k]}
    assert changed == {"model", "dropout", "weight_decay", "run_name"}
    assert ladder.variant_params(params, "baseline", seed=7)["seed"] == 7
    assert ladder.changes_between("baseline", "augmented") == [ladder.VARIANTS[n].change
                                                               for n in ("regularized", "augmented")]


def test_workers_get_the_costliest_rungs_first_and_equal_ones_in_ladder_order():
    """The default ladder's U-Net costs the most (and trained last, alone, before this order); a rung with
    twice the epochs is twice the work."""
    params = params_mod.resolve(REPO / "params/default.yaml")
    jobs = [ablation.Job(n, s, ladder.variant_params(params, n, s), Path("unused"))
            for n in ladder.variant_names(params) for s in ladder.variant_seeds(params)]
    assert [jobs[i].variant for i in ablation.costliest_first(jobs, 8)] == [
        "unet", "baseline", "regularized", "augmented", "resnet"]
    longer = jobs[-1]._replace(params={**jobs[-1].params, "epochs": 3 * params["ablation_epochs"]})
    assert ablation.costliest_first(jobs[:-1] + [longer], 8)[0] == len(jobs) - 1


def test_count_flops_counts_a_convolutions_multiply_adds():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False))
    model.config = dict(in_channels=1, image_size=10)
    assert count_flops(model) == 2 * 4 * 9 * 10 * 10  # 2 per multiply-add: 4 filters of 9 taps at 100 pixels


def test_paired_bootstrap_on_a_constructed_example():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    a = np.where(rng.random(200) < 0.5, y, (y + 1) % 4)
    # b fixes 60 of a's errors: a real improvement on these images
    wrong = np.flatnonzero(a != y)[:60]
    b = a.copy()
    b[wrong] = y[wrong]
    better = evaluate.paired_bootstrap(y, a, b, n_boot=200, seed=1)
    assert better["difference"] == pytest.approx(f1_score(y, b, average="macro") - f1_score(y, a, average="macro"))
    assert 0 < better["low"] < better["difference"] < better["high"] and better["verdict"] == "better"
    assert evaluate.paired_bootstrap(y, b, a, n_boot=200, seed=1)["verdict"] == "worse"
    # c trades two of a's errors for two new ones: no difference this split can see
    c = a.copy()
    right = np.flatnonzero(a == y)[:2]
    c[wrong[:2]], c[right] = y[wrong[:2]], (y[right] + 1) % 4
    noise = evaluate.paired_bootstrap(y, a, c, n_boot=200, seed=1)
    assert noise["low"] < 0 < noise["high"] and noise["verdict"] == "noise"
    same = evaluate.paired_bootstrap(y, a, a, n_boot=50)
    assert same["difference"] == same["low"] == same["high"] == 0
    # each resample is the same draw for both sides, scored as scikit-learn scores it; seeds are averaged
    two_seeds = np.stack([b, c])
    got = evaluate.paired_bootstrap(y, a, two_seeds, n_boot=20, seed=3)
    draws = np.random.default_rng(3)
    diffs = []
    for _ in range(20):
        i = draws.integers(0, 200, 200)
        f1 = lambda p: f1_score(y[i], p[i], labels=np.union1d(y[i], p[i]), average="macro")  # noqa: E731
        diffs.append((f1(b) + f1(c)) / 2 - f1(a))
    assert (got["low"], got["high"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))


def test_ladder_trains_scores_with_sklearn_and_is_reused(tiny, one_thread):
    params, ds, run_dir = tiny
    results = ablation.run(params, ds, run_dir)
    table = ablation.summary_table(results, ds).set_index("variant")
    assert list(table.index) == ["baseline", "augmented", "resnet"] and (table["status"] == "ok").all()
    rare = ablation.rarest_classes(ds)
    counts = ds.split("train")["label"].value_counts()
    assert counts[ds.classes.index(rare[0])] == counts.min()
    x_train, _, _ = load_split(ds, "train", params["image_size"], params["channels"])
    for name, row in table.iterrows():
        folders = [run_dir / "ablation" / name / f"seed{s}" for s in ladder.variant_seeds(params)]
        val = [evaluate.load_predictions(f, "val") for f in folders]
        tr = [evaluate.load_predictions(f, "train") for f in folders]
        assert all(len(v) == len(ds.split("val")) for v in val) and row["seeds"] == 2
        assert row["accuracy"] == pytest.approx(np.mean([accuracy_score(v["true"], v["predicted"]) for v in val]))
        assert row["macro_f1"] == pytest.approx(np.mean([f1_score(v["true"], v["predicted"], average="macro")
                                                         for v in val]))
        per_class = np.mean([f1_score(v["true"], v["predicted"], labels=rare, average=None) for v in val], axis=0)
        assert [row[f"f1_{c}"] for c in rare] == pytest.approx(list(per_class))
        train_bal = np.mean([balanced_accuracy_score(t["true"], t["predicted"]) for t in tr])
        val_bal = np.mean([balanced_accuracy_score(v["true"], v["predicted"]) for v in val])
        assert row["train_balanced_accuracy"] == pytest.approx(train_bal)
        assert row["gap"] == pytest.approx(train_bal - val_bal)
        # train was scored in eval mode on the images as they are (no flip or dropout): recompute it by hand
        model, _ = load_model(folders[0] / "best.pt", "cpu")
        with torch.no_grad():
            probs = torch.softmax(model.eval()(torch.from_numpy(x_train).float() / 127.5 - 1), 1).numpy()
        assert tr[0][[f"prob_{c}" for c in ds.classes]].to_numpy() == pytest.approx(probs, abs=1e-5)
        assert (folders[0] / "history.csv").is_file()
    assert ladder.VARIANTS["augmented"].overrides["aug_flip"]  # so the check above covers an augmented rung
    step_table = ablation.steps(results, n_boot=50).set_index("variant")
    assert list(step_table["above"]) == ["baseline", "augmented"]  # the nearest rung above in this run's list
    assert step_table.loc["augmented", "changes"] == "; ".join(ladder.changes_between("baseline", "augmented"))
    for name, s in step_table.iterrows():
        assert s["macro_f1_change"] == pytest.approx(table.loc[name, "macro_f1"] - table.loc[s["above"], "macro_f1"])
        assert s["ci_low"] <= s["macro_f1_change"] <= s["ci_high"]
        assert s["verdict"] == ("better" if s["ci_low"] > 0 else "worse" if s["ci_high"] < 0 else "noise")
    again = ablation.run(params, ds, run_dir)
    assert all(fit["reused"] for r in again for fit in r["fits"])
    pd.testing.assert_frame_equal(ablation.summary_table(again, ds).set_index("variant"), table)


def test_a_failing_rung_is_reported_while_the_others_finish(tiny, monkeypatch, tmp_path):
    params, ds, _ = tiny
    params = {**params, "ablation_seeds": 1}
    # at lr 1e30 the plain CNN's second step overflows: a real NaN loss, in a worker of its own (a spawned
    # worker would not see a monkeypatched train.fit; it gets its params from the parent's ladder)
    baseline = ladder.VARIANTS["baseline"]
    monkeypatch.setitem(ladder.VARIANTS, "baseline", baseline._replace(overrides={**baseline.overrides, "lr": 1e30}))
    results = ablation.run(params, ds, tmp_path)
    table = ablation.summary_table(results, ds).set_index("variant")
    assert table.loc["baseline", "status"].startswith(f"failed: seed {params['seed']}: non-finite training loss")
    assert pd.isna(table.loc["baseline", "accuracy"])
    assert (table.drop("baseline")["status"] == "ok").all()
    assert ablation.best_variant(table.reset_index())["variant"] in ("augmented", "resnet")
    assert list(ablation.steps(results, n_boot=20)["variant"]) == ["resnet"]  # compared with augmented only


def make_jobs(params, root, names=("baseline", "resnet"), seeds=(0,)):
    return [ablation.Job(n, s, ladder.variant_params(params, n, s), root / n / f"seed{s}") for n in names
            for s in seeds]


def test_rungs_trained_side_by_side_equal_one_thread_training_in_turn(tiny, one_thread, tmp_path):
    params, ds, _ = tiny
    # three jobs on two workers: one worker trains two, so a worker's second job is checked too
    in_turn = ablation.fit_jobs(make_jobs(params, tmp_path / "in_turn", seeds=(0, 1))[:3], ds)
    side_by_side = ablation.fit_jobs(make_jobs(params, tmp_path / "side", seeds=(0, 1))[:3], ds, workers=2)
    assert not any(fit["reused"] for fit in in_turn + side_by_side)
    for a, b in zip(in_turn, side_by_side):
        pd.testing.assert_frame_equal(a["history"].drop(columns=["epoch_time_s", "train_images_per_s"]),
                                      b["history"].drop(columns=["epoch_time_s", "train_images_per_s"]))
        weights = [load_model(fit["best_checkpoint"], "cpu")[0].state_dict() for fit in (a, b)]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_crashing_worker_is_raised_with_its_rungs_name(tiny, tmp_path):
    params, ds, _ = tiny
    crashing = make_jobs(params, tmp_path)
    crashing[1].out.parent.mkdir(parents=True)
    crashing[1].out.write_text("a file where the run folder goes")  # an OSError that is no TrainingError
    with pytest.raises(RuntimeError, match=r"ablation run resnet seed 0 failed in its worker process:(.|\n)*"
                                           r"FileExistsError"):
        ablation.fit_jobs(crashing, ds, workers=2)
