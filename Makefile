# The README's two set-up commands: `make reproduce` and `make test`.
# Each creates .venv/ on first use and installs the locked, tested versions; re-running reinstalls nothing
# unless pyproject.toml or the lock changed. The stamp (.venv/.installed) records what was installed (Python,
# torch spec, lock, extras, overrides): asking for something else rebuilds the venv from scratch.
#
# GPU machines (Linux x86-64, NVIDIA driver >= 580 for CUDA 13): `make install-gpu`, or GPU=1 on any target
# (`make GPU=1 test`): torch 2.14.0 (CUDA 13, vLLM 0.33.0's pin), requirements/gpu.lock, extras dev,gpu.
# flash-attn is an optional extra step (`make flash-attn`, docs/real_scale.md).

PYTHON     ?= $(shell command -v python3.11 || command -v python3)
VENV       ?= .venv
GPU        ?=
ifeq ($(GPU),1)
TORCH_SPEC ?= torch==2.14.0
LOCK       ?= requirements/gpu.lock
EXTRAS     ?= dev,gpu
else
TORCH_SPEC ?= torch==2.13.0
LOCK       ?= requirements/cpu.lock
EXTRAS     ?= dev
endif
# Pins that replace the lock's own for the same packages (CI's second run: the lowest transformers).
OVERRIDES  ?=
PARAMS     ?= params/mini.yaml
PYTEST_ARGS ?=

# The lowest transformers the code supports (pyproject.toml's floor, which is vLLM 0.33's); 5.16/5.17 need a
# huggingface_hub below 2. `make test-lowest-transformers` runs the suite with them on CPU torch.
LOWEST_TRANSFORMERS := transformers==5.16.1 huggingface_hub==1.33.0
FLASH_ATTN := flash-attn==2.8.3.post2

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
INSTALL_SPEC := python=$(PYTHON) torch=$(TORCH_SPEC) lock=$(LOCK) extras=$(EXTRAS) overrides=$(OVERRIDES)
REQUIREMENTS := $(if $(OVERRIDES),$(VENV)/requirements.txt,$(LOCK))

.PHONY: install install-gpu flash-attn reproduce test test-cpu-kinds test-lowest-transformers lint bench bench-scale lock \
	lock-gpu gpu-check-wheels clean-venv

# A venv installed with other settings is out of date whatever the file times say.
ifneq ($(file < $(STAMP)),$(INSTALL_SPEC))
.PHONY: $(STAMP)
endif

install: $(STAMP)

install-gpu:
	$(MAKE) GPU=1 install

$(STAMP): pyproject.toml $(LOCK)
	@if [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" != '$(INSTALL_SPEC)' ]; then \
	    echo "$(VENV) was installed with: $$(cat $(STAMP))"; \
	    echo "asked for:  $(INSTALL_SPEC)"; echo "rebuilding $(VENV)"; rm -rf $(VENV); fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first, alone: any other spec pulls a multi-GB CUDA build on CPU machines
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(if $(OVERRIDES),{ grep -v -i $(foreach pin,$(OVERRIDES),-e '^$(firstword $(subst ==, ,$(pin)))==') \
	    $(LOCK); printf '%s\n' $(OVERRIDES); } > $(REQUIREMENTS))
	# the lock and the project with its extras in one resolution: an extra needing what the lock lacks or
	# contradicts is an error here, not a silently missing package
	$(BIN)/python -m pip install -q -r $(REQUIREMENTS) -e ".[$(EXTRAS)]"
	@echo '$(INSTALL_SPEC)' > $@

# Optional, GPU only: flash-attn has no wheel; its build imports torch (so no build isolation) and needs nvcc
# for torch's CUDA (13.x; scripts/check_cuda_toolkit.py says what it finds first). Then set
# model.attn_implementation=flash_attention_2.
flash-attn:
	$(MAKE) GPU=1 install
	$(BIN)/python scripts/check_cuda_toolkit.py
	MAX_JOBS=$${MAX_JOBS:-8} $(BIN)/python -m pip install $(FLASH_ATTN) --no-build-isolation

reproduce: $(STAMP)
	$(BIN)/python -m ocean_lib reproduce --params $(PARAMS)

test: lint
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# Seeded CPU training is bit-identical only within one kind of CPU kernel (torch's ATen and MKL pick AVX-512,
# AVX2 or plain code by the CPU). The tests that assert what training computes (marker `trajectory`) run again
# with the kernels lowered, as a machine without AVX-512 (avx2) or without AVX2 (default) computes them; the
# variables only lower, so any x86-64 machine can run both.
CPU_KINDS ?= default avx2
KERNELS_default := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
KERNELS_avx2    := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
test-cpu-kinds: $(STAMP)
	@set -e; $(foreach kind,$(CPU_KINDS),echo "== trajectory tests with CPU kernels: $(kind)"; \
	    env $(KERNELS_$(kind)) $(BIN)/python -m pytest -n 2 -m trajectory $(PYTEST_ARGS);)

test-lowest-transformers:
	$(MAKE) VENV=.venv-lowest-transformers OVERRIDES="$(LOWEST_TRANSFORMERS)" test

lint: $(STAMP)
	$(BIN)/ruff check ocean_lib tests bench notebooks
	$(BIN)/ruff format --check ocean_lib tests bench notebooks

bench: $(STAMP)
	$(BIN)/python -m ocean_lib bench grpo

# The real-scale shape on CPU (bench/grpo_scale.py): ours on 2 processes under ZeRO-3 against TRL, with
# gradient checkpointing; about 10 minutes.
bench-scale: $(STAMP)
	$(BIN)/python -m ocean_lib bench grpo --shape scale

# Wheels that the GPU check needs and an offline GPU machine lacks, into .whl/ (scripts/gpu_check_wheels.sh).
gpu-check-wheels:
	scripts/gpu_check_wheels.sh

# Re-pin the CPU lock from the current venv after a tested upgrade (the lock's header says how it was made).
lock:
	@{ echo "# Exact versions tested on CPU (Python 3.11), torch excluded (TORCH_SPEC installs it). Made with:"; \
	   echo "#   make lock   (= .venv/bin/python -m pip freeze --exclude-editable, minus -e and torch lines)"; \
	   $(BIN)/python -m pip freeze --exclude-editable | grep -v -e '^-e' -e '^torch=='; } > requirements/cpu.lock

# Re-resolve the GPU lock with pip, for Python 3.11 and 3.12 (fresh venvs, nothing installed: --dry-run).
PYTHON312 ?= $(shell command -v python3.12)
lock-gpu:
	@set -e; tmp=$$(mktemp -d); \
	for py in $(PYTHON) $(PYTHON312); do \
	    $$py -m venv $$tmp/venv && $$tmp/venv/bin/python -m pip install -q --upgrade "pip>=24"; \
	    $$tmp/venv/bin/python -m pip install -q --dry-run --ignore-installed --report $$tmp/$$(basename $$py).json \
	        torch==2.14.0 ".[dev,gpu]"; \
	    rm -rf $$tmp/venv; \
	done; \
	$(PYTHON) scripts/gpu_lock.py requirements/gpu.lock $$tmp/*.json; rm -rf $$tmp

clean-venv:
	rm -rf $(VENV)
