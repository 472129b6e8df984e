#!/usr/bin/env bash
# The GPU machine's one command (see benchmarks/device_check.py): CUDA tests, CUDA benchmark, FID deviation
# of TF32 and bf16, the NCCL sync path. Writes results.json, logs and summary.md to OUT_DIR.
#
#   benchmarks/device_check.sh OUT_DIR [--dry-run] [device_check.py options]
#
# Packages the GPU machine lacks (pytorch-fid, torch-fidelity: the tests and the benchmark import them) are
# installed from the wheels in $WHEELS (default: .whl/) into a temporary folder, when it holds any. PYTHON
# picks the interpreter (default: python3). Exits 0, saying why, where no CUDA GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
wheels="${WHEELS:-.whl}"
if compgen -G "$wheels/*.whl" >/dev/null; then
    site="$(mktemp -d)"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" benchmarks/device_check.py "$@"
