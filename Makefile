# Two commands do all set-up on a fresh machine:  make book  and  make test.
# The virtualenv is (re)installed only when requirements.txt or pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml
STAMP  := $(VENV)/.installed

.PHONY: book test venv clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

# Execute the notebooks with PARAMS (cached) and build the book into _build/html.
book: $(STAMP)
	$(PY) -m fer_utils book $(PARAMS) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# JupyterLab from the venv, in the repo root, on the venv's python3 kernel; the chapter notebooks
# (notebooks/*.py, jupytext) open as notebooks on double-click. Settings: jupyter-config/ (on
# JUPYTER_CONFIG_PATH, so nothing is written to your home's config) and jupytext.toml (no pairing:
# outputs never reach git). More options: make lab LAB_ARGS="--port=8890 --no-browser"
.PHONY: lab publish
lab: $(STAMP)
	JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter-config$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	JUPYTER_PREFER_ENV_PATH=1 \
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --ContentsManager.preferred_dir=notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# A self-contained copy of the last built book (make book first) that works offline, from any web
# server or from disk: _build/publish/site/ and _build/publish/fer-book.tar.gz.
publish: $(STAMP)
	$(PY) -m fer_utils publish

# The image-upload demo (notebooks/06_demo.py) as an app: Voila on http://127.0.0.1:$(DEMO_PORT)/ (localhost
# only). It uses runs/<run_name>/best.pt of PARAMS when that exists, else the bundled model. The notebook is
# converted to .cache/demo/06_demo.ipynb first (Voila reads .ipynb only). Ctrl-C stops it.
DEMO_PORT ?= 8866
.PHONY: demo
demo: $(STAMP)
	$(PY) -m fer_utils demo $(PARAMS) --port $(DEMO_PORT)

clean:
	rm -rf _build runs .cache/decoded
