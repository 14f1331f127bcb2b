#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU and torch, numpy, pytest, hypothesis and pyyaml
# installed (nothing is installed here): the unit tests of the model, training, precision and
# metrics with cuda as the device, then the ML-1M-scale benchmark on cuda (s/epoch of the 9-point
# stack per dtype, roofline, GPU memory, projected full-protocol and Table 2 time), then the bf16
# equality check at ML-1M scale. About 8 minutes at most; each step has its own time limit so a
# slow one cannot eat the others. Logs go to $OUT (or ./gpu_check_logs) as well as stdout.
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LOGS="${OUT:-$PWD/gpu_check_logs}"
mkdir -p "$LOGS"
PY="${PYTHON:-python3}"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log, report rc
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc=$rc in $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, \
'device', torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"

step tests 90 env XREFLECT_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -x \
    tests/training/test_model.py tests/evaluation/test_metrics.py tests/training/test_train.py tests/training/test_precision.py
step benchmark 120 "$PY" -m benchmarks.train_speed --scale ml1m --epochs 85 --precisions fp32 bf16
step bf16_check 220 "$PY" -m benchmarks.precision_check --scale ml1m --dim 384 --epochs 10 --seeds 0 1 2
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
