"""Params files: defaults, overrides, and clear errors for unknown keys and bad values."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fer_utils.config import ladder
from fer_utils.config.params import DEFAULTS, SCHEMA, ParamsError, parse_override, resolve
from fer_utils.config.registry import MODELS
from fer_utils.engine.models import create_model

REPO = Path(__file__).resolve().parent.parent


def test_every_shipped_params_file_resolves():
    files = sorted((REPO / "params").glob("*.yaml"))
    assert {f.stem for f in files} >= {"default", "fer2013", "fer2013_csv", "ferplus", "affectnet_mini",
                                       "affectnet_csv"}
    for f in files:
        params = resolve(f)
        assert params["run_name"] == f.stem and set(params) == set(DEFAULTS)


def test_misspelt_key_is_named_with_suggestion_and_valid_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("dataset: synthetic\nlearnig_rate: 0.1\n")
    with pytest.raises(ParamsError) as err:
        resolve(f)
    message = str(err.value)
    assert "unknown parameter 'learnig_rate'" in message and str(f) in message
    assert "Valid keys:" in message and "image_size" in message
    with pytest.raises(ParamsError, match="Did you mean 'epochs'"):
        parse_override("epoch=3")


def test_overrides_and_types(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("epochs: 3\n")
    params = resolve(f, dict([parse_override("lr=1e-2"), parse_override("aug_flip=true")]))
    assert params["epochs"] == 3 and params["lr"] == 0.01 and params["aug_flip"] is True
    assert params["run_name"] == "x"
    with pytest.raises(ParamsError, match="allowed: synthetic"):
        resolve(None, dict(dataset="imagenet"))
    with pytest.raises(ParamsError, match="'epochs' = 'many' should be int"):
        resolve(None, dict(epochs="many"))
    with pytest.raises(ParamsError, match="key=value"):
        parse_override("epochs")


def test_data_dir_from_environment(monkeypatch):
    monkeypatch.setenv("FER_DATA_DIR", "/data/fer2013")
    assert resolve(REPO / "params/fer2013.yaml")["data_dir"] == "/data/fer2013"
    assert resolve(REPO / "params/fer2013.yaml", dict(data_dir="/elsewhere"))["data_dir"] == "/elsewhere"
    assert resolve(REPO / "params/default.yaml")["data_dir"] is None  # synthetic ignores it


# -- bad values: one line that names the key, the value and what is allowed ---------------------

@pytest.mark.parametrize("line, message", [
    ("epochs: -3", "parameter 'epochs' = -3 is out of range; allowed: >= 1"),
    ("batch_size: 0", "parameter 'batch_size' = 0 is out of range; allowed: >= 2"),
    ("batch_size: -1", "parameter 'batch_size' = -1 is out of range; allowed: >= 2"),
    ("image_size: 4", "parameter 'image_size' = 4 is out of range; allowed: 8 to 1024"),
    ("image_size:", "parameter 'image_size' has no value (null); give one (default: 48)"),
    ("1: 2", "unknown parameter '1' in {file}. Did you mean 'l1'?"),
    ("channels: true", "parameter 'channels' = True; allowed: 1, 3"),  # a choice matches by type too
    ("cpu_bf16: 1", "parameter 'cpu_bf16' = 1; allowed: false, true, auto"),
    ("cpu_bf16: sometimes", "parameter 'cpu_bf16' = 'sometimes'; allowed: false, true, auto"),
    ("run_name: ../elsewhere", "parameter 'run_name' = '../elsewhere' must be a folder name (no / or \\, not . or "
                               "..): the run goes in runs/<run_name>/"),
])
def test_bad_value_in_a_params_file_is_one_line_naming_key_value_and_range(tmp_path, line, message):
    f = tmp_path / "bad.yaml"
    f.write_text(f"dataset: synthetic\n{line}\n")
    with pytest.raises(ParamsError) as err:
        resolve(f)
    assert str(err.value).startswith(message.format(file=f)) and "\n" not in str(err.value)


def test_params_file_that_is_not_yaml_names_the_file_and_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("epochs: 3\nlr: [0.1, 0.2\nwidth: 8\n")
    with pytest.raises(ParamsError) as err:
        resolve(f)
    assert str(err.value) == f"{f} line 3: not valid YAML (expected ',' or ']', but got ':')"


def test_bad_override_values_are_one_line_errors():
    with pytest.raises(ParamsError) as err:
        parse_override("lr=[0.1")
    assert str(err.value) == ("override 'lr=[0.1': the value is not valid YAML (expected ',' or ']', but got "
                              "'<stream end>')")
    with pytest.raises(ParamsError, match=r"^parameter 'epochs' has no value \(null\); give one \(default: 10\)$"):
        resolve(None, dict([parse_override("epochs=")]))
    assert resolve(None, dict([parse_override("ablation=")]))["ablation"] == ""  # `key=`: empty text, no ablation
    assert resolve(None, dict([parse_override("early_stopping=")]))["early_stopping"] is None  # null: off


@pytest.mark.parametrize("command", [["train"], ["book", "--dry-run"]])
@pytest.mark.parametrize("content, message", [
    ("epochs: -3\n", "parameter 'epochs' = -3 is out of range; allowed: >= 1"),
    ("lr: [0.1\nwidth: 8\n", "{file} line 2: not valid YAML (expected ',' or ']', but got ':')"),
])
def test_cli_bad_params_file_is_one_error_line_without_traceback(tmp_path, command, content, message):
    f = tmp_path / "params_bad.yaml"
    f.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "fer_utils", command[0], str(f), *command[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and not proc.stdout, proc.stdout + proc.stderr
    # train: "error: ..."; the book pipeline: "[pipeline HH:MM:SS] ERROR: ..."; both on stderr
    assert "error: " in lines[0].lower() and lines[0].endswith(message.format(file=f)), lines[0]


# -- each model's smallest image size ------------------------------------------------------------

def run_error(model: str, size: int, channels: int, dropblock: float = 0.0) -> str | None:
    """Why `model` fails to build at `size` px or to run a training step (batch 2) and an eval forward
    (batch 1); None when it runs."""
    try:
        net = create_model(model, 7, channels, size, width=4, dropout=0.1, dropblock=dropblock)
        net.train()
        net(torch.rand(2, channels, size, size)).sum().backward()
        net.eval()
        with torch.no_grad():
            net(torch.rand(1, channels, size, size))
    except (RuntimeError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_minimum_image_size_is_the_smallest_that_runs(model, one_thread):
    minimum, floor = MODELS[model].min_image_size, SCHEMA["image_size"].low
    for channels in (1, 3):
        assert run_error(model, minimum, channels) is None, (model, minimum, channels)
        assert minimum == floor or run_error(model, minimum - 1, channels), (model, minimum - 1, channels)
    assert resolve(None, dict(model=model, image_size=minimum))["image_size"] == minimum
    with pytest.raises(ParamsError, match=f"'image_size' = {minimum - 1} is "):
        resolve(None, dict(model=model, image_size=minimum - 1))


@pytest.mark.parametrize("size", [8, 11, 12, 16, 23, 24])
def test_regularized_cnn_with_dropblock_runs_at_every_accepted_image_size(size, one_thread):
    # The ablation ladder's "regularized" rung trains regularized_cnn with dropblock 0.1 at the run's image_size.
    assert run_error("regularized_cnn", size, 1, dropblock=0.1) is None


def test_refit_needs_the_protocol_fixed_and_no_early_stopping_and_never_reaches_the_ablation():
    """refit trains on the selection split, so nothing may be chosen there: the protocol must be given and
    no epoch picked by it; the ablation's rungs, scored on val, never refit."""
    with pytest.raises(ParamsError, match="tta_flip=null"):
        resolve(None, dict(refit=True))
    with pytest.raises(ParamsError, match="early_stopping=3"):
        resolve(None, dict(refit=True, tta_flip=True, early_stopping=3))
    params = resolve(None, dict(refit=True, tta_flip=False))
    assert params["refit"] and ladder.variant_params(params, "baseline")["refit"] is False
