"""Where things live, and how files are written: the one place for both.

Every folder the project writes to hangs off one work folder (the checkout, or
$FER_HOME), so a run is found by its name alone and `make clean` knows what to
remove. Every artifact
that a later step reads (checkpoints, predictions, metrics, caches) is written
atomically: a crash or a full disk leaves the previous version, never half of
a new one.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"  # the bundled models, shipped inside the package (and the wheel)
REPO_ROOT = PACKAGE_DIR.parent  # the checkout (notebooks/, params/, book/) when run from one


def _work_dir() -> Path:
    """Where runs, caches and the built book go: $FER_HOME if set, else the checkout, else the current folder
    (an installed wheel must never write into site-packages)."""
    if os.environ.get("FER_HOME"):
        return Path(os.environ["FER_HOME"]).expanduser().resolve()
    if (REPO_ROOT / "notebooks").is_dir() and (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT
    return Path.cwd()


WORK_DIR = _work_dir()
RUNS_DIR = WORK_DIR / "runs"
CACHE_DIR = WORK_DIR / ".cache"
BUILD_DIR = WORK_DIR / "_build"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
PARAMS_DIR = REPO_ROOT / "params"


def run_dir(run_name: str) -> Path:
    """The folder of a named run: runs/<run_name>/."""
    return RUNS_DIR / run_name


def display_path(path: str | Path) -> str:
    """A path as a published page may show it: relative to the repository, else under ~, else its name.

    A book must not leak the layout of the machine that built it (user names, home folders)."""
    path = Path(path).expanduser()
    try:
        resolved = path.resolve()
    except OSError:
        resolved = path
    for root in (WORK_DIR, REPO_ROOT):
        if resolved.is_relative_to(root):
            return str(resolved.relative_to(root))
    home = Path.home()
    if resolved.is_relative_to(home):
        return str(Path("~") / resolved.relative_to(home))
    return str(resolved) if not resolved.is_absolute() else f".../{resolved.name}"


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it onto `path`.

    The rename is atomic on one filesystem, so readers see the old file or the whole new one. If
    `write` fails (e.g. the disk is full) the temporary file is removed and the error goes on."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def folder_cache(cache_dir: str | Path, root: str | Path) -> Path:
    """The one .npz in `cache_dir` that caches something about the data folder `root` (named by its resolved
    path, so each copy of a dataset has its own)."""
    return Path(cache_dir) / f"{hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:24]}.npz"


def save_arrays(path: str | Path, **arrays) -> Path:
    """Atomically write numpy arrays as a compressed .npz (loadable with allow_pickle=False), through a
    temporary file of this process's own: processes that write one cache at once (torchrun's ranks) never
    write into one another's file, and the last rename wins with a whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        try:
            np.savez_compressed(f, **arrays)
        except BaseException:
            os.unlink(f.name)
            raise
    os.replace(f.name, path)
    return path
