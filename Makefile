# posenc: `make demo` (the main job) and `make test` (every test) work on a fresh machine: they
# create .venv, install the Python dependencies and GoogleTest, build, then run.
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_DIR := build
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(abspath $(VENV))/bin:/usr/local/cuda/bin:$(PATH)
RUN_PY := PYTHONPATH=$(abspath torch_ext) $(PY)

.PHONY: all deps gtest lib build install test test-cpp test-python test-examples test-large sanitize \
	tsan demo bench bench-envelope bench-cpp bench-attention-bias gpu-deps format clean

all: build

$(DEPS_STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -r requirements-dev.txt
	touch $@

deps: $(DEPS_STAMP)

gtest:
	@test -f /usr/include/gtest/gtest.h || { $(SUDO) apt-get update && \
	  $(SUDO) apt-get install -y libgtest-dev; }

# Configured without the GoogleTest harness: `make demo` needs neither GoogleTest nor apt.
$(BUILD_DIR)/build.ninja: $(DEPS_STAMP) CMakeLists.txt
	cmake -S . -B $(BUILD_DIR) -G Ninja -DPOSENC_BUILD_TESTS=OFF \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DPython3_EXECUTABLE=$(PY)

# What the demo and the benchmarks use: libposenc and the Python module.
lib: $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) --target posenc_python

# Everything, the GoogleTest harness included.
build: $(BUILD_DIR)/build.ninja | gtest
	grep -q 'POSENC_BUILD_TESTS:BOOL=ON' $(BUILD_DIR)/CMakeCache.txt || \
	  cmake -S . -B $(BUILD_DIR) -DPOSENC_BUILD_TESTS=ON
	cmake --build $(BUILD_DIR)

test-cpp: build
	cd $(BUILD_DIR) && ctest --output-on-failure

test-python: lib
	$(RUN_PY) -m pytest tests/python -q -m "not slow"

# Tensors of more than 2^31 elements (several GB of memory; minutes).
test-large: lib
	$(RUN_PY) -m pytest tests/python -q -m slow

# libposenc, its headers and posencConfig.cmake under build/install (find_package(posenc)).
install: build
	cmake --install $(BUILD_DIR) --prefix $(abspath $(BUILD_DIR))/install

# The C++ examples against the installed library: a training loop with the C++ modules, and C++
# inference (AOTInductor and TorchScript) of a model exported from Python.
test-examples: install
	cmake -S examples/cpp -B $(BUILD_DIR)/examples -G Ninja \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)');$(abspath $(BUILD_DIR))/install"
	cmake --build $(BUILD_DIR)/examples
	$(BUILD_DIR)/examples/train_cpp
	$(RUN_PY) examples/cpp/export_model.py $(BUILD_DIR)/examples_data
	$(BUILD_DIR)/examples/infer_cpp $(BUILD_DIR)/examples_data

test: test-cpp test-python test-examples

demo: lib
	$(RUN_PY) examples/demo.py $(DEMO_ARGS)

bench: lib
	$(RUN_PY) benchmarks/bench_cpu.py $(BENCH_ARGS)

# The performance envelope (docs/performance.md): every cell of the grid against eager PyTorch
# and torch.compile, fresh and reused memory; a table and a heat map under build/envelope.
ENVELOPE_ARGS ?=
bench-envelope: lib
	mkdir -p $(BUILD_DIR)/envelope
	$(RUN_PY) benchmarks/envelope.py --json $(BUILD_DIR)/envelope/rows \
	  --markdown $(BUILD_DIR)/envelope/envelope.md --png $(BUILD_DIR)/envelope/envelope.png \
	  --summary $(BUILD_DIR)/envelope/summary.md \
	  $(ENVELOPE_ARGS)

# Attention biases (ALiBi, T5, FlexAttention) against transformers' and eager constructions,
# time and peak memory (docs/performance.md). ATTENTION_BIAS_ARGS: e.g. --seq 512 2048.
ATTENTION_BIAS_ARGS ?= --memory
bench-attention-bias: lib
	$(RUN_PY) benchmarks/attention_bias.py $(ATTENTION_BIAS_ARGS)

# The same envelope through the C++ API (LibTorch inference) against eager LibTorch ops, fresh
# and reused memory. BENCH_CPP_ARGS: seconds per cell, most elements per tensor.
BENCH_CPP_ARGS ?=
bench-cpp: install
	cmake -S benchmarks/cpp -B $(BUILD_DIR)/bench-cpp -G Ninja \
	  -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX);$(abspath $(BUILD_DIR))/install"
	cmake --build $(BUILD_DIR)/bench-cpp
	$(BUILD_DIR)/bench-cpp/envelope_cpp $(BENCH_CPP_ARGS)
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 $(BUILD_DIR)/bench-cpp/envelope_cpp $(BENCH_CPP_ARGS)
	$(BUILD_DIR)/bench-cpp/fused_loop_floor 2048 256
	$(BUILD_DIR)/bench-cpp/fused_loop_floor 128 1024

TORCH_PREFIX = $$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')

# The GoogleTest harness (kernels alone, and the operators through LibTorch) built with
# AddressSanitizer and UndefinedBehaviorSanitizer; any finding fails.
sanitize: $(DEPS_STAMP) | gtest
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DPOSENC_SANITIZE=address,undefined -DPOSENC_BUILD_PYTHON=OFF -DPOSENC_CUDA=OFF \
	  -DPOSENC_PYTHON_PACKAGE_DIR=$(abspath build-asan)/lib -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)"
	cmake --build build-asan
	cd build-asan && ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ctest --output-on-failure

# The CPU kernels' tests (which run the kernels on 4 threads) under ThreadSanitizer.
tsan: | gtest
	cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOSENC_SANITIZE=thread \
	  -DPOSENC_BUILD_TORCH=OFF
	cmake --build build-tsan
	TSAN_OPTIONS=halt_on_error=1 ./build-tsan/posenc_kernel_tests

# GoogleTest as Debian packages for scripts/gpu_check.sh on a GPU machine without network
# (carry third_party_cache there).
gpu-deps:
	mkdir -p third_party_cache && cd third_party_cache && apt-get download libgtest-dev googletest

# clang-format (Google style at 100 columns, .clang-format) over the C++ and CUDA sources.
format: $(DEPS_STAMP)
	git ls-files -co --exclude-standard 'csrc/*.h' 'csrc/*.cpp' 'kernels/*.h' 'kernels/*.cpp' \
	  'kernels/*.cu' 'kernels/*.cuh' 'tests/cpp/*.h' 'tests/cpp/*.cpp' 'examples/cpp/*.cpp' | \
	  xargs $(abspath $(VENV))/bin/clang-format -i

clean:
	rm -rf $(BUILD_DIR) torch_ext/posenc/*.so
