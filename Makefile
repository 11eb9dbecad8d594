# Two commands for a newcomer: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test lint format bench

install:
	$(PIP) install -e '.[dev]'

demo: install
	ekd-demo

test: install
	WANDB_MODE=disabled $(PYTHON) -m pytest -n 2 --dist loadfile -q --durations=15

lint:
	$(PYTHON) -m ruff check ekd tests bench
	$(PYTHON) -m ruff format --check ekd tests bench

format:
	$(PYTHON) -m ruff format ekd tests bench
	$(PYTHON) -m ruff check --fix ekd tests bench
