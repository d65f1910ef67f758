#!/usr/bin/env bash
# The GPU check, one command on a bare CUDA machine (after benchmarks/prepare_gpu_check.sh, carrying .whl and .gpu):
#   bash benchmarks/gpu_check.sh
# 1. installs this project (no network: the carried wheel, the image's torch and the rest of its packages);
# 2. runs the parity tests on the GPU: float32 at the CPU's tolerances, bfloat16 within 1% (tests/test_device.py),
#    and the harness's own test (our π0 and transformers' PI0 agree on one set of weights);
# 3. prints the latency tables: π0 against transformers' PI0 (tiny, small, full; bfloat16 and float32), full-size
#    π0 with compiled generation (prefix pass and flow step as CUDA graphs), π0.5 and π0-FAST at full size,
#    a training step (small); weight-only int8 and int4 against bfloat16 and float32 (benchmarks/quantized.py).
# Everything lands in $OUT (default ./gpu_check_out). Budgeted to finish within about 6 minutes on an H100.
# DEVICE=cpu FULL=tiny SMALL=tiny runs the same steps on a CPU at toy sizes (to check this script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda} FULL=${FULL:-full} SMALL=${SMALL:-small}
export PYTHONUNBUFFERED=1 PI_FIXTURES=${PI_FIXTURES:-$PWD/.gpu/fixtures} PI_TEST_DEVICES=$DEVICE
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /dev/null
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"; fi
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

python3 -m pytest tests/test_device.py tests/test_benchmarks.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"

bench() { python3 -m benchmarks --device "$DEVICE" --repeats 10 "$@"; }
bench --sizes "tiny,$SMALL,$FULL" --dtypes bfloat16,float32 --no-train --json "$OUT/pi0.json" --plot "$OUT/pi0.png" \
    | tee "$OUT/pi0.md"
bench --sizes "$FULL" --dtypes bfloat16 --compile reduce-overhead --no-train | tee "$OUT/pi0_cuda_graphs.md"
bench --sizes "$FULL" --dtypes bfloat16 --variants pi05,pi0_fast --no-train | tee "$OUT/pi05_fast.md"
bench --sizes "$SMALL" --dtypes bfloat16 --repeats 5 | tee "$OUT/train.md"
python3 -m benchmarks.quantized --device "$DEVICE" --sizes "$SMALL,$FULL" --variants pi0 --bits int8,int4 --repeats 5 \
    --json "$OUT/quantized.json" | tee "$OUT/quantized.md"
