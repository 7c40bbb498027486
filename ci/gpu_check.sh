#!/usr/bin/env bash
# One GPU check, at most ~8 minutes on one H100 or H200, everything into one folder: ${1:-runs/gpu_check} (or $OUT,
# as on the lent machine). Each part has its own time limit and leaves its figures even when a later part fails:
#   1. environment.txt: GPU, driver, torch, triton, and the GPU's measured bf16 matmul and copy ceilings;
#   2. the loss benchmark (loss_benchmark.csv, loss_kernels.csv, loss_benchmark.png): F2LLM regime, in-batch
#      8k-64k at d = 1024 vs memeff / Inf-CL / chunked, the mrl regime vs memeff's fused Matryoshka, tile sweep;
#   3. the GPU tests (gpu_tests.log): fp32 and bf16, both strategies, the baselines computing our loss;
#   4. the trainer benchmark (train_benchmark.csv): SmolLM2-135M's architecture, all 30 layers, bf16, one process:
#      ours, ours under DeepSpeed ZeRO-2, sentence-transformers;
#   5. only when asked (GPU_CHECK_PARTS=...,largest; about 4 more minutes): the largest batch that fits the GPU
#      without and with gradient caching (largest_batch.csv; F2LLM's 512 queries x 9 texts at 256 tokens).
#   bash ci/gpu_check.sh [out_dir]    (on a machine without network, run `make gpu-inputs` here first)
# Works with the project's .venv or with a machine's own torch + triton (PYTHONPATH=. is set here).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$out"
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
started=$SECONDS
stamp() { echo "=== [$((SECONDS - started)) s] $*"; }

main() {

# Wheels from .whl/ (`make gpu-inputs`) for packages the machine lacks: the benchmark baselines, DeepSpeed, datasets.
if ls .whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d)
  $py -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl && export PYTHONPATH=$PYTHONPATH:$site
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  $py -m f2llm_lib.bench.loss --ceilings
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"
status=0
parts=",${GPU_CHECK_PARTS:-tests,loss,train},"  # e.g. GPU_CHECK_PARTS=tests,loss to leave the trainer out

if [[ $parts == *,tests,* ]]; then
  stamp "GPU tests"
  # pyproject's addopts ask for pytest-xdist (-n 2); without it (a machine's own Python), run serially without them
  workers=$($py -c "import xdist" 2>/dev/null && echo "-n 4" || echo "-o addopts=-ra")
  timeout 90 $py -m pytest -q -p no:cacheprovider $workers tests/test_loss_gpu.py > "$out/gpu_tests.log" 2>&1 || status=1
  tail -n 15 "$out/gpu_tests.log"
fi

if [[ $parts == *,loss,* ]]; then
  stamp "loss benchmark"
  timeout 290 $py -m f2llm_lib.bench.loss --device cuda --large-batch-sweep --out "$out" || status=1
fi

arch=.gpu/smollm2-135m-arch
if [[ $parts != *,train,* ]]; then
  :
elif [ -f "$arch/config.json" ] && [ -f .gpu/pycode_retrieval.jsonl ]; then
  stamp "trainer benchmark"
  model=$(mktemp -d)/smollm2-135m-arch
  cp -r "$arch" "$model" && $py -m f2llm_lib.embedder.backbones random-init "$model" >/dev/null
  timeout 110 $py -m f2llm_lib.bench.train --device cuda --models "$model:0" --precision bf16 --batch 16 \
    --negatives 7 --max-length 256 --steps 12 --zero2 --tuples .gpu/pycode_retrieval.jsonl --out "$out/train" \
    && mv "$out/train/train_benchmark.csv" "$out/" && rm -rf "$out/train" || status=1
else
  echo "no .gpu/ inputs (make gpu-inputs): trainer benchmark skipped"; status=1
fi
if [[ $parts == *,largest,* ]] && [ -f "$arch/config.json" ] && [ -f .gpu/pycode_retrieval_large.jsonl ]; then
  stamp "largest batch with and without gradient caching"
  model=$(mktemp -d)/smollm2-135m-arch
  cp -r "$arch" "$model" && $py -m f2llm_lib.embedder.backbones random-init "$model" >/dev/null
  budget=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1)
  timeout 300 $py -m f2llm_lib.bench.train --device cuda --models "$model:0" --precision bf16 --negatives 7 \
    --max-length 256 --largest-batch "$budget" --search-start 64 --search-max 512 \
    --tuples .gpu/pycode_retrieval_large.jsonl --out "$out/largest" \
    && mv "$out/largest/largest_batch."* "$out/" && rm -rf "$out/largest" || status=1
fi
stamp "gpu_check finished with status $status; results in $out"
return $status
}

main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
