#!/usr/bin/env bash
# The GPU proof, in one command on a machine with a CUDA GPU (the device tool's H200: torch 2.11,
# Python 3.12, CMake, ninja, nvcc and compute-sanitizer there; no network), within a time budget
# (POSENC_GPU_BUDGET_S, default 420 s), the most important steps first:
#   1. build posenc (and the GoogleTest harness, when GoogleTest is there) for the local GPU only,
#   2. the CUDA tests, pytest tests/python/test_cuda.py,
#   3. the GPU benchmarks (benchmarks/bench_gpu.py: events, and CUDA graph replays of decoding
#      steps, beside clone() and torch.compile),
#   4. ncu's counters of the hot kernels (DRAM throughput, occupancy, issue activity, warp
#      stalls, L1 sectors per request) on the benchmark shapes,
#   5. compute-sanitizer memcheck and racecheck on a short case covering every kernel,
#   6. GoogleTest (ctest, with the machine-code checks),
#   7. the rest of the Python suite under that machine's torch and Python,
# then a summary table, printed last. A step that would not fit the time left is skipped and
# says so. Writes RESULTS.md (the summary, the benchmark tables and ncu's counters: the draft of
# benchmarks/RESULTS.md), bench.md, ncu.txt, the CUDA test log and logs.tar.gz (all logs) to $OUT
# (or /tmp/posenc_gpu). GoogleTest is taken from Debian packages in third_party_cache/ when the
# machine lacks it (`make gpu-deps` downloads them here; carry third_party_cache).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-/tmp/posenc_gpu}
LOG_DIR=$(mktemp -d /tmp/posenc_gpu_logs.XXXX)
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
BUDGET=${POSENC_GPU_BUDGET_S:-420}
declare -A status
steps=(build errors test_cuda bench ncu memcheck racecheck ctest suite)
for step in "${steps[@]}"; do status[$step]="skipped (no time left)"; done

# run_step NAME CAP_SECONDS COMMAND...: runs within min(CAP, time left), logs to $LOG_DIR/NAME.log.
run_step() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, ${left}s left"
    return 1
  fi
  echo "== $name (limit ${limit}s, at ${SECONDS}s)"
  local begin=$SECONDS
  timeout "$limit" "$@" >"$LOG_DIR/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - begin))
  if [ $rc -eq 0 ]; then
    status[$name]="ok (${took}s)"
  elif [ $rc -eq 124 ]; then
    status[$name]="TIMED OUT at ${limit}s"
  else
    status[$name]="FAIL rc=$rc (${took}s)"
  fi
  tail -n "${TAIL_LINES:-6}" "$LOG_DIR/$name.log"
  return $rc
}

arch=$($PY -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.major}.{p.minor}')")
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)
echo "GPU: $gpu; arch $arch; $($PY -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])')"
export TORCH_CUDA_ARCH_LIST=$arch

# The C++ compiler must match the libstdc++ that Python loads: inline iostream code from a newer
# compiler's headers crashed against the older system libstdc++ whenever an error message
# formatted a number (seen on the device machine, whose CXX is a newer /opt/gcc).
runtime_libstdcxx=$($PY -c "import torch
for line in open('/proc/self/maps'):
    if 'libstdc++.so' in line:
        print(line.split()[-1]); break")
for candidate in "${CXX:-}" /usr/bin/g++ g++ c++; do
  [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
  own=$(readlink -f "$($candidate -print-file-name=libstdc++.so)")
  if [ -n "$runtime_libstdcxx" ] && [ "$own" = "$(readlink -f "$runtime_libstdcxx")" ]; then
    export CXX=$(command -v "$candidate") CUDAHOSTCXX=$(command -v "$candidate")
    break
  fi
done
echo "C++ compiler: ${CXX:-default} ($(${CXX:-c++} --version | head -1)); Python's libstdc++: $runtime_libstdcxx"

prefix=$($PY -c "import torch; print(torch.utils.cmake_prefix_path)")
tests=OFF
if [ -f /usr/include/gtest/gtest.h ]; then
  tests=ON
elif ls third_party_cache/*.deb >/dev/null 2>&1; then
  mkdir -p third_party_cache/root
  for deb in third_party_cache/*.deb; do dpkg -x "$deb" third_party_cache/root; done
  prefix="$prefix;$PWD/third_party_cache/root/usr"
  tests=ON
fi
TAIL_LINES=15 run_step build 180 bash -c "cmake -S . -B build-gpu -G Ninja \
  -DCMAKE_PREFIX_PATH='$prefix' -DPython3_EXECUTABLE='$(command -v "$PY")' -DPOSENC_CUDA=ON \
  -DPOSENC_BUILD_TESTS=$tests && cmake --build build-gpu"

if [[ ${status[build]} == ok* ]]; then
  export PYTHONPATH=$PWD/torch_ext
  # Error messages that format numbers (these crashed when the compiler's libstdc++ was newer
  # than the one Python loads).
  run_step errors 60 $PY -c "
import torch, posenc
for call in (lambda: posenc.add_positional(torch.randn(2, 3, 4), dropout=1.01),
             lambda: posenc.add_positional(torch.randn(8))):
    try:
        call()
    except ValueError as error:
        print('ValueError:', str(error)[:90])
"
  TAIL_LINES=25 run_step test_cuda 150 $PY -m pytest tests/python/test_cuda.py -v -rfE \
    -p no:cacheprovider
  TAIL_LINES=20 run_step bench 200 env PYTHONUNBUFFERED=1 $PY benchmarks/bench_gpu.py \
    --out "$LOG_DIR/bench.md"
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
  if [ -n "$ncu_bin" ]; then
    # --clock-control none: the card's clocks as found (never changed here).
    metrics=dram__throughput.avg.pct_of_peak_sustained_elapsed
    metrics+=,sm__warps_active.avg.pct_of_peak_sustained_active
    metrics+=,smsp__issue_active.avg.pct_of_peak_sustained_active
    metrics+=,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum
    metrics+=,l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum,l1tex__t_requests_pipe_lsu_mem_global_op_st.sum
    metrics+=,launch__registers_per_thread,gpu__time_duration.sum
    TAIL_LINES=4 run_step ncu 80 "$ncu_bin" --clock-control none --target-processes all \
      --kernel-name regex:'dense_kernel|add_positional_kernel|rotary_kernel|scatter' \
      --launch-count 16 --section WarpStateStats --metrics "$metrics" \
      $PY benchmarks/bench_gpu.py --profile
  else
    status[ncu]="skipped (no ncu)"
  fi

  cat >"$LOG_DIR/sanitize_case.py" <<'EOF'
# Every CUDA kernel once on small odd shapes: forward and backward of each operator (vector and
# scalar paths, dropout, learned tables, fairseq scan, both scatters, every rotary layout).
import torch, posenc
g = torch.Generator(device="cuda").manual_seed(0)
def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device="cuda", generator=g).to(dtype).requires_grad_()
for dtype in (torch.float32, torch.bfloat16):
    x, table, w = randn(2, 33, 70, dtype=dtype), randn(40, 70, dtype=dtype), randn(50, 70, dtype=dtype)
    ids = torch.randint(0, 50, (2, 33), device="cuda", generator=g)
    y = posenc.add_positional(x, dropout=0.1, kind="learned", table=table, combine="mul")
    z = posenc.add_positional(x[:, :, 1:], dropout=0.1, offset=5)
    e = posenc.embedding(ids, w, dropout=0.1, padding_idx=0, positions="fairseq")
    q, k = posenc.rotary(randn(2, 33, 4, 64, dtype=dtype), randn(2, 33, 1, 64, dtype=dtype),
                         rotary_dim=32, interleaved=True)
    qb = posenc.rotary(randn(2, 4, 33, 64, dtype=dtype), layout="bhsd",
                       positions=torch.randint(0, 99, (2, 33), device="cuda", generator=g))
    qt = posenc.rotary(randn(33, 4, 64, dtype=dtype), layout="thd",
                       cu_seqlens=torch.tensor([0, 10, 33], device="cuda"))
    loss = sum(t.float().sum() for t in (y, z, e, q, k, qb, qt))
    loss.backward()
    torch.use_deterministic_algorithms(True)  # the sorted, segment-split scatter
    posenc.embedding(ids, w, combine="mul").float().sum().backward()
    torch.use_deterministic_algorithms(False)
torch.cuda.synchronize()
print("sanitizer case ran")
EOF
  if command -v compute-sanitizer >/dev/null 2>&1; then
    # No caching allocator, so that an access past a tensor's end leaves its allocation.
    run_step memcheck 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
      --error-exitcode 1 $PY "$LOG_DIR/sanitize_case.py"
    run_step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 1 \
      $PY "$LOG_DIR/sanitize_case.py"
  else
    status[memcheck]="skipped (no compute-sanitizer)"
    status[racecheck]="skipped (no compute-sanitizer)"
  fi
  if [ -f build-gpu/CTestTestfile.cmake ]; then
    run_step ctest 60 ctest --test-dir build-gpu --output-on-failure
  else
    status[ctest]="skipped (no GoogleTest)"
  fi
  workers=()
  $PY -c "import xdist" 2>/dev/null && workers=(-n 8)
  run_step suite 150 $PY -m pytest tests/python -q -m "not slow" -p no:cacheprovider \
    "${workers[@]}" --ignore=tests/python/test_cuda.py
fi

count() { grep -Eo '[0-9]+ (passed|failed|error)[^=]*' "$LOG_DIR/$1.log" 2>/dev/null | tail -1; }
{
  echo "GPU: $gpu; arch $arch; total ${SECONDS}s of a ${BUDGET}s budget"
  echo
  echo "| step | result |"
  echo "|---|---|"
  echo "| build (sm_${arch/./}, GoogleTest $tests, ${CXX:-default compiler}) | ${status[build]} |"
  echo "| error messages with numbers | ${status[errors]} |"
  echo "| pytest tests/python/test_cuda.py | ${status[test_cuda]} $(count test_cuda) |"
  echo "| benchmarks | ${status[bench]} |"
  echo "| ncu counters of the hot kernels (ncu.txt) | ${status[ncu]} |"
  echo "| compute-sanitizer memcheck | ${status[memcheck]} |"
  echo "| compute-sanitizer racecheck | ${status[racecheck]} |"
  echo "| GoogleTest | ${status[ctest]} |"
  echo "| rest of the Python suite | ${status[suite]} $(count suite) |"
  [ -f "$LOG_DIR/bench.md" ] && { echo; cat "$LOG_DIR/bench.md"; }
} >"$OUT_DIR/summary.md"
cp "$LOG_DIR/test_cuda.log" "$OUT_DIR/" 2>/dev/null
cp "$LOG_DIR/bench.md" "$OUT_DIR/" 2>/dev/null
cp "$LOG_DIR/ncu.log" "$OUT_DIR/ncu.txt" 2>/dev/null
{
  echo "# GPU results (measured by scripts/gpu_check.sh at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%d))"
  echo
  cat "$OUT_DIR/summary.md"
  if [ -f "$LOG_DIR/ncu.log" ]; then
    echo
    echo "## ncu counters (--clock-control none), per kernel launch"
    echo
    echo '```'
    grep -E '^  [a-z_0-9]+.*\(|dram__throughput|sm__warps_active|smsp__issue_active|l1tex__t_(sectors|requests)|launch__registers|gpu__time_duration|Stall|stall' \
      "$LOG_DIR/ncu.log" | head -400
    echo '```'
  fi
} >"$OUT_DIR/RESULTS.md"
tar -czf "$OUT_DIR/logs.tar.gz" -C "$LOG_DIR" . 2>/dev/null
echo
cat "$OUT_DIR/summary.md"
[[ ${status[build]} == ok* && ${status[test_cuda]} == ok* ]]
