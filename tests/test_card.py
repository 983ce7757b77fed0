"""The model cards (book.card) and the model card chapter that shows them: one card per bundled model
present, each with its own classes, scores and limits, all read from its checkpoint file."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nbformat
import pytest
import torch

from fer_utils.app import predict
from fer_utils.book import card
from photos import FER2013_CLASSES, tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
FERPLUS_CLASSES = FER2013_CLASSES + ["contempt"]


def with_metrics(path: Path, metrics: dict, **params) -> Path:
    """Store scores (an export's "metrics") and params in a checkpoint, as `fer export` does."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["metrics"] = metrics
    ckpt["params"].update(params)
    torch.save(ckpt, path)
    return path


@pytest.fixture
def bundled(tmp_path, monkeypatch) -> dict[str, Path]:
    """Two bundled models as `fer export` writes them: an 8-class FER+ one scored on the report split with
    flip TTA; a 7-class FER2013 one from before exports stored test scores and the protocol."""
    ferplus = with_metrics(tiny_checkpoint(tmp_path / "ferplus_resnet.pt", classes=FERPLUS_CLASSES, seed=1), dict(
        test=dict(n=3137, accuracy=0.824, balanced_accuracy=0.602, macro_f1=0.621, role="report split", tta=True,
                  protocol="imbalanced split; flip TTA",
                  f1_per_class=dict(zip(FERPLUS_CLASSES, [0.8, 0.9, 0.6, 0.85, 0.5, 0.4, 0.75, 0.2]))),
        val=dict(n=3191, accuracy=0.83, balanced_accuracy=0.61, macro_f1=0.63, role="selection split", tta=True,
                 protocol="imbalanced split; flip TTA")), dataset="ferplus")
    fer2013 = with_metrics(tiny_checkpoint(tmp_path / "fer2013_resnet.pt", seed=2), dict(
        val=dict(n=3589, accuracy=0.6517, balanced_accuracy=0.6135, macro_f1=0.6297, protocol="imbalanced split",
                 f1_per_class=[0.59, 0.85, 0.55, 0.77, 0.49, 0.3, 0.58])))
    models = {"ferplus": ferplus, "fer2013": fer2013}
    monkeypatch.setattr(predict, "BUNDLED_MODELS", models)
    return models


def test_one_card_per_bundled_model_present_the_default_first(bundled):
    assert [p.path for p in card.predictors()] == [bundled["ferplus"], bundled["fer2013"]]
    assert [card.heading(p) for p in card.predictors()] == [
        "## The `ferplus` model (8 classes, the default): `ferplus_resnet.pt`",
        "## The `fer2013` model (7 classes): `fer2013_resnet.pt`"]
    bundled["ferplus"].unlink()
    assert [card.heading(p) for p in card.predictors()] == [
        "## The `fer2013` model (7 classes, the default): `fer2013_resnet.pt`"]


def test_a_given_checkpoint_gets_the_only_card(bundled, tmp_path):
    given = tiny_checkpoint(tmp_path / "mine.pt")
    assert [card.heading(p) for p in card.predictors(given)] == ["## `mine.pt` (7 classes)"]
    assert card.predictors(tmp_path / "none.pt") == []
    assert card.missing(tmp_path / "none.pt").startswith("**There is no checkpoint at `.../none.pt`**")


def test_each_card_has_its_own_classes_scores_and_limits(bundled):
    ferplus, fer2013 = card.predictors()
    for predictor in (ferplus, fer2013):
        facts = dict(card.facts(predictor))
        assert facts["output"] == f"{len(predictor.classes)} classes: " + ", ".join(predictor.classes)
        assert hashlib.sha256(predictor.path.read_bytes()).hexdigest()[:16] in facts["file"]
    assert "8 classes: neutral, happy, sad, surprise, fear, disgust, anger, contempt" in card.facts_markdown(ferplus)

    scores = card.scores_markdown(ferplus)
    assert "| test (report split) | 3137 | 82.4% | 60.2% | 0.621 |" in scores
    assert "Protocol of these scores: flip test-time augmentation" in scores
    assert "Weakest: **contempt** (0.20); strongest: **happy** (0.90)" in scores
    assert "no report-split score" not in scores
    scores = card.scores_markdown(fer2013)
    assert "| val | 3589 | 65.2% | 61.4% | 0.630 |" in scores and "0.621" not in scores
    assert "Only the selection split (val) was scored" in scores
    assert "do not record whether flip test-time augmentation was used; `fer predict` and the demo use one pass" \
           in scores
    assert "Weakest: **disgust** (0.30); strongest: **happy** (0.85)" in scores

    assert not any("no notion" in text for text in card.limits(ferplus))
    assert any("it has no notion of contempt," in text for text in card.limits(fer2013))
    assert all(any("web images" in text for text in card.limits(p)) for p in (ferplus, fer2013))
    assert card.curves(ferplus) is not None


def test_a_refit_models_card_says_val_was_trained_on_and_the_last_epoch_kept(tmp_path):
    """A refit model learnt from val: its card must not call val's numbers a held-out selection."""
    path = with_metrics(tiny_checkpoint(tmp_path / "refit.pt"), dict(
        test=dict(n=3000, accuracy=0.66, balanced_accuracy=0.6, macro_f1=0.61, role="report split", tta=True)),
        refit=True, tta_flip=True)
    (predictor,) = card.predictors(path)
    assert "refit on train + the selection split (val)" in dict(card.facts(predictor))["training"]
    scores = card.scores_markdown(predictor)
    assert "which this model was trained on (refit)" in scores and "chose the kept epoch" not in scores


def test_no_bundled_model_is_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "BUNDLED_MODELS", {"ferplus": tmp_path / "a.pt", "fer2013": tmp_path / "b.pt"})
    assert card.predictors() == []
    assert card.missing().startswith("**There is no bundled model in this checkout** (looked for `.../a.pt`, "
                                      "`.../b.pt`)")


# -- the chapter -------------------------------------------------------------------

def run_chapter(tmp_path, monkeypatch, models: dict[str, Path], checkpoint=None) -> str:
    """Execute the chapter (papermill) with `models` as predict.BUNDLED_MODELS in its kernel, another
    process: an IPython startup file sets them before each cell runs (not at startup itself, where
    importing torch can outlast the kernel's 60 s to answer); returns the chapter's Markdown output."""
    import jupytext
    import papermill

    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "bundled.py").write_text(
        "def _bundle(*_):\n    from pathlib import Path\n    from fer_utils.app import predict\n"
        f"    predict.BUNDLED_MODELS = {{k: Path(v) for k, v in {models!r}.items()}}\n\n"
        "get_ipython().events.register('pre_run_cell', _bundle)\n")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = jupytext.read(REPO / "notebooks" / "07_model_card.py")
    nb.metadata["kernelspec"] = dict(name="python3", display_name="Python 3", language="python")
    src, out = tmp_path / "card.src.ipynb", tmp_path / "card.ipynb"
    jupytext.write(nb, src)
    papermill.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                               parameters=dict(run_dir=str(tmp_path / "run"),
                                               checkpoint=None if checkpoint is None else str(checkpoint)))
    executed = nbformat.read(out, as_version=4)
    return "\n".join(o.get("data", {}).get("text/markdown", "") for c in executed.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_the_chapter_shows_a_card_per_bundled_model(bundled, tmp_path, monkeypatch):
    text = run_chapter(tmp_path, monkeypatch, {k: str(v) for k, v in bundled.items()})
    first = text.index("## The `ferplus` model (8 classes, the default): `ferplus_resnet.pt`")
    second = text.index("## The `fer2013` model (7 classes): `fer2013_resnet.pt`")
    assert first < text.index("| test (report split) | 3137 |") < second < text.index("| val | 3589 |")
    assert text.count("### Known limits") == 2 and text.count("no notion of contempt") == 1
    assert text.index("no notion of contempt") > second
    assert "There is no" not in text and str(tmp_path) not in text


@pytest.mark.slow
def test_the_chapter_without_a_bundled_model(tmp_path, monkeypatch):
    text = run_chapter(tmp_path, monkeypatch, {"ferplus": str(tmp_path / "none.pt")})
    assert "There is no bundled model in this checkout" in text and "##" not in text
    json.dumps(text)  # plain text, no error output


@pytest.mark.slow
def test_the_chapter_reads_everything_from_a_given_checkpoint(tmp_path, monkeypatch):
    path = with_metrics(tiny_checkpoint(tmp_path / "card.pt"), dict(
        val=dict(n=3589, accuracy=0.6234, balanced_accuracy=0.5812, macro_f1=0.5723, accuracy_ci=[0.61, 0.64],
                 majority_class="happy", majority_balanced_accuracy=1 / 7, protocol="FER2013 PublicTest, single crop",
                 f1_per_class=[0.5, 0.85, 0.45, 0.75, 0.4, 0.3, 0.5]),
        checkpoint=dict(path="x", epoch=1)), data_dir="/data/fer2013", epochs=30, early_stopping=5)
    text = run_chapter(tmp_path, monkeypatch, {"ferplus": str(tmp_path / "none.pt")}, checkpoint=path)
    for expected in ("## `card.pt` (7 classes)", "resnet, width 4", "48x48 grayscale",
                     "7 classes: " + ", ".join(FER2013_CLASSES), "folders data in `fer2013`",
                     "at most 30 epochs, early stopping after 5",
                     "| val | 3589 | 62.3% (61.0% to 64.0%) | 58.1% | 0.572 | 14.3% (happy) | FER2013 PublicTest",
                     "Weakest: **disgust** (0.30); strongest: **happy** (0.85)", "balanced accuracy (mean recall",
                     "no notion of contempt", "web images"):
        assert expected in text, expected
    assert "| checkpoint |" not in text  # metrics.json's checkpoint entry is not a split
    # paths as a published page may show them: not this machine's folders
    assert "`.../card.pt`" in text and "data_dir: '.../fer2013'" in text and str(tmp_path) not in text
