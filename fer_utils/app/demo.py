"""The image-upload demo: an ipywidgets app (notebooks/06_demo.py) and a Voila server for it.

    python -m fer_utils.app.demo [PARAMS] [--port 8866] [--ip 127.0.0.1] [--prepare-only]

converts the demo chapter to an ipynb under .cache/demo/ (gitignored; Voila reads .ipynb only) with
PARAMS injected as its parameters, then serves it with Voila on localhost. `make demo` runs it.
"""
from __future__ import annotations

import argparse
import html
import io
import json
import os
import sys
from pathlib import Path

from ..analysis import figures
from ..engine.checkpoint import CheckpointError
from ..paths import CACHE_DIR, NOTEBOOK_DIR, WEIGHTS_DIR, display_path
from . import predict
from .faces import MAX_PIXELS, ImageError

DEMO_NOTEBOOK = NOTEBOOK_DIR / "06_demo.py"
DEMO_DIR = CACHE_DIR / "demo"
SAMPLE_NAME = "astronaut.png"
MAX_UPLOAD_MB = 64


def sample_photo() -> bytes:
    """scikit-image's astronaut (NASA, public domain; ships inside the scikit-image wheel) as PNG bytes."""
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "PNG")
    return buf.getvalue()


# -- choosing the model -------------------------------------------------------------

def load_models(run_dir=None) -> tuple[dict, list[str]]:
    """Predictors to offer: {"run": this run's best.pt, then each bundled model by name (predict.BUNDLED_MODELS,
    the 8-class FER+ one first)}, whichever load, the default first; and messages for those that exist but
    could not be loaded.

    The run's model is the default only when it was trained on real faces: a model of the synthetic
    cartoon faces answers real photos at random, so the bundled models go first then."""

    models, problems = {}, []
    candidates = {}
    if run_dir is not None and (Path(run_dir) / "best.pt").is_file():
        candidates["run"] = Path(run_dir) / "best.pt"
    candidates.update(predict.bundled_checkpoints())
    for key, path in candidates.items():
        try:
            predictor = predict.load_predictor(path)
        except (CheckpointError, OSError) as err:
            problems.append(f"{display_path(path)} could not be loaded: {err}")
            continue
        predictor.source = "run" if key == "run" else "bundled"
        models[key] = predictor
    real_first = sorted(models, key=lambda key: models[key].warning() is not None)  # stable: run, bundled
    return {source: models[source] for source in real_first}, problems


def models_markdown(models: dict, problems: list[str]) -> str:
    """Which model the demo uses (the first), in words, with any caution."""

    lines = []
    if not models:
        lines.append("**No model is available**, so the demo cannot classify faces: there is no checkpoint of "
                     f"this run (`best.pt`) and no bundled model (`{display_path(WEIGHTS_DIR)}`). "
                     "Train one with `make book PARAMS=params/fer2013.yaml`.")
    for i, predictor in enumerate(models.values()):
        lines.append(("" if i == 0 else "Also available (choose it below): ") + predictor.describe(for_page=True))
        if i == 0 and predictor.warning():
            lines.append(f"**Caution:** {predictor.warning()}")
    lines += [f"**Problem:** {p}" for p in problems]
    return "\n\n".join(lines)


# -- showing results -----------------------------------------------------------------

def _percent(p: float) -> str:
    return f"{p:.0%}"


def valence_arousal_text(face) -> str:
    """", valence +0.42, arousal -0.10" for a face from a model with a valence/arousal head, else ""."""
    if face.valence_arousal is None:
        return ""
    return ", valence {:+.2f}, arousal {:+.2f}".format(*face.valence_arousal)


def show_result(name: str, result, title_prefix: str = "") -> None:
    """Display one photo's answer in the current output: messages, the photo with numbered face boxes,
    then per face the crop the model saw and its class probabilities (and valence and arousal, when the
    model predicts them)."""
    import numpy as np
    from IPython.display import HTML, display


    faces = result.faces
    summary = "; ".join(f"face {i}: <b>{f.label}</b> ({_percent(f.probabilities[f.label])}{valence_arousal_text(f)})"
                        for i, f in enumerate(faces, 1))
    display(HTML(f'<div class="fer-result"><h3>{title_prefix}{html.escape(name)}</h3>'
                 f'<p class="fer-summary">{len(faces)} face{"s" if len(faces) != 1 else ""} classified: {summary}.</p>'
                 + "".join(f'<p class="fer-note">&#9888; {html.escape(m)}</p>' for m in result.messages)
                 + "</div>"))
    labels = [f"{f.label} {_percent(f.probabilities[f.label])}" for f in faces]
    figures.photo_faces(np.asarray(result.image), [f.box for f in faces], labels).show()
    for i, face in enumerate(faces, 1):
        where = "whole image" if not face.detected else "box x={}, y={}, w={}, h={}".format(*face.box)
        figures.face_probabilities(face.crop, face.probabilities,
                                   f"Face {i}: {face.label} ({_percent(face.probabilities[face.label])}"
                                   f"{valence_arousal_text(face)}), {where}"
                                   ).show()


def show_error(name: str, message: str) -> None:
    from IPython.display import HTML, display

    text = html.escape(message) if message.startswith(name) else f"<b>{html.escape(name)}</b>: {html.escape(message)}"
    display(HTML(f'<div class="fer-error" style="color:#a00;border-left:4px solid #a00;padding:4px 10px">'
                 f'&#10060; {text}</div>'))


# -- the app -------------------------------------------------------------------------

class DemoApp:
    """Upload button, detection switch, sample-photo button, model choice and an output area."""

    def __init__(self, models: dict):
        import ipywidgets as w

        self.models = models
        self.upload = w.FileUpload(accept="image/*", multiple=True, description="Upload photos",
                                   button_style="primary")
        self.no_detect = w.Checkbox(value=False, description="Skip face detection: each photo is one cropped face",
                                    indent=False, layout=w.Layout(width="max-content"))
        self.sample = w.Button(description="Try the sample photo", icon="user", layout=w.Layout(width="auto"),
                               tooltip="scikit-image's astronaut photo (ships with scikit-image)")
        self.choice = w.ToggleButtons(options=[("this run's model" if k == "run" else f"bundled {k} model", k)
                                               for k in models], description="Model:")
        self.status = w.HTML()
        self.output = w.Output()
        self._last: list[tuple[str, bytes]] = []
        self.upload.observe(self._on_upload, names="value")
        self.sample.on_click(lambda _: self.run([(SAMPLE_NAME, sample_photo())]))
        self.no_detect.observe(lambda _: self._last and self.run(self._last), names="value")
        self.choice.observe(lambda _: self._last and self.run(self._last), names="value")
        controls = [w.HBox([self.upload, self.sample]), self.no_detect]
        if len(models) > 1:
            controls.append(self.choice)
        help_text = w.HTML(f"<small>JPEG, PNG, WebP, BMP, TIFF or GIF, up to {MAX_PIXELS // 1_000_000} megapixels "
                           f"and {MAX_UPLOAD_MB} MB. Photos stay on this computer.</small>")
        self.widget = w.VBox([*controls, help_text, self.status, self.output])
        self.widget.add_class("fer-demo")
        if not models:
            for c in (self.upload, self.sample, self.no_detect):
                c.disabled = True
            self.status.value = '<b class="fer-error">No model available: see the note above.</b>'

    def _on_upload(self, change) -> None:
        files = [(f["name"], bytes(f["content"])) for f in change["new"]]
        if files:
            self.run(files)

    def run(self, files: list[tuple[str, bytes]]) -> None:
    
        self._last = files
        predictor = self.models.get(self.choice.value) if self.models else None
        self.output.clear_output()
        self.status.value = f"<i>Working on {len(files)} file{'s' if len(files) != 1 else ''} ...</i>"
        try:
            with self.output:
                if predictor is None:
                    show_error("demo", "no model is available (see the note above)")
                    return
                for name, data in files:
                    try:
                        result = predict.predict_image(data, predictor, detect=not self.no_detect.value, name=name)
                    except ImageError as err:
                        show_error(name, str(err))
                        continue
                    except Exception as err:  # never let a callback die silently in the browser
                        show_error(name, f"unexpected error: {type(err).__name__}: {err}")
                        continue
                    show_result(name, result)
        finally:
            self.status.value = ""


# -- serving -------------------------------------------------------------------------

def prepare_notebook(out_dir: str | Path = DEMO_DIR, params_file: str | Path | None = None,
                     run_dir: str | Path | None = None) -> Path:
    """notebooks/06_demo.py -> OUT/06_demo.ipynb with a kernelspec, and `params_file` / `run_dir` (when
    given) injected as its parameters (papermill, without executing it)."""
    import jupytext
    import papermill

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source, target = out_dir / "06_demo.src.ipynb", out_dir / "06_demo.ipynb"
    nb = jupytext.read(DEMO_NOTEBOOK)
    nb.metadata["kernelspec"] = dict(name="python3", display_name="Python 3", language="python")
    jupytext.write(nb, source)
    parameters = {k: str(Path(v).resolve()) for k, v in dict(params_file=params_file, run_dir=run_dir).items()
                  if v is not None}
    papermill.execute_notebook(str(source), str(target), parameters=parameters, prepare_only=True,
                               kernel_name="python3", progress_bar=False)
    source.unlink()
    return target


def voila_command(notebook: Path, port: int, ip: str = "127.0.0.1", open_browser: bool = False) -> list[str]:
    """The command serving `notebook` with Voila; its settings go to a voila.json beside the notebook."""
    from jupyter_core.paths import jupyter_config_path

    notebook = Path(notebook)
    settings = {
        # ipywidgets sends an upload through the websocket: tornado's default cap is 10 MiB
        "Voila": {"tornado_settings": {"websocket_max_message_size": MAX_UPLOAD_MB * 2 ** 20}},
        # jupytext's JupyterLab extension is for editing, and fails to load in Voila's older JupyterLab core
        "VoilaConfiguration": {"extension_denylist": ["jupyterlab-jupytext"], "show_tracebacks": True},
    }
    notebook.parent.mkdir(parents=True, exist_ok=True)
    (notebook.parent / "voila.json").write_text(json.dumps(settings, indent=2))
    voila = Path(sys.executable).with_name("voila")
    # config paths: ours first (it wins), then the usual Jupyter ones
    paths = [f"--Voila.config_file_paths={d}" for d in (notebook.parent, *jupyter_config_path())]
    return [str(voila), str(notebook), f"--port={port}", f"--Voila.ip={ip}",
            "--no-browser" if not open_browser else "--Voila.open_browser=True", *paths]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.app.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="?", help="params file whose run's best.pt to use (default: "
                        "params/default.yaml; the bundled model when that run has no checkpoint)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", 8866)))
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: localhost only)")
    parser.add_argument("--open", action="store_true", help="open a browser")
    parser.add_argument("--prepare-only", action="store_true", help="write the ipynb and print its path")
    args = parser.parse_args(argv)
    notebook = prepare_notebook(DEMO_DIR, args.params)
    if args.prepare_only:
        print(notebook)
        return 0
    command = voila_command(notebook, args.port, args.ip, args.open)
    print(f"serving the demo at http://{args.ip}:{args.port}/ (Ctrl-C stops it)", flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
