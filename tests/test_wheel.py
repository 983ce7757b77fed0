"""A user's install: the wheel built from this checkout, in a venv of its own, used from outside the checkout.

`make` installs the package editable (`pip install -e .`), which reads the sources in place: it cannot
show that the wheel ships every module, the bundled weights and the `fer` command, nor that the
installed package never reaches back into the repository. These tests build the wheel, install it
into a fresh venv and predict with it from a folder outside the repository.

The fresh venv gets the wheel alone (`--no-deps`); its third-party packages are the pinned ones of the
running environment (requirements.txt, what `make` installs), made visible by a .pth file. Installing
requirements.txt into a truly empty venv took 6 min 44 s and 6.6 GB on this project's 2-core
machine (torch is a CUDA build), per test run. A .pth line only appends a folder to sys.path: the .pth
files inside that folder (among them the editable install of this checkout) are not processed, so the
venv's `fer_utils` can only be the wheel's; the tests check that it is.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as normalise

from fer_utils.app.predict import BUNDLED_MODELS

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared_requirements() -> list[Requirement]:
    """Every third-party requirement of pyproject.toml: the core and each extra."""
    lines = PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values() for r in extra]
    return [r for r in map(Requirement, lines) if r.name != PYPROJECT["name"]]


def pinned_versions() -> dict[str, str]:
    """requirements.txt as {normalised name: version}; every line of the lock is an exact pin."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"requirements.txt pins exactly: {line!r}"
            pins[normalise(req.name)] = specs[0].version
    return pins


def test_pinned_requirements_satisfy_every_declared_range():
    """`make` installs requirements.txt and then the package with --no-deps: the lock must cover every
    dependency pyproject.toml declares (core and extras), at a version inside its range."""
    pins = pinned_versions()
    missing = [str(r) for r in declared_requirements() if normalise(r.name) not in pins]
    outside = [f"{r} (pinned {pins[normalise(r.name)]})" for r in declared_requirements()
               if normalise(r.name) in pins and not r.specifier.contains(pins[normalise(r.name)])]
    assert not missing, f"declared in pyproject.toml but not pinned in requirements.txt: {missing}"
    assert not outside, f"requirements.txt pins outside pyproject.toml's ranges: {outside}"


def test_import_fer_utils_loads_no_torch_until_the_api_is_used():
    """`import fer_utils` and the torch-free config layer stay light; the API's first use loads the model code."""
    code = ("import sys, fer_utils, fer_utils.config.params\n"
            "print('torch' in sys.modules)\n"
            "f = fer_utils.predict_image\n"
            "print('torch' in sys.modules, f.__module__, fer_utils.load_predictor.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "fer_utils.app.predict", "fer_utils.app.predict"]


# -- the wheel in a venv of its own ---------------------------------------------------------------------------

def run(cmd, **kw) -> subprocess.CompletedProcess:
    """Run `cmd`; on failure, fail the test with its output (not only the exit status)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources: setuptools writes build/ and *.egg-info beside what it
    builds, and the checkout must stay clean (other tests may be reading it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO / "fer_utils", src / "fer_utils", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--wheel-dir", tmp / "dist", src])
    (built,) = (tmp / "dist").glob("fer_utils-*.whl")
    return built


@pytest.fixture(scope="module")
def user(tmp_path_factory, wheel) -> dict:
    """A venv with the wheel installed, a folder outside the repository to work in, and the photo."""
    tmp = tmp_path_factory.mktemp("user")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "pinned_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index", "--no-deps", wheel])

    import skimage.data
    work = tmp / "work"
    work.mkdir()
    shutil.copy(Path(skimage.data.__file__).parent / "astronaut.png", work / "astronaut.png")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return dict(venv=venv, python=python, site=site, work=work, env=env)


@pytest.mark.slow
def test_wheel_ships_every_module_the_bundled_weights_and_the_fer_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "fer_utils").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources - names == set()
    assert {f"fer_utils/weights/{path.name}" for path in BUNDLED_MODELS.values()} <= names
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "fer = fer_utils.cli:main" in entry_points


@pytest.mark.slow
@pytest.mark.parametrize("command", [["bin/fer"], ["bin/python", "-m", "fer_utils"]], ids=["fer", "python-m"])
def test_installed_wheel_finds_the_happy_astronaut_with_its_own_bundled_weights(user, command):
    proc = run([user["venv"] / command[0], *command[1:], "predict", "astronaut.png"], cwd=user["work"], env=user["env"])
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1, proc.stdout
    assert lines[0]["detected"] and lines[0]["label"] == "happy"
    # stderr names the checkpoint: the bundled one, inside the venv's copy of the package
    bundled = user["site"] / "fer_utils" / "weights" / BUNDLED_MODELS["ferplus"].name
    assert f"Using the bundled model, {bundled}:" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_installed_wheel_python_api_predicts_and_is_the_wheels_own_code(user, wheel):
    code = ("import json, sys, fer_utils\n"
            "torch_at_import = 'torch' in sys.modules\n"
            "result = fer_utils.predict_image('astronaut.png')\n"
            "print(json.dumps(dict(file=fer_utils.__file__, version=fer_utils.__version__, torch=torch_at_import,\n"
            "                      labels=[face.label for face in result])))\n")
    out = json.loads(run([user["python"], "-c", code], cwd=user["work"], env=user["env"]).stdout)
    assert Path(out["file"]).parent == user["site"] / "fer_utils"
    assert out["version"] == wheel.name.split("-")[1]  # pyproject.toml takes its version from __version__
    assert out["torch"] is False
    assert out["labels"] == ["happy"]
