#!/usr/bin/env bash
# One GPU check, at most ~8 minutes on one H100: GPU tests of the Triton loss (bf16 and fp32 tolerances) and the
# GPU loss benchmark. Everything goes to one folder: ${1:-runs/gpu_check} (or $OUT when set, as on the lent machine).
#   bash ci/gpu_check.sh [out_dir]          (run `make gpu-wheels` first where the GPU machine has no network)
# Works with the project's .venv or with a machine's own torch + triton (PYTHONPATH=. is set here).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$out"
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# inf-cl (the benchmark's baseline) from .whl/ (`make gpu-wheels`) when the machine lacks it and has no network
if ! $py -c "import inf_cl" 2>/dev/null && ls .whl/inf_cl-*.whl >/dev/null 2>&1; then
  site=$(mktemp -d)
  $py -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/inf_cl-*.whl && export PYTHONPATH=$PYTHONPATH:$site
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"
status=0
timeout 170 $py -m pytest -q -p no:cacheprovider tests/test_loss_gpu.py 2>&1 | tee "$out/gpu_tests.log" || status=1
timeout 290 $py -m f2llm_lib.losses.benchmark --device cuda --scratch-sweep --out "$out" 2>&1 | tee "$out/benchmark.log" || status=1
echo "gpu_check finished with status $status; results in $out"
exit $status
