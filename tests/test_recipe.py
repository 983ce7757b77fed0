"""The recipe ledger: steps compared with their reference on the same images, costs from the history,
and a page whose sentences count what the table shows."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from fer_utils.analysis import evaluate, recipe
from fer_utils.config.params import resolve
from fer_utils.data.datasets import open_dataset
from fer_utils.engine import train
from fer_utils.metrics import scores


def _trained(tmp_path, name, data="data", **changes):
    params = resolve(None, {**dict(dataset="synthetic", data_dir=str(tmp_path / data), synthetic_n_train=96,
                                   synthetic_n_val=32, synthetic_n_test=32, synthetic_size=32, image_size=24,
                                   model="regularized_cnn", width=4, epochs=1, batch_size=32, bootstrap=20,
                                   ablation="", run_name=name), **changes})
    ds = open_dataset(params)
    run_dir = tmp_path / "runs" / name
    train.fit(params, ds, run_dir)
    evaluate.run(params, ds, run_dir, "cpu")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("recipe")
    return dict(base=_trained(tmp, "base"), longer=_trained(tmp, "longer", epochs=3, lr=3e-3),
                refit=_trained(tmp, "refit", refit=True, tta_flip=False),
                other_data=_trained(tmp, "other", data="other", seed=1), tmp=tmp)


def test_ledger_names_what_each_step_changes_costs_and_gains_against_its_reference(runs):
    table = recipe.ledger([(runs["base"], None), (runs["longer"], runs["base"])], "test machine", n_boot=50)
    base, step = table.iloc[0], table.iloc[1]
    assert (base["reference"], base["changes"], base["val_verdict"]) == ("", "", "")
    assert step["reference"] == "base" and step["changes"] == "epochs=3, lr=0.003"
    history = pd.read_csv(runs["longer"] / "history.csv")
    assert step["epochs"] == 3 and step["train_minutes"] == round(history["epoch_time_s"].sum() / 60, 1)
    metrics = {n: json.loads((runs[n] / "metrics.json").read_text()) for n in ("base", "longer")}
    for split in ("val", "test"):
        assert step[f"{split}_macro_f1"] == metrics["longer"][split]["macro_f1"]
        # The gain is the paired difference on the same images: the two runs' own macro-F1s apart.
        assert step[f"{split}_f1_gain"] == pytest.approx(metrics["longer"][split]["macro_f1"]
                                                         - metrics["base"][split]["macro_f1"])
        assert step[f"{split}_gain_low"] <= step[f"{split}_f1_gain"] <= step[f"{split}_gain_high"]
        assert step[f"{split}_verdict"] == ("better" if step[f"{split}_gain_low"] > 0 else
                                            "worse" if step[f"{split}_gain_high"] < 0 else "noise")
    predictions = evaluate.load_predictions(runs["longer"], "test")
    assert step["test_accuracy"] == scores(predictions["true"], predictions["predicted"])[0]


def test_the_page_counts_the_verdicts_and_names_the_best_from_the_ledger_the_cli_wrote(runs, capsys):
    out = runs["tmp"] / "book" / "recipe" / "synthetic.csv"
    assert recipe.main([str(runs["base"]), str(runs["longer"]), "--machine", "test machine", "--out", str(out),
                        "--bootstrap", "50"]) == 0
    assert "ledger: 2 steps" in capsys.readouterr().out
    table = recipe.read_ledgers(out.parent)["synthetic"]
    page = recipe.page({"synthetic": table})
    step = table.iloc[1]
    verdict = step["val_verdict"]
    counts = {v: int(v == verdict) for v in ("better", "noise", "worse")}
    assert (f"{counts['better']} of 1 steps beat their reference" in page
            and f"{counts['noise']} were within noise" in page and f"{counts['worse']} worse" in page)
    same = int(step["val_verdict"] == step["test_verdict"])
    assert f"gives the same verdict for {same} of 1" in page
    best = table.loc[table["val_macro_f1"].idxmax(), "step"]
    row = table.set_index("step").loc[best]
    against = f", {row['val_verdict']} against `base` there" if best == "longer" else ", the baseline"
    assert f"The best on the selection split is `{best}` (val macro-F1 {row['val_macro_f1']:.3f}{against};" in page
    assert "trained on: test machine" in page
    assert page.count("| `base` | - | - |") == 1 and "| `longer` | `base` | epochs=3, lr=0.003 |" in page


def test_runs_of_other_data_or_unfinished_runs_are_refused_with_the_reason(runs, tmp_path, capsys):
    with pytest.raises(recipe.RecipeError, match="different data"):
        recipe.ledger([(runs["base"], None), (runs["other_data"], runs["base"])], "m")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "params.yaml").write_text("epochs: 1\n")
    assert recipe.main([str(runs["base"]), str(unfinished), "--machine", "m", "--out", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "not a finished, evaluated run" in err and "metrics.json" in err and "history.csv" in err
    assert not (tmp_path / "x.csv").exists()
    fewer = tmp_path / "fewer"  # the same data, but scored on other val images
    shutil.copytree(runs["longer"], fewer)
    val = pd.read_csv(fewer / "predictions_val.csv")
    val.iloc[1:].to_csv(fewer / "predictions_val.csv", index=False)
    with pytest.raises(recipe.RecipeError, match="were not scored on the same val images"):
        recipe.ledger([(runs["base"], None), (fewer, runs["base"])], "m")
    stale = tmp_path / "stale"
    shutil.copytree(runs["base"], stale)
    metrics = json.loads((stale / "metrics.json").read_text())
    metrics["checkpoint"]["epoch"] += 1  # scored before best.pt was replaced
    (stale / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(recipe.RecipeError, match="not best.pt .* evaluate the run again"):
        recipe.ledger([(stale, None)], "m")


def test_a_refit_step_is_judged_on_the_report_split_only(runs):
    """A refit learnt from val: the ledger gives it no val gain and the page says why, and the selection
    split's best and cheapest come from the held-out steps."""
    table = recipe.ledger([(runs["base"], None), (runs["refit"], runs["base"])], "m", n_boot=50)
    step = table.iloc[1]
    assert step["val_verdict"] == recipe.TRAINED_ON and pd.isna(step["val_f1_gain"])
    assert step["changes"] == "refit=True" and step["test_verdict"] in ("better", "noise", "worse")
    page = recipe.page({"synthetic": table})
    assert "| - (trained on: refit) |" in page and "`refit` is a refit: trained on train + val" in page
    assert "0 of 0 steps" not in page and "The best on the selection split is `base`" in page


def test_changes_name_what_trains_differently_and_nothing_else():
    base = dict(scheduler="cosine", warmup_epochs=2, lr=0.004, run_name="a", data_dir="/x", bootstrap=100)
    assert recipe.changes(dict(base, warmup_epochs=1, run_name="b", data_dir="/y", bootstrap=9), base) == \
        "warmup_epochs=1"
    one = dict(base, scheduler="onecycle")
    assert recipe.changes(dict(one, warmup_epochs=1), one) == ""  # only the cosine schedule reads it
    assert recipe.changes(dict(one, warmup_epochs=1), base) == "scheduler=onecycle"
    assert recipe.changes(dict(one, mixup=0.2), one) == "mixup=0.2"  # an idea tried and removed still counts
    assert recipe.changes({k: v for k, v in one.items() if k != "lr"}, one) == "lr=0.002"  # missing: the default
