# sa-ejhead: `make demo` and `make test` set up .venv on first use and reuse it afterwards.
PYTHON ?= python3.11
D2 ?= pypi
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sa_ejhead-ready
ITERS ?=
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` / `make test-quick` (0: in one process). Each test runs on one
# torch thread (tests/conftest.py), so two workers keep a 2-core machine busy.
TEST_WORKERS ?= 2
JOBS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: setup demo test test-quick zoo ablation ablation-v2 ablation-long pretrain pretrain-r34 format lint clean-venv

# The stamp is written only at the end of a successful set-up; a .venv without it is removed and
# rebuilt. A change of setup.py or of the bootstrap script re-runs the set-up.
$(STAMP): setup.py tools/bootstrap.py tools/constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "[setup] ERROR: $(PYTHON) not found. Install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'."; exit 1; }
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --detectron2 $(D2)
	@# a second `make test` must install nothing: the stamp is newer than what it depends on
	@$(MAKE) --no-print-directory -q setup || { rm -f $(STAMP); \
	  echo "[setup] ERROR: the stamp is older than its dependencies (clock skew?)"; exit 1; }

setup: $(STAMP)

demo: $(STAMP)
	$(PY) tools/train_demo.py $(if $(ITERS),--iters $(ITERS),)

test: $(STAMP)
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# the suite without the tests marked slow (pytest.ini lists the markers)
test-quick: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Train the model zoo's SA-Shapes checkpoints (resumable: rerun to continue), pack and evaluate
# them, and rewrite the shipped weights, their manifest (hashes, AP) and docs/model_zoo.md.
zoo: $(STAMP)
	$(PY) projects/model_zoo/build_zoo.py

# The CPU ablation, protocol v3 (issue 29; hours, resumable: rerun to continue, finished runs are
# kept in projects/cpu_ablation/results_v2/): the pilot's deciding run, Table 2 and the efficient
# row, the equal-cost baselines (once results_v2/v3_timing.json is committed:
# projects/cpu_ablation/time_rows.py), then the component rows; 3 seeds; then its pilot, tables,
# verdicts and frontier plot in docs/ablation.md and docs/images/ablation_frontier.png.
ablation: $(STAMP)
	$(PY) projects/cpu_ablation/run_ablation.py --protocol v3 --jobs $(JOBS) --resume --markdown docs/ablation.md

# Protocol v2, the short schedule (lr 0.01, 1200 iterations): Tables 2 and 4 first, then 3, 5, E;
# its tables and verdicts in docs/measurements/ablation/v2.md.
ablation-v2: $(STAMP)
	$(PY) projects/cpu_ablation/run_ablation.py --protocol v2 --tables 2 4 3 5 E --jobs $(JOBS) --resume --markdown docs/measurements/ablation/v2.md

# v2's Table 2 ResNet-18 rows at lr 0.02 for 2400 iterations (resumable).
LONG_RUN = --tables 2 --configs baseline safpn ejhead safpn_ejhead --iters 2400 --opts optimizer.lr=0.02
ablation-long: $(STAMP)
	$(PY) projects/cpu_ablation/run_ablation.py --protocol v2 --seeds 0 1 2 --jobs $(JOBS) --resume $(LONG_RUN)
	$(PY) projects/cpu_ablation/run_ablation.py --protocol v2 --table-only --markers cpu-ablation-v2-len2400 \
		--markdown docs/measurements/ablation/v2.md $(LONG_RUN)

# Pre-train the demo backbone on sa_shapes_pretrain (resumable), then export its weights.
pretrain: $(STAMP)
	$(PY) projects/pretrain_backbone/pretrain.py

# The same for the ResNet-34 layout (the ablation's deeper-backbone rows).
pretrain-r34: $(STAMP)
	$(PY) projects/pretrain_backbone/pretrain.py --depth 34

format: $(STAMP)
	$(PY) -m black -l 100 sa_ejhead tools tests configs projects setup.py

lint: $(STAMP)
	$(PY) -m black -l 100 --check sa_ejhead tools tests configs projects setup.py

clean-venv:
	rm -rf $(VENV)
