#!/usr/bin/env bash
# The GPU proof, in one command on a machine with a CUDA GPU (the device tool's H200: torch 2.11,
# Python 3.12, CMake, ninja, nvcc and compute-sanitizer there; no network):
#   1. builds posenc for the local GPU's architecture only,
#   2. runs the CUDA tests (pytest tests/python/test_cuda.py), the GoogleTest harness, and the
#      rest of the Python suite under that machine's torch and Python,
#   3. runs compute-sanitizer memcheck on a short case,
#   4. runs the GPU benchmarks,
# and prints a short table last. Writes its logs and the table under $OUT (or /tmp/posenc_gpu).
# GoogleTest is taken from Debian packages in third_party_cache/ when the machine lacks it
# (`make gpu-deps` downloads them here; carry third_party_cache).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-/tmp/posenc_gpu}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
status_build=FAIL status_pytest=FAIL status_suite=FAIL status_ctest=SKIP status_sanitizer=SKIP
status_bench=FAIL

arch=$($PY -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.major}.{p.minor}')")
echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null); arch $arch"
export TORCH_CUDA_ARCH_LIST=$arch

prefix=$($PY -c "import torch; print(torch.utils.cmake_prefix_path)")
gtest_args=(-DPOSENC_BUILD_TESTS=OFF)
if [ -f /usr/include/gtest/gtest.h ]; then
  gtest_args=(-DPOSENC_BUILD_TESTS=ON)
elif ls third_party_cache/*.deb >/dev/null 2>&1; then
  mkdir -p third_party_cache/root
  for deb in third_party_cache/*.deb; do dpkg -x "$deb" third_party_cache/root; done
  prefix="$prefix;$PWD/third_party_cache/root/usr"
  gtest_args=(-DPOSENC_BUILD_TESTS=ON)
fi

if cmake -S . -B build-gpu -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$(command -v $PY)" \
     -DPOSENC_CUDA=ON "${gtest_args[@]}" >"$OUT_DIR/configure.log" 2>&1 &&
   cmake --build build-gpu >"$OUT_DIR/build.log" 2>&1; then
  status_build=ok
else
  tail -30 "$OUT_DIR/configure.log" "$OUT_DIR/build.log"
fi

if [ "$status_build" = ok ]; then
  export PYTHONPATH=$PWD/torch_ext
  if $PY -m pytest tests/python/test_cuda.py -q -p no:cacheprovider >"$OUT_DIR/pytest.log" 2>&1; then
    status_pytest=ok
  fi
  tail -15 "$OUT_DIR/pytest.log"
  if timeout 240 $PY -m pytest tests/python -q -x -m "not slow" -p no:cacheprovider \
       --ignore=tests/python/test_cuda.py >"$OUT_DIR/suite.log" 2>&1; then
    status_suite=ok
  fi
  tail -5 "$OUT_DIR/suite.log"
  if [ -f build-gpu/CTestTestfile.cmake ]; then
    (cd build-gpu && ctest --output-on-failure >"$OUT_DIR/ctest.log" 2>&1) && status_ctest=ok || status_ctest=FAIL
    tail -5 "$OUT_DIR/ctest.log"
  fi
  if command -v compute-sanitizer >/dev/null 2>&1; then
    cat >"$OUT_DIR/sanitize_case.py" <<'EOF'
import torch, posenc
x = torch.randn(2, 33, 70, device="cuda", requires_grad=True)
ids = torch.randint(0, 50, (2, 33), device="cuda")
w = torch.randn(50, 70, device="cuda", requires_grad=True)
table = torch.randn(40, 70, device="cuda", requires_grad=True)
y = posenc.add_positional(x, dropout=0.1, kind="learned", table=table, combine="mul")
e = posenc.embedding(ids, w, dropout=0.1, padding_idx=0, positions="fairseq")
q, k = posenc.rotary(torch.randn(2, 33, 4, 64, device="cuda", requires_grad=True),
                     torch.randn(2, 33, 1, 64, device="cuda"), rotary_dim=32, interleaved=True)
(y.sum() + e.sum() + q.sum() + k.sum()).backward()
torch.cuda.synchronize()
print("sanitizer case ran")
EOF
    # memcheck (out-of-bounds and misaligned accesses, the 16-byte vector paths included) and
    # racecheck (the shared-memory cos/sin chunks of rotary and the fairseq scan).
    if compute-sanitizer --tool memcheck --error-exitcode 1 $PY "$OUT_DIR/sanitize_case.py" \
         >"$OUT_DIR/sanitizer.log" 2>&1 &&
       compute-sanitizer --tool racecheck --error-exitcode 1 $PY "$OUT_DIR/sanitize_case.py" \
         >"$OUT_DIR/racecheck.log" 2>&1; then
      status_sanitizer=ok
    else
      status_sanitizer=FAIL
    fi
    tail -5 "$OUT_DIR/sanitizer.log" "$OUT_DIR/racecheck.log"
  fi
  if timeout 300 $PY benchmarks/bench_gpu.py --out "$OUT_DIR/bench.md" >"$OUT_DIR/bench.log" 2>&1; then
    status_bench=ok
  else
    tail -20 "$OUT_DIR/bench.log"
  fi
fi

echo
echo "| step | result |"
echo "|---|---|"
echo "| build (sm_${arch/./}) | $status_build |"
echo "| pytest tests/python/test_cuda.py | $status_pytest ($(grep -Eo '[0-9]+ (passed|failed)[^=]*' "$OUT_DIR/pytest.log" 2>/dev/null | tail -1)) |"
echo "| rest of the Python suite | $status_suite ($(grep -Eo '[0-9]+ (passed|failed)[^=]*' "$OUT_DIR/suite.log" 2>/dev/null | tail -1)) |"
echo "| GoogleTest | $status_ctest |"
echo "| compute-sanitizer memcheck | $status_sanitizer |"
echo "| benchmarks | $status_bench |"
[ -f "$OUT_DIR/bench.md" ] && { echo; cat "$OUT_DIR/bench.md"; }
[ "$status_build" = ok ] && [ "$status_pytest" = ok ]
