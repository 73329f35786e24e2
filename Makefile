# Two promises (see README): `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install browser slurm lint clean

# The venv takes about 6 GB (torch's CUDA build, which also runs on the CPU) and about 2 minutes.
$(STAMP): setup.cfg pyproject.toml
	@echo "setting up $(VENV): torch, timm, wandb, sweeps and the rest (about 6 GB on disk, ~2 minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[test]' | grep -E '^(Collecting|Successfully installed)' || true
	$(PY) -c "import torch, timm, wandb, sweeps" && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/cvsweep demo

# Test files run on TEST_JOBS processes (pytest-xdist), each file whole on one of them (the SLURM tests
# share one cluster; a file's module fixtures are built once): 1.44x faster than one process on 2 cores.
TEST_JOBS ?= 2

test: $(STAMP) browser slurm lint
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile

# pyflakes, import order and bugbear (configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The report test opens the page in Debian's headless Chromium (no browser download). As root with
# apt-get, `make test` installs Debian's chromium package (~300 MB) for it; otherwise that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium (apt-get, ~300 MB) for the report's browser test; skip it: make test-fast"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium not installed (apt-get install chromium): the browser test will be skipped"; fi; }

# The `cvsweep slurm` tests run job arrays on a one-node SLURM on this machine (scripts/slurm_local.sh, which
# the tests start). As root with apt-get, `make test` installs Debian's slurm-wlm and munge for them (~45 MB,
# seconds); otherwise those tests skip.
slurm:
	@command -v sbatch >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's slurm-wlm and munge (apt-get) for the SLURM tests; skip them: make test-fast"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
	      || echo "could not install slurm-wlm: the SLURM tests will be skipped"; \
	  else echo "SLURM not installed (apt-get install slurm-wlm munge): the SLURM tests will be skipped"; fi; }

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile -m "not slow"

bench: $(STAMP)
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) .cvsweep outputs wandb .cache test-artifacts
