#!/usr/bin/env bash
# The wheels `python -m ocean_lib gpu-check` needs on an offline GPU machine that already has torch, transformers
# (>= 5.16.1), accelerate, peft, numpy, pillow, pyarrow, pyyaml, tokenizers and safetensors, but not DeepSpeed or
# the smaller packages below: into .whl/ (git-ignored), to carry there (well under 64 MiB).
#
#   scripts/gpu_check_wheels.sh            # or: make gpu-check-wheels; PY_VERSION=3.11 for another Python
#
# On the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 -m ocean_lib gpu-check --set rollout.backend=hf
# (rollout.backend=hf where vLLM is absent: vLLM 0.33 needs torch 2.14 and its CUDA wheels, hundreds of MB.)
# Versions are those of requirements/cpu.lock, which the test suite runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
PYTHON=${PYTHON:-python3}
OUT=.whl
PURE=(hjson annotated-types typing-inspection math-verify latex2sympy2_extended antlr4-python3-runtime)
BINARY=(pydantic pydantic_core Levenshtein RapidFuzz)

pin() {  # NAME==VERSION as the CPU lock has it
    grep -i -m1 "^$1==" requirements/cpu.lock || { echo "$1 is not in requirements/cpu.lock" >&2; exit 1; }
}

rm -rf "$OUT" && mkdir -p "$OUT"
# DeepSpeed publishes an sdist only; without CUDA here it builds as pure Python (ops are compiled at run time).
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps -w "$OUT" "$(pin deepspeed)"
for name in "${PURE[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$OUT" "$(pin "$name")"
done
for name in "${BINARY[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$OUT" "$(pin "$name")"
done
ls -1 "$OUT"
du -sh "$OUT"
