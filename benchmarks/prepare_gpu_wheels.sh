#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that benchmarks/gpu_day_one.py needs on the GPU machine and that its
# image lacks, for CPython 3.12 on manylinux x86_64, and checks that they and the tracked tree together stay under the
# 64 MiB that travel with a device run. docs/gpu.md has the command that installs them there.
#
# That image has Python 3.12, torch 2.11, triton 3.6, transformers 5.17, accelerate 1.15, huggingface_hub 1.33, peft,
# safetensors, jinja2, pillow, sacrebleu, numpy and pytest (and pytest-xdist): everything hf_maxsup and the command
# import, except Liger-Kernel, the baseline of steps b and c. Liger-Kernel 0.8.5 requires only torch and triton.
#
#   bash benchmarks/prepare_gpu_wheels.sh          # or: make gpu-wheels
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WHEELS=(liger-kernel==0.8.5)
LIMIT=$((64 * 1024 * 1024))

rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

# pip install --no-deps stops at two versions of one package: keep one
names=$(for f in .whl/*.whl; do basename "$f" | cut -d- -f1; done | sort)
if [ "$(echo "$names" | uniq -d)" != "" ]; then
    echo "two versions of one package in .whl/: $(echo "$names" | uniq -d)" >&2
    exit 1
fi

wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s}')
total=$((wheels + tree))
ls -l .whl
echo "wheels $((wheels / 1024)) KiB + tree (tracked and untracked, not ignored) $((tree / 1024)) KiB = $((total / 1024)) KiB (limit $((LIMIT / 1024)) KiB)"
if [ "$total" -gt "$LIMIT" ]; then
    echo "over the 64 MiB that travel with a device run: drop a wheel or ignore large files" >&2
    exit 1
fi
