# The README's two commands: `make demo` (whole pipeline on the phantom) and `make test`.
# Each creates the virtual environment when missing and installs the pinned package set first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.echodiff-installed
PYTHON ?= python3

.PHONY: install test demo lab lint clean-demo slurm-deps browser-deps

# uv installs the lock file and echodiff (editable) from the sources pip is configured with: echodiff/install.py.
$(STAMP): requirements.lock pyproject.toml echodiff/install.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) echodiff/install.py requirements.lock
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .

# pytest exits 5 when it collects no test; that is not a failure of the suite. TEST_WORKERS pytest-xdist workers,
# one test file (or all notebooks, in order) each at a time: see conftest.py. The browser test runs after them,
# alone: beside another worker's test, JupyterLab's "Run All Cells" was lost in 2 of 2 runs (passes alone, 12-27 s).
TEST_WORKERS ?= 2
BROWSER_TEST := tests/test_explore_browser.py
test: install lint slurm-deps browser-deps
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --ignore=$(BROWSER_TEST) || [ $$? -eq 5 ]
	$(PY) -m pytest $(BROWSER_TEST)

# PIPELINE=params/pipeline/demo_long.yaml: the same stages at bigger sizes (~62 min; see that file).
PIPELINE ?= params/pipeline/demo.yaml
demo: install
	$(PY) -m echodiff.pipeline -f $(PIPELINE)

# --allow-root: JupyterLab refuses to start as root (containers, cloud notebooks) without it.
lab: install
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# Slurm and munge for tests/test_slurm.py, which starts a single-node cluster on this machine (Debian/Ubuntu,
# root). Without them those tests are skipped and say why.
slurm-deps:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then echo "slurm-deps: installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; } || \
		echo "slurm-deps: apt-get failed; the Slurm tests will be skipped"; \
	else echo "slurm-deps: need root and apt-get to install slurm-wlm and munge; the Slurm tests will be skipped"; fi

# Debian's Chromium for tests/test_explore_browser.py, which drives notebook 06 in JupyterLab (root, apt-get).
# Without it that test is skipped and says why.
browser-deps:
	@if command -v chromium >/dev/null; then echo "browser-deps: installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
		echo "browser-deps: apt-get failed; the browser test will be skipped"; \
	else echo "browser-deps: need root and apt-get to install chromium; the browser test will be skipped"; fi

clean-demo:
	rm -rf data/phantom data/phantom_uniform outputs runs
