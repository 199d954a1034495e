#!/usr/bin/env bash
# The GPU checks as one short script, for a lent CUDA machine (docs/BENCHMARKS.md, "GPU").
#
#   bash scripts/device_check.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, else ./device_check
#
# Uses .venv when present; otherwise the machine's python3 (the lent machines have torch, numba,
# pyarrow, opencv, scikit-learn, safetensors, pytest and tqdm, but not hydra-core, omegaconf,
# antlr4-python3-runtime, torchattacks, pyautoattack or imagecorruptions). Bring those as wheels in
# .whl/ (ignored by git; see /work/.library/device/README.md for the pip download line, Python 3.12)
# and, to skip training there, the embedded checkpoints in .device_cache/checkpoints/
# (cp -r ~/.cache/gauntlet/checkpoints .device_cache/); carry both.
set -u
out="${1:-${OUT:-device_check}}"
mkdir -p "$out"
if [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    fi
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ -d .device_cache ]; then export GAUNTLET_CACHE_DIR="$PWD/.device_cache"; fi
export GAUNTLET_CACHE_DIR="${GAUNTLET_CACHE_DIR:-$HOME/.cache/gauntlet}" NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/numba}"
export WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
timeout 120 $py -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -15 | tee "$out/test_gpu.txt"
timeout 150 $py scripts/bench_corruptions.py --device cuda --threads 1 2>&1 | tail -40 \
    | tee "$out/bench_corruptions_cuda.txt"
timeout 120 $py scripts/bench_attacks.py --device cuda --only digits --n 96 --repeats 3 2>&1 \
    | grep -v -i warn | tee "$out/bench_attacks_cuda_digits.txt"
timeout 60 $py scripts/bench_attacks.py --device cuda --only resnet --n 64 --repeats 3 --resnet-eps 0.0313725 \
    2>&1 | grep -v -i warn | tee "$out/bench_attacks_cuda_resnet_broken.txt"
timeout 150 $py scripts/bench_attacks.py --device cuda --only resnet --n 64 --repeats 1 --resnet-eps 0.00098039 \
    2>&1 | grep -v -i warn | tee "$out/bench_attacks_cuda_resnet_robust.txt"
