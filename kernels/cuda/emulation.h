// A host emulation of the subset of CUDA that kernels/cuda/*.cu use, so that the same kernel
// source runs on the CPU in `make test` (and under the sanitizers): grid, block and thread
// indices; dynamic shared memory; __syncthreads; atomicAdd; launches checked as a GPU checks
// them (block size, grid dimensions, shared memory). Each thread of a block is a std::thread;
// blocks run one after another. Included instead of <cuda_runtime.h> when not compiling with
// nvcc (see cuda_compat.h). Host only.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

namespace posenc {
namespace cuda_emulation {

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorAssert = 710,
  cudaErrorMisalignedAddress = 716,
};

// A failed POSENC_DEVICE_CHECK: the thread stops, and the launch reports cudaErrorAssert, as a
// device-side assert does on a GPU. Also a misaligned vector access, which a GPU reports as
// cudaErrorMisalignedAddress (a host memcpy would not notice it).
struct DeviceAssert {
  const char* message;
  cudaError_t error = cudaErrorAssert;
};

[[noreturn]] inline void device_assert_fail(const char* message) { throw DeviceAssert{message}; }

// A 16-byte vector load or store must be 16-byte aligned on a GPU.
inline void check_vector_access(const void* address) {
  if (reinterpret_cast<uintptr_t>(address) % 16 != 0) {
    throw DeviceAssert{"misaligned 16-byte vector access", cudaErrorMisalignedAddress};
  }
}

// ---- the memory trace: what a warp's lanes read and write together ---------------------------
// Kernels move global memory through the helpers of cuda/device.cuh (row streams, tables,
// indices); in the emulation each helper records its access here when tracing is on. A GPU
// serves the lanes of a warp that execute one access instruction together, in 32-byte sectors:
// grouping the accesses by (block, warp, kind, the thread's count of accesses of that kind)
// gives each instruction's lanes, and so the sectors it moves (see count_sectors).
enum class Access : int {
  kRowLoad,
  kRowStore,
  kTableLoad,
  kIndexLoad,
  kReduction,  // atomic adds into sums (the scatters)
  kAccessKinds
};

struct TracedAccess {
  uint64_t block;
  uint32_t thread;    // flat index within the block
  uint32_t sequence;  // the thread's count of earlier accesses of this kind
  Access kind;
  uintptr_t address;
  uint32_t bytes;
};

struct MemoryTrace {
  bool enabled = false;
  std::mutex mutex;
  std::vector<TracedAccess> accesses;
};

inline MemoryTrace& memory_trace() {
  static MemoryTrace value;
  return value;
}

// The message of the last failed device check (for tests).
inline const char*& last_assert_message() {
  static thread_local const char* value = "";
  return value;
}

// What a launch may ask for: a GPU's limits by default. Tests lower them to reach the code paths
// for grids larger than a dimension allows without large tensors.
struct Limits {
  unsigned int max_grid_x = 2147483647u;
  unsigned int max_grid_yz = 65535u;
  unsigned int max_threads_per_block = 1024u;
  unsigned int max_block_z = 64u;
  size_t max_shared_bytes = 48 * 1024;  // the default dynamic shared memory per block
  unsigned int multiprocessors = 4;     // what launches size their grids to
};

inline Limits& limits() {
  static Limits value;
  return value;
}

// Restores the default limits when it goes out of scope.
struct ScopedLimits {
  Limits saved = limits();
  ~ScopedLimits() { limits() = saved; }
};

// __syncthreads for the threads of one block. A thread that leaves the kernel stops counting,
// as on a GPU, where exited threads no longer take part in the block's barrier.
class BlockBarrier {
 public:
  explicit BlockBarrier(int threads) : expected_(threads) {}

  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == expected_) {
      open(lock);
      return;
    }
    condition_.wait(lock, [&] { return generation_ != generation; });
  }

  void arrive_and_drop() {
    std::unique_lock<std::mutex> lock(mutex_);
    --expected_;
    if (arrived_ == expected_ && arrived_ > 0) open(lock);
  }

  void reset(int threads) {
    std::lock_guard<std::mutex> lock(mutex_);
    expected_ = threads;
    arrived_ = 0;
  }

 private:
  void open(std::unique_lock<std::mutex>&) {
    arrived_ = 0;
    ++generation_;
    condition_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable condition_;
  int expected_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

// The per-thread view of the launch that the kernel reads.
struct ThreadState {
  dim3 block_idx, thread_idx, block_dim, grid_dim;
  unsigned char* shared = nullptr;
  BlockBarrier* barrier = nullptr;
  uint32_t sequence[static_cast<int>(Access::kAccessKinds)] = {};  // accesses so far, per kind
};

inline ThreadState& state() {
  static thread_local ThreadState value;
  return value;
}

// Records one thread's access of `bytes` at `address` when tracing is on.
inline void trace_access(Access kind, const void* address, size_t bytes) {
  MemoryTrace& trace = memory_trace();
  if (!trace.enabled) return;
  ThreadState& s = state();
  const uint64_t block =
      s.block_idx.x +
      uint64_t{s.grid_dim.x} * (s.block_idx.y + uint64_t{s.grid_dim.y} * s.block_idx.z);
  const uint32_t thread =
      s.thread_idx.x + s.block_dim.x * (s.thread_idx.y + s.block_dim.y * s.thread_idx.z);
  const uint32_t sequence = s.sequence[static_cast<int>(kind)]++;
  const std::lock_guard<std::mutex> lock(trace.mutex);
  trace.accesses.push_back({block, thread, sequence, kind, reinterpret_cast<uintptr_t>(address),
                            static_cast<uint32_t>(bytes)});
}

// Bytes and 32-byte sectors of the traced accesses of one kind.
struct SectorCount {
  uint64_t bytes = 0;         // the bytes the lanes asked for
  uint64_t sectors = 0;       // the sectors their warps' instructions touched
  uint64_t unique_bytes = 0;  // the distinct bytes among them (what DRAM would move at most)
};

// `instructions_per_access` > 1 counts the sectors of that many consecutive instructions of a
// warp together (the 16-byte words of one wider access: a float32 group is two).
inline SectorCount count_sectors(Access kind, uint32_t instructions_per_access = 1) {
  MemoryTrace& trace = memory_trace();
  const std::lock_guard<std::mutex> lock(trace.mutex);
  // (block, warp, instruction, sector) of every sector an access touches; the distinct ones are
  // the sectors the warps' instructions move. Accesses are aligned words that never partly
  // overlap, so the distinct (address, bytes) pairs give the distinct bytes.
  std::vector<std::tuple<uint64_t, uint32_t, uint32_t, uintptr_t>> sectors;
  std::vector<std::pair<uintptr_t, uint32_t>> words;
  SectorCount count;
  for (const TracedAccess& access : trace.accesses) {
    if (access.kind != kind) continue;
    count.bytes += access.bytes;
    words.emplace_back(access.address, access.bytes);
    for (uintptr_t sector = access.address / 32; sector <= (access.address + access.bytes - 1) / 32;
         ++sector) {
      sectors.emplace_back(access.block, access.thread / 32,
                           access.sequence / instructions_per_access, sector);
    }
  }
  std::sort(sectors.begin(), sectors.end());
  count.sectors =
      static_cast<uint64_t>(std::unique(sectors.begin(), sectors.end()) - sectors.begin());
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  for (const auto& word : words) count.unique_bytes += word.second;
  return count;
}

// Traces the accesses of the launches in its scope.
struct ScopedMemoryTrace {
  ScopedMemoryTrace() {
    memory_trace().accesses.clear();
    memory_trace().enabled = true;
  }
  ~ScopedMemoryTrace() {
    memory_trace().enabled = false;
    memory_trace().accesses.clear();
  }
};

inline cudaError_t& last_error() {
  static thread_local cudaError_t value = cudaSuccess;
  return value;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t error = last_error();
  last_error() = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument (emulated launch)";
    case cudaErrorAssert:
      return "device-side assert triggered (emulated launch)";
    case cudaErrorMisalignedAddress:
      return "misaligned address (emulated launch)";
    default:
      return "invalid argument (emulated launch)";
  }
}

inline void __syncthreads() {
  if (state().barrier == nullptr) {
    std::fprintf(stderr,
                 "posenc CUDA emulation: __syncthreads in a kernel launched with POSENC_LAUNCH; "
                 "launch kernels that synchronise with POSENC_LAUNCH_SYNC\n");
    std::abort();
  }
  state().barrier->arrive_and_wait();
}

inline unsigned char* dynamic_shared() { return state().shared; }

template <typename T, typename Bits>
inline T atomic_add_bits(T* address, T value) {
  static_assert(sizeof(T) == sizeof(Bits), "bit width");
  Bits* bits = reinterpret_cast<Bits*>(address);
  Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
  while (true) {
    T old;
    std::memcpy(&old, &expected, sizeof(T));
    const T sum = old + value;
    Bits desired;
    std::memcpy(&desired, &sum, sizeof(T));
    if (__atomic_compare_exchange_n(bits, &expected, desired, false, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
      return old;
    }
  }
}

inline float atomicAdd(float* address, float value) {
  return atomic_add_bits<float, uint32_t>(address, value);
}
inline double atomicAdd(double* address, double value) {
  return atomic_add_bits<double, uint64_t>(address, value);
}

// The x, y, z index of flat index `index` in `extent` (x fastest), as CUDA numbers threads and
// blocks.
inline dim3 unflatten(uint64_t index, dim3 extent) {
  return dim3(static_cast<unsigned int>(index % extent.x),
              static_cast<unsigned int>(index / extent.x % extent.y),
              static_cast<unsigned int>(index / (uint64_t{extent.x} * extent.y)));
}

// Runs `kernel` (a callable reading state()) over grid x block, as <<<grid, block, shared>>>.
// Without `barriers`, one host thread runs every thread of every block in turn (a valid CUDA
// schedule for a kernel without __syncthreads, and fast); with them, each thread of a block is
// a std::thread meeting the others at __syncthreads.
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel,
                   bool barriers = false) {
  const Limits& limit = limits();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const bool valid = threads >= 1 && threads <= limit.max_threads_per_block &&
                     block.z <= limit.max_block_z && grid.x >= 1 && grid.y >= 1 && grid.z >= 1 &&
                     grid.x <= limit.max_grid_x && grid.y <= limit.max_grid_yz &&
                     grid.z <= limit.max_grid_yz && shared_bytes <= limit.max_shared_bytes;
  if (!valid) {
    last_error() = cudaErrorInvalidConfiguration;
    return;
  }
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  // Poisoned, as uninitialised shared memory would be on a GPU.
  std::vector<unsigned char> shared(shared_bytes > 0 ? shared_bytes : 1, 0xA5);
  if (!barriers) {
    ThreadState& s = state();
    const ThreadState saved = s;
    s.block_dim = block;
    s.grid_dim = grid;
    s.shared = shared.data();
    s.barrier = nullptr;
    for (uint64_t index = 0; index < blocks; ++index) {
      s.block_idx = unflatten(index, grid);
      std::memset(shared.data(), 0xA5, shared.size());
      for (uint64_t thread = 0; thread < threads; ++thread) {
        s.thread_idx = unflatten(thread, block);
        std::fill(std::begin(s.sequence), std::end(s.sequence), 0u);
        try {
          kernel();
        } catch (const DeviceAssert& failure) {
          // A GPU stops the whole kernel and poisons the context; here the launch stops.
          s = saved;
          last_error() = failure.error;
          last_assert_message() = failure.message;
          return;
        }
      }
    }
    s = saved;
    return;
  }
  const char* failed_message = nullptr;
  cudaError_t failed_error = cudaSuccess;
  std::mutex failure_mutex;
  BlockBarrier kernel_barrier(static_cast<int>(threads));
  BlockBarrier block_end(static_cast<int>(threads));
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (uint64_t thread = 0; thread < threads; ++thread) {
    workers.emplace_back([&, thread] {
      ThreadState& s = state();
      s.block_dim = block;
      s.grid_dim = grid;
      s.shared = shared.data();
      s.barrier = &kernel_barrier;
      s.thread_idx = unflatten(thread, block);
      for (uint64_t index = 0; index < blocks; ++index) {
        s.block_idx = unflatten(index, grid);
        std::fill(std::begin(s.sequence), std::end(s.sequence), 0u);
        try {
          kernel();
        } catch (const DeviceAssert& failure) {
          const std::lock_guard<std::mutex> lock(failure_mutex);
          if (failed_message == nullptr) {
            failed_message = failure.message;
            failed_error = failure.error;
          }
        }
        kernel_barrier.arrive_and_drop();
        // Every thread has left this block: reset the barrier and start the next one.
        if (thread == 0) {
          block_end.arrive_and_wait();
          kernel_barrier.reset(static_cast<int>(threads));
          std::memset(shared.data(), 0xA5, shared.size());
          block_end.arrive_and_wait();
        } else {
          block_end.arrive_and_wait();
          block_end.arrive_and_wait();
        }
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  if (failed_message != nullptr) {
    last_error() = failed_error;
    last_assert_message() = failed_message;
  }
}

}  // namespace cuda_emulation
}  // namespace posenc

#define blockIdx (::posenc::cuda_emulation::state().block_idx)
#define threadIdx (::posenc::cuda_emulation::state().thread_idx)
#define blockDim (::posenc::cuda_emulation::state().block_dim)
#define gridDim (::posenc::cuda_emulation::state().grid_dim)
