# The README's two commands: `make demo` (whole pipeline on the phantom) and `make test`.
# Each creates the virtual environment when missing and installs the pinned package set first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.echodiff-installed
PYTHON ?= python3

.PHONY: install test demo lab lint clean-demo

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: install lint
	$(PY) -m pytest || [ $$? -eq 5 ]

demo: install
	$(PY) -m echodiff.pipeline -f params/pipeline/demo.yaml

lab: install
	$(VENV)/bin/jupyter lab notebooks/

clean-demo:
	rm -rf data/phantom outputs runs
