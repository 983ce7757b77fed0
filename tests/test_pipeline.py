"""End to end: params -> executed notebooks -> book, with caching and failure handling."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY
from fer_utils.book import pipeline
from fer_utils.data.datasets import open_dataset
from fer_utils.paths import REPO_ROOT



@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Runs and the book go to tmp_path; returns a tiny params file."""
    monkeypatch.setattr(pipeline, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(pipeline, "BUILD_DIR", tmp_path / "_build")
    params = tmp_path / "tiny.yaml"
    params.write_text(TINY + f"data_dir: {tmp_path / 'synthetic'}\n")
    return params


@pytest.mark.slow
def test_book_builds_then_cache_skips(tiny_book, tmp_path, monkeypatch, capsys):
    root = tiny_book.root
    assert tiny_book.code == 0
    out = tiny_book.log
    assert re.search(r"01_data: done in [\d.]+ s", out)
    assert re.search(r"\n    epoch 2/2 +train loss", out)  # the training chapter's progress, live
    html = root / "_build" / "html"
    page = (html / "01_data.html").read_text()
    # plotly figures load plotly.js from one local copy in _static (sphinx_offline): no CDN, no inlined bundle.
    assert page.count('class="plotly-graph-div"') >= 3
    assert "Plotly.newPlot" in page and not re.search(r'<script[^>]+src="https?://[^"]*plot', page)
    bundle = re.search(r'<script src="(_static/plotly-[\w.-]+\.min\.js)"></script>', page)
    assert bundle and (html / bundle.group(1)).stat().st_size > 1_000_000 and "* plotly.js v" not in page
    index = (html / "index.html").read_text()
    run = root / "runs" / "tiny"
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["data_fingerprint"] in index and prov["data_fingerprint"] in page  # front page and footer
    assert (run / "params.yaml").is_file() and prov["images"] == {"train": 120, "val": 32, "test": 32}
    # The headline is the report split (test); the choices were made on the selection split (val).
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics)[:2] == ["test", "val"] and metrics["checkpoint"]["tta_flip"]["split"] == "val"
    assert metrics["test"]["role"] == "report split" and 0 <= metrics["test"]["clean_accuracy"] <= 1
    calibrated = json.loads((run / "calibration.json").read_text())
    assert (calibrated["fit_split"], calibrated["report_split"], calibrated["report"]["n"]) == ("val", "test", 32)
    assert "test (report split)" in (root / "_build" / "src" / "index.md").read_text()
    evaluation = (html / "03_evaluation.html").read_text()
    assert "Protocol, chosen on the selection split (val)" in evaluation and "clean label" in evaluation
    assert "selection: the dataset" in page and "What these synthetic data can and cannot support" in page
    assert "per true class" in (html / "04_errors.html").read_text()


    # The rest adds runs and pages: on a copy, so the shared build stays as built.
    root = tmp_path / "copy"
    shutil.copytree(tiny_book.root, root, symlinks=True)
    html = root / "_build" / "html"
    monkeypatch.setattr(pipeline, "RUNS_DIR", root / "runs")
    monkeypatch.setattr(pipeline, "BUILD_DIR", root / "_build")
    isolated = root / "tiny.yaml"
    assert pipeline.main([str(isolated)]) == 0
    out = capsys.readouterr().out
    assert "01_data: cached, skipped" in out and "executing" not in out

    assert pipeline.main([str(isolated), "--dry-run", "-p", "epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "01_data: would execute" in out and "runs/tiny-epochs=3" in out
    assert not (root / "runs" / "tiny-epochs=3").exists()

    # A batch continues where it stopped: the finished run is skipped, the other executes,
    # each gets its own folder, and the book gains a comparison page.
    second = root / "second.yaml"
    second.write_text(isolated.read_text())
    assert pipeline.main([str(isolated), str(second)]) == 0
    out = capsys.readouterr().out
    assert out.count("01_data: cached, skipped") == 1 and out.count("01_data: done in") == 1
    assert (root / "runs" / "second" / "01_data.ipynb").is_file()
    runs_page = (html / "runs.html").read_text()
    assert "tiny" in runs_page and "second" in runs_page
    # The recipe page is the committed ledgers', whatever the book's own run: steps tried on real faces.
    assert "Recipe: each step and what it paid" in (html / "recipe.html").read_text()
    assert_no_machine_paths(html, root)


def assert_no_machine_paths(html, tmp_path):
    """No page names a folder of the machine that built it: not the repository, the home folder or the
    build's own folders (runs and data under tmp_path); paths are shown relative, under ~, or as .../name."""
    folders = [str(REPO_ROOT), str(Path.home()) + "/", str(tmp_path)]
    pages = sorted(html.glob("*.html"))
    assert {p.stem for p in pages} >= {"index", "01_data", "03_evaluation", "06_demo", "07_model_card", "runs", "recipe"}
    for page in pages:
        text = page.read_text()
        assert not [f for f in folders if f in text], page.name
    front = (tmp_path / "_build" / "src" / "index.md").read_text()
    assert "| dataset | synthetic (`.../synthetic`) |" in front and "data_dir: '.../synthetic'" in front


def test_interrupted_batch_continues_where_it_stopped(isolated, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the second run's third chapter: the re-run executes exactly what had not finished."""
    executed, interrupt_at = [], [len(pipeline.chapters()) + 3]

    def fake_execute(notebook, run_dir):
        if len(executed) + 1 == interrupt_at[0]:
            raise KeyboardInterrupt
        (run_dir / f"{notebook.stem}.ipynb").write_text("{}")
        executed.append((run_dir.name, notebook.stem))

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    second = tmp_path / "second.yaml"
    second.write_text(isolated.read_text())
    assert pipeline.main([str(isolated), str(second), "--no-book"]) == 130
    assert "interrupted: finished chapters are kept" in capsys.readouterr().out
    stems = [nb.stem for nb in pipeline.chapters()]
    assert executed == [("tiny", s) for s in stems] + [("second", s) for s in stems[:2]]

    executed.clear()
    interrupt_at[0] = 0
    assert pipeline.main([str(isolated), str(second), "--no-book"]) == 0
    assert executed == [("second", s) for s in stems[2:]]
    out = capsys.readouterr().out
    assert out.count("cached, skipped") == len(stems) + 2


def test_chapters_re_execute_when_the_soft_targets_votes_change(folders_dataset, tmp_path, monkeypatch, capsys):
    """soft_labels: the votes are in neither the params nor the data fingerprint, so the chapters' cache keys
    on their digest too: votes that change no label still change every chapter's outputs."""
    monkeypatch.setattr(pipeline, "RUNS_DIR", tmp_path / "runs")
    executed = []

    def fake_execute(notebook, run_dir):
        (run_dir / f"{notebook.stem}.ipynb").write_text("{}")
        executed.append(notebook.stem)

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    faces = sorted(p.relative_to(folders_dataset).as_posix() for p in folders_dataset.rglob("*.png"))
    votes = pd.DataFrame(dict(path=faces, neutral=7, happiness=3))
    votes.to_csv(folders_dataset / "ferplus_votes.csv", index=False)
    params = tmp_path / "soft.yaml"
    params.write_text(f"dataset: folders\ndata_dir: {folders_dataset}\nsoft_labels: true\n")
    assert pipeline.main([str(params), "--no-book"]) == 0
    assert pipeline.main([str(params), "--no-book"]) == 0
    assert len(executed) == len(pipeline.chapters())
    votes.loc[0, "happiness"] = 2
    votes.to_csv(folders_dataset / "ferplus_votes.csv", index=False)
    assert pipeline.main([str(params), "--no-book"]) == 0
    assert len(executed) == 2 * len(pipeline.chapters())
    assert "soft targets' sources: digest" in capsys.readouterr().out


@pytest.mark.slow
def test_failing_cell_names_notebook_and_cell_and_keeps_book(isolated, tmp_path, monkeypatch, capsys):
    html = tmp_path / "_build" / "html"
    html.mkdir(parents=True)
    (html / "index.html").write_text("previous good book")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_broken.py").write_text(
        "# %% tags=['parameters']\nparams_file = None\nrun_dir = None\n\n"
        "# %%\nx = 1\n\n# %%\nraise ValueError('synthetic failure for the test')\n")
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", notebooks)
    assert pipeline.main([str(isolated)]) == 1
    err = capsys.readouterr().err
    assert "notebook 01_broken.py failed in cell" in err
    assert "ValueError: synthetic failure for the test" in err
    assert (html / "index.html").read_text() == "previous good book"


def test_bad_params_fail_before_any_work(isolated, tmp_path, capsys):
    isolated.write_text(TINY + "epoch: 3\n")
    assert pipeline.main([str(isolated)]) == 1
    assert "unknown parameter 'epoch'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    isolated.write_text(TINY)
    assert pipeline.main([str(isolated), "-p", "refit=true", "-p", "tta_flip=true"]) == 1
    assert "refit=true trains on the selection split (val)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_code_hash_follows_the_executed_code_and_the_bundled_weights(tmp_path, monkeypatch):
    package = tmp_path / "fer_utils"
    for sub in ("weights", "engine", "book"):
        (package / sub).mkdir(parents=True)
    (package / "engine" / "train.py").write_text("x = 1\n")
    (package / "book" / "publish.py").write_text("y = 1\n")
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    first = pipeline.code_hash()
    (package / "book" / "publish.py").write_text("y = 2\n")  # book tooling code: the chapters need not re-execute
    assert pipeline.code_hash() == first
    (package / "weights" / "model.pt").write_bytes(b"weights")  # the demo and model card use it
    second = pipeline.code_hash()
    assert second != first
    (package / "engine" / "train.py").write_text("x = 2\n")
    assert pipeline.code_hash() not in (first, second)


def test_data_chapter_shows_the_split_roles_and_the_duplicates(tmp_path):
    """01_data on a folder dataset whose own val split (the report split) holds a copy of a train image under
    another label: the page lists the roles, the duplicate counts and the conflicting duplicate."""
    from conftest import face
    from fer_utils.config import params as params_mod

    root = tmp_path / "fer"
    for split, offset, n in (("train", 0, 6), ("val", 5000, 3)):
        for i, cls in enumerate(["angry", "happy"]):
            (root / split / cls).mkdir(parents=True)
            for j in range(n):
                face(offset + 100 * i + j).save(root / split / cls / f"{j}.png")
    face(0).save(root / "val" / "happy" / "copy_of_angry.png")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    params = params_mod.resolve(None, dict(dataset="folders", data_dir=str(root), image_size=24,
                                           selection_fraction=0.25))
    params_mod.save(params, run_dir / "params.yaml")
    pipeline.execute(pipeline.NOTEBOOK_DIR / "01_data.py", run_dir)
    outputs = json.dumps([c.get("outputs", []) for c in json.loads((run_dir / "01_data.ipynb").read_text())["cells"]])
    roles = open_dataset(params).split_roles
    assert set(roles) == {"train", "val", "test", "test_dup"}
    assert all(json.dumps(f"- **{split}**: {line}")[1:-1] in outputs for split, line in roles.items())
    assert "conflicting_groups" in outputs and "val/happy/copy_of_angry.png" in outputs
    assert "1 of them disagree with an earlier copy" in outputs and "test_dup" in outputs
