"""The demo's model choice and its Voila launch command (no browser here: test_demo_browser.py drives the
app itself; test_card.py covers the model card chapter)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat

from fer_utils.app import demo, predict
from photos import tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_models_prefer_a_real_data_run_then_the_bundled_one(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_MODELS", {"ferplus": tiny_checkpoint(tmp_path / "bundled.pt", seed=2)})
    run = tmp_path / "run"
    run.mkdir()
    models, problems = demo.load_models(run)
    assert list(models) == ["ferplus"] and problems == []
    tiny_checkpoint(run / "best.pt", dataset="folders")
    models, problems = demo.load_models(run)
    assert list(models) == ["run", "ferplus"]
    text = demo.models_markdown(models, problems)
    assert text.startswith("Using this run's checkpoint") and "**Caution:**" not in text
    assert "Also available (choose it below): Using the bundled model" in text
    assert "`.../best.pt`" in text and str(tmp_path) not in text  # no folder of this machine on the page


def test_a_synthetic_data_model_is_never_the_default_for_photos(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_MODELS", {"ferplus": tiny_checkpoint(tmp_path / "bundled.pt", seed=2)})
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "best.pt", dataset="synthetic")
    models, problems = demo.load_models(run)
    assert list(models) == ["ferplus", "run"]  # the run's cartoon-face model is offered, second
    text = demo.models_markdown(models, problems)
    assert text.startswith("Using the bundled model") and "**Caution:**" not in text.split("Also available")[0]
    assert "Also available (choose it below): Using this run's checkpoint" in text


def test_no_model_and_a_broken_one_are_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_MODELS", {"ferplus": tmp_path / "weights" / "none.pt"})
    assert "No model is available" in demo.models_markdown(*demo.load_models(tmp_path))
    (tmp_path / "best.pt").write_bytes(b"garbage")
    models, problems = demo.load_models(tmp_path)
    assert models == {} and "could not be loaded" in problems[0]
    app = demo.DemoApp(models)
    assert app.upload.disabled and app.sample.disabled and "No model" in app.status.value


def test_app_widgets(tmp_path):
    app = demo.DemoApp({"run": predict.load_predictor(tiny_checkpoint(tmp_path / "t.pt"))})
    assert app.upload.accept == "image/*" and app.upload.multiple
    assert not app.upload.disabled and not app.no_detect.value


def test_sample_photo_is_the_astronaut():
    from fer_utils.app.faces import read_image
    assert read_image(demo.sample_photo()).size == (512, 512)


def test_prepared_notebook_has_a_kernel_and_the_parameters(tmp_path):
    nb_path = demo.prepare_notebook(tmp_path, params_file=REPO / "params" / "default.yaml", run_dir=tmp_path / "r")
    nb = nbformat.read(nb_path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and str(tmp_path / "r") in injected[0].source
    assert not any(o for c in nb.cells for o in c.get("outputs", []))  # prepared, not executed


def test_voila_command_and_its_settings(tmp_path):
    cmd = demo.voila_command(tmp_path / "nb" / "x.ipynb", 8123)
    assert "--Voila.ip=127.0.0.1" in cmd and "--port=8123" in cmd and "--no-browser" in cmd
    assert f"--Voila.config_file_paths={tmp_path / 'nb'}" in cmd
    settings = json.loads((tmp_path / "nb" / "voila.json").read_text())
    # tornado compares the websocket cap with an int: a string there breaks every upload
    assert settings["Voila"]["tornado_settings"] == {"websocket_max_message_size": demo.MAX_UPLOAD_MB * 2 ** 20}
    assert settings["VoilaConfiguration"]["extension_denylist"] == ["jupyterlab-jupytext"]
    from traitlets.config.loader import KVArgParseConfigLoader
    config = KVArgParseConfigLoader([a for a in cmd if a.startswith("--Voila.config")]).load_config()
    assert str(tmp_path / "nb") in list(config.Voila.config_file_paths)

