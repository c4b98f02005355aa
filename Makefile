# The README's two set-up commands: `make reproduce` and `make test`.
# Each creates .venv/ on first use and installs the locked, tested versions; re-running reinstalls nothing
# unless pyproject.toml or the lock changed.
#
# GPU machines: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" \
#                    EXTRAS="dev,gpu" LOCK=requirements/cpu.lock reproduce
# (the lock pins the CPU wheel's version; the index URL picks the CUDA build of the same version).

PYTHON     ?= $(shell command -v python3.11 || command -v python3)
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
LOCK       ?= requirements/cpu.lock
EXTRAS     ?= dev
PARAMS     ?= params/mini.yaml
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install reproduce test lint bench lock clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first, alone: any other spec pulls a multi-GB CUDA build on CPU machines
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e ".[$(EXTRAS)]"
	@touch $@

reproduce: $(STAMP)
	$(BIN)/python -m ocean_lib reproduce --params $(PARAMS)

test: lint
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ocean_lib tests bench notebooks
	$(BIN)/ruff format --check ocean_lib tests bench notebooks

bench: $(STAMP)
	$(BIN)/python -m ocean_lib bench grpo

# Re-pin the lock from the current venv after a tested upgrade (the lock's header says how it was made).
lock:
	@{ echo "# Exact versions tested on CPU (Python 3.11), torch excluded (TORCH_SPEC installs it). Made with:"; \
	   echo "#   make lock   (= .venv/bin/python -m pip freeze --exclude-editable, minus -e and torch lines)"; \
	   $(BIN)/python -m pip freeze --exclude-editable | grep -v -e '^-e' -e '^torch=='; } > $(LOCK)

clean-venv:
	rm -rf $(VENV)
