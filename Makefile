# sa-ejhead: `make demo` and `make test` set up .venv on first use and reuse it afterwards.
PYTHON ?= python3.11
D2 ?= pypi
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sa_ejhead-ready
ITERS ?=
PYTEST_ARGS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: setup demo test ablation format lint clean-venv

# The stamp is written only at the end of a successful set-up; a .venv without it is removed and
# rebuilt. A change of setup.py or of the bootstrap script re-runs the set-up.
$(STAMP): setup.py tools/bootstrap.py tools/constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "[setup] ERROR: $(PYTHON) not found. Install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'."; exit 1; }
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --detectron2 $(D2)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) tools/run_demo.py $(if $(ITERS),--iters $(ITERS),)

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The CPU ablation of Tables 2-5 (hours; resumable: rerun to continue, finished runs are kept in
# projects/cpu_ablation/results/), then its tables in README.md and docs/ablation.md.
ablation: $(STAMP)
	$(PY) projects/cpu_ablation/run_ablation.py --jobs $(JOBS) --resume --markdown README.md docs/ablation.md

format: $(STAMP)
	$(PY) -m black -l 100 sa_ejhead tools tests configs projects setup.py

lint: $(STAMP)
	$(PY) -m black -l 100 --check sa_ejhead tools tests configs projects setup.py

clean-venv:
	rm -rf $(VENV)
