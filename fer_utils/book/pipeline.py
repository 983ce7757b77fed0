"""params -> executed notebooks -> Jupyter Book.

    python -m fer_utils.book.pipeline params/NAME.yaml [more.yaml ...] [-p key=value ...] [--force] [--dry-run]

Each params file gets a run folder `runs/<run_name>/` holding the resolved
params, provenance (data fingerprint, package versions, git commit, device)
and the executed chapter notebooks. A notebook is re-executed only when its
source, the resolved params, the data fingerprint (and the second dataset's,
with `eval_dataset`), the soft targets' sources (votes, teachers' weights:
`engine.targets.source_digest`) or fer_utils' own code changed (or with
--force). The book is built from the first run into a staging folder and
swapped into `_build/html` only when the build succeeded, so a failure never
destroys the last good book.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

from ..analysis import cross_dataset, evaluate, recipe
from ..config import params as params_mod
from ..data.datasets import DataError, open_dataset
from ..engine.targets import source_digest
from ..paths import BOOK_DIR, BUILD_DIR, NOTEBOOK_DIR, REPO_ROOT, RUNS_DIR, atomic_write, display_path, write_text
from .notebook import shown_params

RECIPE_DIR = BOOK_DIR / "recipe"  # the recipe ledgers (`fer recipe`), a page of every book
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "opencv-python-headless", "plotly",
            "papermill", "jupytext", "jupyter-book")


class PipelineError(RuntimeError):
    pass


def log(message: str, error: bool = False) -> None:
    """Progress to stdout; an error (`error=True`) to stderr, so a batch's log and its failures part."""
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr if error else sys.stdout, flush=True)


def chapters() -> list[Path]:
    """Chapter notebooks in book order (their file names start with the chapter number)."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _device() -> str:
    import torch
    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def provenance(params: dict, ds) -> dict:
    """What a run was built from, for provenance.json (complete: data_dir is this machine's path; the pages
    show it with `display_path`)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return dict(run_name=params["run_name"], dataset=ds.format, data_dir=str(ds.root),
                data_fingerprint=ds.fingerprint, classes=list(ds.classes),
                images={s: int((ds.frame["split"] == s).sum()) for s in ds.splits},
                git_commit=_git_commit(), device=_device(), python=platform.python_version(),
                packages=versions)


def code_hash() -> str:
    """The library code and the bundled weights the chapters run with: everything in fer_utils but book/
    (the tooling that executes, publishes and serves the book changes no chapter's output)."""
    package = REPO_ROOT / "fer_utils"
    files = sorted(f for f in package.rglob("*.py") if "book" not in f.relative_to(package).parts[:1])
    h = hashlib.sha256()
    for f in files + sorted(package.glob("weights/*.pt")):
        h.update(f.relative_to(package).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def cache_key(notebook: Path, params: dict, fingerprint: str) -> str:
    h = hashlib.sha256(notebook.read_bytes())
    h.update(yaml.safe_dump(params, sort_keys=True).encode())
    h.update(fingerprint.encode())
    h.update(code_hash().encode())
    return h.hexdigest()


class _Echo:
    """A chapter's printed lines (training epochs) echoed live into the pipeline's log, indented:
    a batch followed over SSH shows progress, not silence, during a long training chapter."""

    def __init__(self):
        self.line_start = True

    def write(self, text: str) -> None:
        for line in text.splitlines(keepends=True):
            sys.stdout.write(("    " if self.line_start else "") + line)
            self.line_start = line.endswith("\n")

    def flush(self) -> None:
        sys.stdout.flush()


def execute(notebook: Path, run_dir: Path) -> None:
    """jupytext text -> ipynb -> papermill, written atomically next to the run's outputs."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    staging = run_dir / ".staging"
    staging.mkdir(exist_ok=True)
    source, partial = staging / f"{notebook.stem}.src.ipynb", staging / f"{notebook.stem}.ipynb"
    nb = jupytext.read(notebook)
    nb.metadata["kernelspec"] = dict(name="python3", display_name="Python 3", language="python")
    jupytext.write(nb, source)
    try:
        papermill.execute_notebook(str(source), str(partial), kernel_name="python3", cwd=str(run_dir),
                                   parameters=dict(params_file=str(run_dir / "params.yaml"),
                                                   run_dir=str(run_dir)),
                                   progress_bar=False, log_output=False, stdout_file=_Echo(),
                                   # local Unix sockets: no TCP ports, and no kernel warning about them per chapter
                                   config=Config(KernelManager=dict(transport="ipc")))
    except PapermillExecutionError as err:
        raise PipelineError(
            f"notebook {notebook.name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}\n  partial output: {partial}\n  cell source:\n"
            + "\n".join("    " + line for line in err.source.splitlines())) from None
    # `partial` is the temporary file and this rename atomic_write's last step; not atomic_write itself,
    # which would delete the partial output of a failed chapter that the error above points the reader to.
    os.replace(partial, run_dir / f"{notebook.stem}.ipynb")


def plan(params_files: list[Path], overrides: dict, sweep: str | None = None) -> list[tuple[Path, dict]]:
    """The batch: one (params file, overrides) per run, with distinct run names; no refit run (its val is
    not held out, and the chapters treat it as such).

    Overrides and sweep values name the run (`default-lr=0.01`) unless run_name is given,
    so runs of one params file with different values never overwrite each other.
    """
    values = [None]
    if sweep:
        key, _, raw = sweep.partition("=")
        values = [params_mod.parse_override(f"{key}={v}") for v in raw.split(",") if v != ""]
        if not values:
            raise params_mod.ParamsError(f"--sweep '{sweep}' must look like key=value1,value2")
    batch, names = [], {}
    for params_file in params_files:
        for value in values:
            extra = dict(overrides, **dict([value])) if value else dict(overrides)
            if extra and "run_name" not in extra:
                stem = params_mod.resolve(params_file)["run_name"]
                extra["run_name"] = "-".join([stem] + [f"{k}={v}" for k, v in extra.items()]).replace("/", "_")
            resolved = params_mod.resolve(params_file, extra)
            if resolved["refit"]:
                raise params_mod.ParamsError(
                    f"{params_file}: refit=true trains on the selection split (val), where the chapters fit the "
                    "calibration temperature and that the pages call held out: build the book of the run without "
                    "refit, and train the final model with `fer train ... -p refit=true`")
            name = resolved["run_name"]
            if name in names:
                raise params_mod.ParamsError(f"{params_file} and {names[name]} would both write runs/{name}; "
                                             "give one of them another run_name")
            names[name] = params_file
            batch.append((params_file, extra))
    return batch


def run(params_file: Path, overrides: dict, force: bool = False, dry_run: bool = False) -> Path:
    """Execute every chapter for one params file; returns its run folder."""
    params = params_mod.resolve(params_file, overrides)
    run_dir = RUNS_DIR / params["run_name"]
    log(f"{params_file} -> {run_dir}: opening dataset '{params['dataset']}'")
    started = time.perf_counter()
    ds = open_dataset(params)
    log(f"dataset ready: {len(ds.frame):,} images, {len(ds.classes)} classes, fingerprint {ds.fingerprint} "
        f"({time.perf_counter() - started:.1f} s)")
    data_key = ds.fingerprint
    targets = source_digest(params, ds, run_dir)
    if targets:  # soft targets: other votes or teachers' weights re-execute the chapters too
        data_key += f"+targets:{targets}"
        log(f"soft targets' sources: digest {targets}")
    if params["eval_dataset"]:  # the evaluation chapter scores a second dataset: new data there re-execute it too
        second = cross_dataset.open_eval_dataset(params)
        data_key += f"+{second.fingerprint}"
        log(f"second dataset '{second.format}' ready: {len(second.frame):,} images, fingerprint {second.fingerprint}")
    keys_file = run_dir / "cache_keys.json"
    keys = json.loads(keys_file.read_text()) if keys_file.is_file() else {}
    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        params_mod.save(params, run_dir / "params.yaml")
        write_text(run_dir / "provenance.json", json.dumps(provenance(params, ds), indent=2))
    notebooks = chapters()
    for i, notebook in enumerate(notebooks, 1):
        key = cache_key(notebook, params, data_key)
        cached = not force and keys.get(notebook.stem) == key and (run_dir / f"{notebook.stem}.ipynb").is_file()
        tag = f"[{i}/{len(notebooks)}] {notebook.stem}"
        if cached or dry_run:
            log(f"{tag}: {'cached, skipped' if cached else 'would execute'}")
            continue
        log(f"{tag}: executing ...")
        t0 = time.perf_counter()
        execute(notebook, run_dir)
        keys[notebook.stem] = key
        write_text(keys_file, json.dumps(keys, indent=2))
        log(f"{tag}: done in {time.perf_counter() - t0:.1f} s")
    return run_dir


def _metric_rows(run_dir: Path) -> list[str]:
    """Markdown table rows of a run's headline metrics (from the evaluation chapter's metrics.json)."""
    f = run_dir / "metrics.json"
    return evaluate.metrics_rows(json.loads(f.read_text()), run=run_dir.name) if f.is_file() else []


def _comparison_page(run_dirs: list[Path]) -> str:
    lines = ["# Runs compared", "", "Every run of this batch, with its headline metrics and the split and "
             "protocol they were measured on; compare runs on the report split (test). Accuracy on an imbalanced split is not comparable with accuracy "
             "on a balanced one: compare balanced accuracy and macro-F1 across datasets.", ""]
    lines += evaluate.metrics_header(run=True)
    for run_dir in run_dirs:
        rows = _metric_rows(run_dir)
        lines += rows or [f"| {run_dir.name} | - | - | - | - | not evaluated |"]
    lines += ["", "| run | dataset | data fingerprint | parameters that differ from the defaults |", "|---|---|---|---|"]
    for run_dir in run_dirs:
        prov = json.loads((run_dir / "provenance.json").read_text())
        params = yaml.safe_load((run_dir / "params.yaml").read_text())
        changed = ", ".join(f"`{k}={v}`" for k, v in shown_params(params).items() if k != "run_name")
        lines.append(f"| {run_dir.name} | {prov['dataset']} | `{prov['data_fingerprint']}` | {changed} |")
    return "\n".join(lines) + "\n"


def _front_page(run_dir: Path) -> str:
    prov = json.loads((run_dir / "provenance.json").read_text())
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    changed = shown_params(params)
    metrics = _metric_rows(run_dir)
    headline = ["## Headline results", "", "The headline is the **report split** (test): it made no choice. The "
                "selection split (val) chose the epoch and the protocol, so its numbers are optimistic; the "
                "original report split, duplicates of training images included, is there only for comparison "
                "with published numbers.", "", *evaluate.metrics_header(run=True), *metrics, ""] if metrics else []
    lines = [(BOOK_DIR / "intro.md").read_text().rstrip(), "", *headline, "## This build", "",
             "| | |", "|---|---|",
             f"| run | `{prov['run_name']}` |",
             f"| dataset | {prov['dataset']} (`{display_path(prov['data_dir'])}`) |",
             f"| data fingerprint | `{prov['data_fingerprint']}` |",
             f"| classes | {len(prov['classes'])}: {', '.join(prov['classes'])} |",
             "| images | " + ", ".join(f"{s} {n:,}" for s, n in prov["images"].items()) + " |",
             f"| git commit | `{prov['git_commit']}` |",
             f"| device | {prov['device']} |",
             f"| Python | {prov['python']} |",
             "| packages | " + ", ".join(f"{k} {v}" for k, v in prov["packages"].items()) + " |",
             "", "Parameters that differ from the defaults (the full resolved set is `params.yaml` "
             "in the run folder):", "", "```yaml", yaml.safe_dump(changed, sort_keys=False).rstrip() or "{}",
             "```", ""]
    return "\n".join(lines)


PLOTLY_JSON = "application/vnd.plotly.v1+json"


def _copy_for_book(executed: Path, target: Path) -> None:
    """Copy an executed notebook, dropping plotly's JSON twin of outputs that also carry HTML.

    myst-nb parses every mime type of an output and warns on the plotly JSON one, which -W
    turns into a failure; the HTML (plotly.js inlined, moved to _static by sphinx_offline) is
    what the book shows. An output with only the JSON (a figure that would vanish) keeps it, so
    the build still fails on it.
    """
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")  # papermill's cell holds this machine's absolute paths
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_JSON in data and "text/html" in data:
                del data[PLOTLY_JSON]
    atomic_write(target, lambda tmp: nbformat.write(nb, str(tmp)))


def build_book(run_dirs: list[Path]) -> Path:
    """Assemble the book's source (chapters of the first run, a comparison page when there are
    several, the recipe page from the committed ledgers) and build it; swap it in only on success."""
    run_dir = run_dirs[0]
    src = BUILD_DIR / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    prov = json.loads((run_dir / "provenance.json").read_text())
    config = yaml.safe_load((BOOK_DIR / "_config.yml").read_text())
    config.setdefault("html", {})["extra_footer"] = (
        f"Run <code>{prov['run_name']}</code>: dataset {prov['dataset']}, data fingerprint "
        f"<code>{prov['data_fingerprint']}</code>, parameters <code>runs/{prov['run_name']}/params.yaml</code>, "
        f"commit <code>{prov['git_commit'][:12]}</code>.")
    write_text(src / "_config.yml", yaml.safe_dump(config, sort_keys=False))
    write_text(src / "index.md", _front_page(run_dir))
    pages = []
    for notebook in chapters():
        executed = run_dir / f"{notebook.stem}.ipynb"
        if executed.is_file():
            _copy_for_book(executed, src / executed.name)
            pages.append(dict(file=notebook.stem))
    if len(run_dirs) > 1:
        write_text(src / "runs.md", _comparison_page(run_dirs))
        pages.append(dict(file="runs"))
    ledgers = recipe.read_ledgers(RECIPE_DIR)
    if ledgers:
        write_text(src / "recipe.md", recipe.page(ledgers))
        pages.append(dict(file="recipe"))
    write_text(src / "_toc.yml", yaml.safe_dump(dict(format="jb-book", root="index", chapters=pages),
                                                sort_keys=False))
    staging = BUILD_DIR / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    jb = Path(sys.executable).with_name("jupyter-book")
    log("building the book (warnings are errors) ...")
    t0 = time.perf_counter()
    proc = subprocess.run([str(jb), "build", str(src), "--path-output", str(staging), "-W", "--keep-going",
                           "--all"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError("the book build failed; the previous book is left in place.\n"
                            + (proc.stdout[-4000:] + proc.stderr[-4000:]).strip())
    html, old = BUILD_DIR / "html", BUILD_DIR / "html.old"
    shutil.rmtree(old, ignore_errors=True)
    if html.exists():
        html.rename(old)
    (staging / "_build" / "html").rename(html)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    log(f"book built in {time.perf_counter() - t0:.1f} s: {html / 'index.html'}")
    return html


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.book.pipeline",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="+", type=Path, help="params YAML files (one run each)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (repeatable)")
    parser.add_argument("--sweep", metavar="KEY=V1,V2", help="one run per value of KEY, for every params file")
    parser.add_argument("--force", action="store_true", help="re-execute even if cached")
    parser.add_argument("--dry-run", action="store_true", help="say what would execute, execute nothing")
    parser.add_argument("--no-book", action="store_true", help="execute the notebooks, skip the book build")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        overrides = dict(params_mod.parse_override(p) for p in args.param)
        batch = plan(args.params, overrides, args.sweep)
        run_dirs = []
        for i, (params_file, extra) in enumerate(batch, 1):
            if len(batch) > 1:
                log(f"run {i}/{len(batch)}")
            run_dirs.append(run(params_file, extra, args.force, args.dry_run))
        if not (args.dry_run or args.no_book):
            build_book(run_dirs)
    except (PipelineError, params_mod.ParamsError, DataError) as err:
        log(f"ERROR: {err}", error=True)
        return 1
    except KeyboardInterrupt:
        log("interrupted: finished chapters are kept; the same command continues where this one stopped")
        return 130
    log(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
