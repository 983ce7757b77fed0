"""The demo's model choice, its Voila launch command and the model-card chapter (no browser here:
test_demo_browser.py drives the app itself)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import torch

from fer_utils.app import demo, predict
from photos import FER2013_CLASSES, tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_models_prefer_a_real_data_run_then_the_bundled_one(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_CHECKPOINT", tiny_checkpoint(tmp_path / "bundled.pt", seed=2))
    run = tmp_path / "run"
    run.mkdir()
    models, problems = demo.load_models(run)
    assert list(models) == ["bundled"] and problems == []
    tiny_checkpoint(run / "best.pt", dataset="folders")
    models, problems = demo.load_models(run)
    assert list(models) == ["run", "bundled"]
    text = demo.models_markdown(models, problems)
    assert text.startswith("Using this run's checkpoint") and "**Caution:**" not in text
    assert "Also available (choose it below): Using the bundled model" in text
    assert "`.../best.pt`" in text and str(tmp_path) not in text  # no folder of this machine on the page


def test_a_synthetic_data_model_is_never_the_default_for_photos(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_CHECKPOINT", tiny_checkpoint(tmp_path / "bundled.pt", seed=2))
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "best.pt", dataset="synthetic")
    models, problems = demo.load_models(run)
    assert list(models) == ["bundled", "run"]  # the run's cartoon-face model is offered, second
    text = demo.models_markdown(models, problems)
    assert text.startswith("Using the bundled model") and "**Caution:**" not in text.split("Also available")[0]
    assert "Also available (choose it below): Using this run's checkpoint" in text


def test_no_model_and_a_broken_one_are_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_CHECKPOINT", tmp_path / "weights" / "none.pt")
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


# -- the model card chapter -------------------------------------------------------

def _run_card(tmp_path, checkpoint) -> str:
    import jupytext
    import papermill

    nb = jupytext.read(REPO / "notebooks" / "07_model_card.py")
    nb.metadata["kernelspec"] = dict(name="python3", display_name="Python 3", language="python")
    src, out = tmp_path / "card.src.ipynb", tmp_path / "card.ipynb"
    jupytext.write(nb, src)
    papermill.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                               parameters=dict(run_dir=str(tmp_path / "run"), checkpoint=str(checkpoint)))
    executed = nbformat.read(out, as_version=4)
    return "\n".join(o.get("data", {}).get("text/markdown", "") for c in executed.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_model_card_reads_everything_from_the_checkpoint(tmp_path):
    path = tiny_checkpoint(tmp_path / "card.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["params"].update(data_dir="/data/fer2013", epochs=30, early_stopping=5)
    ckpt["metrics"] = dict(val=dict(n=3589, accuracy=0.6234, balanced_accuracy=0.5812, macro_f1=0.5723,
                                    accuracy_ci=[0.61, 0.64], majority_class="happy", majority_balanced_accuracy=1 / 7,
                                    protocol="FER2013 PublicTest, single crop",
                                    f1_per_class=[0.5, 0.85, 0.45, 0.75, 0.4, 0.3, 0.5]),
                           checkpoint=dict(path="x", epoch=1))
    torch.save(ckpt, path)
    text = _run_card(tmp_path, path)
    for expected in ("resnet, width 4", "48x48 grayscale", "7 classes: " + ", ".join(FER2013_CLASSES),
                     "folders data in `fer2013`", "at most 30 epochs, early stopping after 5",
                     "| val | 3589 | 62.3% (61.0% to 64.0%) | 58.1% | 0.572 | 14.3% (happy) | FER2013 PublicTest",
                     "Weakest: **disgust** (0.30); strongest: **happy** (0.85)", "balanced accuracy (mean recall",
                     "no notion of contempt", "web images"):
        assert expected in text, expected
    assert "| checkpoint |" not in text  # metrics.json's checkpoint entry is not a split
    # paths as a published page may show them: not this machine's folders
    assert "`.../card.pt`" in text and "data_dir: '.../fer2013'" in text and str(tmp_path) not in text


@pytest.mark.slow
def test_model_card_without_a_bundled_model(tmp_path):
    text = _run_card(tmp_path, tmp_path / "none.pt")
    assert "There is no bundled model" in text
    json.dumps(text)  # plain text, no error output
