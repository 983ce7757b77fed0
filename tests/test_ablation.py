"""The ablation ladder: variants train into their own folders, are scored like the evaluation chapter,
are reused on the next build, and a failing variant is reported without losing the others."""
from __future__ import annotations

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from conftest import TINY
from fer_utils.analysis import ablation, evaluate
from fer_utils.config import params as params_mod
from fer_utils.engine import runtime, train
from fer_utils.data.datasets import open_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    path = tmp / "tiny.yaml"
    path.write_text(TINY + f"data_dir: {tmp / 'synthetic'}\nablation: resnet,baseline,regularized\n")
    params = params_mod.resolve(path)
    return params, open_dataset(params), tmp / "run"


def test_unknown_variant_is_a_params_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("ablation: baseline,dropout_only\n")
    with pytest.raises(params_mod.ParamsError, match="dropout_only.*valid: baseline"):
        params_mod.resolve(path)


def test_variant_params_keep_the_run_and_change_one_step(tiny):
    params, _, _ = tiny
    assert ablation.variant_names(params) == ["baseline", "regularized", "resnet"]  # ladder order
    base, reg = (ablation.variant_params(params, n) for n in ("baseline", "regularized"))
    assert base["model"] == "baseline_cnn" and reg["model"] == "regularized_cnn"
    assert base["epochs"] == reg["epochs"] == params["ablation_epochs"] == 1
    for key in ("dataset", "data_dir", "image_size", "seed", "width", "lr", "batch_size"):
        assert base[key] == reg[key] == params[key]
    changed = {k for k in reg if reg[k] != base[k]}
    assert changed == {"model", "dropout", "dropblock", "weight_decay", "run_name"}


def test_ladder_trains_scores_with_sklearn_and_is_reused(tiny, one_thread):
    params, ds, run_dir = tiny
    results = ablation.run(params, ds, run_dir)
    table = ablation.summary_table(results, ds).set_index("variant")
    assert list(table.index) == ["baseline", "regularized", "resnet"] and (table["status"] == "ok").all()
    rare = ablation.rarest_classes(ds)
    counts = ds.split("train")["label"].value_counts()
    assert counts[ds.classes.index(rare[0])] == counts.min()
    for name, row in table.iterrows():
        saved = evaluate.load_predictions(run_dir / "ablation" / name, "val")
        assert len(saved) == len(ds.split("val"))
        assert row["accuracy"] == pytest.approx(accuracy_score(saved["true"], saved["predicted"]))
        assert row["macro_f1"] == pytest.approx(f1_score(saved["true"], saved["predicted"], average="macro"))
        per_class = f1_score(saved["true"], saved["predicted"], labels=rare, average=None)
        assert [row[f"f1_{c}"] for c in rare] == pytest.approx(list(per_class))
        assert row["gap"] == pytest.approx(row["train_accuracy"] - row["accuracy"])
        assert (run_dir / "ablation" / name / "history.csv").is_file()
    again = ablation.run(params, ds, run_dir)
    assert all(r["fit"]["reused"] for r in again)
    pd.testing.assert_frame_equal(ablation.summary_table(again, ds).set_index("variant"), table)


def test_a_failing_variant_is_reported_and_the_others_still_run(tiny, monkeypatch, one_thread):
    params, ds, run_dir = tiny
    real_fit = train.fit

    def fit(vp, data, out):
        if vp["model"] == "baseline_cnn":
            raise runtime.TrainingError("loss became nan at epoch 1")
        return real_fit(vp, data, out)

    monkeypatch.setattr(train, "fit", fit)
    table = ablation.summary_table(ablation.run(params, ds, run_dir), ds).set_index("variant")
    assert table.loc["baseline", "status"] == "failed: loss became nan at epoch 1"
    assert pd.isna(table.loc["baseline", "accuracy"])
    assert (table.drop("baseline")["status"] == "ok").all()
    assert ablation.best_variant(table.reset_index())["variant"] in ("regularized", "resnet")
