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
	$(PY) -m fer_utils.pipeline $(PARAMS) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf _build runs .cache/decoded
