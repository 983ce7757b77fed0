"""Params files: defaults, overrides, and clear errors for unknown keys and bad values."""
from __future__ import annotations

from pathlib import Path

import pytest

from fer_utils.config.params import DEFAULTS, ParamsError, parse_override, resolve

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
