#!/usr/bin/env bash
# One-off: why does a C++ exception from posenc crash Python on this machine?
cd "$(dirname "$0")/.."
set -x
gcc --version | head -1; ld --version | head -1; ldd --version | head -1; uname -r
python3 -c "import torch; print(torch.__version__, torch.__config__.show())" 2>&1 | head -30
python3 -c "import torch; print(torch._C._GLIBCXX_USE_CXX11_ABI, torch.compiled_with_cxx11_abi())"
prefix=$(python3 -c "import torch; print(torch.utils.cmake_prefix_path)")
export TORCH_CUDA_ARCH_LIST=9.0
cmake -S . -B build-diag -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE=$(command -v python3) \
  -DPOSENC_CUDA=ON -DPOSENC_BUILD_TESTS=OFF > /tmp/cfg.log 2>&1 || tail -20 /tmp/cfg.log
time cmake --build build-diag > /tmp/build.log 2>&1 || tail -30 /tmp/build.log
grep -n "CXX_FLAGS\|CMAKE_CXX_COMPILER:" build-diag/CMakeCache.txt | head
grep -o "c++ .*call.cpp.o -c" build-diag/compile_commands.json 2>/dev/null | head -2
ninja -C build-diag -t commands posenc | grep call.cpp | head -1
export PYTHONPATH=$PWD/torch_ext
cat > /tmp/throw.py <<'PY'
import sys, torch
try:
    torch.ones(2) + torch.ones(3)
except RuntimeError as e:
    print("torch error ok")
import posenc
x = torch.randn(2, 3, 4)
try:
    torch.ops.posenc.add_positional(x, None, None, None, kind="bad")
except ValueError as e:
    print("posenc error ok:", str(e)[:80])
PY
python3 -X faulthandler /tmp/throw.py; echo "rc=$?"
python3 -c "import torch, posenc; print(open('/proc/self/maps').read())" | awk '{print $6}' | grep "\.so" | sort -u | grep -v "site-packages/torch/lib\|nvidia\|numpy\|lib-dynload" | head -30
ldd torch_ext/posenc/libposenc.so | head -30
timeout 120 cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 /tmp/throw.py 2>&1 | grep -v "^\[New Thread\|^\[Thread" | head -120
