#!/usr/bin/env bash
# Everything a GPU session needs, in one call on the device machine (2 GPUs): environment, GPU tests, kernel
# bandwidth, all-reduce benchmark, TTFT, the demo. Logs and results go under $OUT. NVLink multicast stays disabled.
# STAGES picks stages; ALLREDUCE_ARGS and TTFT_ARGS pass options (e.g. "--world-size 4" on a 4-GPU machine).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=. PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
step() { echo "=== $1 ($(date +%T))"; }
step env
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.nccl.version())"
python3 -c "import hypothesis, pytest" 2>/dev/null || pip install -q --no-index --find-links wheels hypothesis pytest 2>&1 | tail -2
for stage in ${STAGES:-tests bandwidth allreduce ttft demo}; do
  case $stage in
    tests) step tests; HYPOTHESIS_PROFILE=gpu timeout 400 python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | grep -v -i warn | tail -15 ;;
    bandwidth) step bandwidth; timeout 200 python3 -m benchmarks.kernel_bandwidth 2>&1 | tee "$OUT/bandwidth.log" ;;
    allreduce) step allreduce; timeout 500 python3 -m benchmarks.allreduce ${ALLREDUCE_ARGS:-} 2>&1 | tee "$OUT/allreduce.log" | grep -v Warning ;;
    ttft) step ttft; timeout 300 python3 -m benchmarks.ttft ${TTFT_ARGS:-} 2>&1 | tee "$OUT/ttft.log" | grep -v -i warn ;;
    demo) step demo; timeout 300 python3 -m flashcomm_compile.demo 2>&1 | tee "$OUT/demo.log" | grep -v Warning ;;
  esac
done
step done
