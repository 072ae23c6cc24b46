// SIMT execution of the CUDA kernels on the CPU: included first by every `.cu` file of a SIMT
// build (OMNIFAST_SIMT=1), so that the unchanged kernels compile as host C++ and every CUDA
// thread of every block runs, each as a fiber of its own.
//
// - Blocks run one after another, in a seeded random order; the threads of a block are resumed
//   in a fresh random order at every scheduling round, and they yield at barriers, shuffles,
//   atomics, fences and `__ldcg` reads, so other threads of the block run in between.
// - `__syncthreads` releases once every thread of the block waits there; a barrier some threads
//   have exited past is an error. A shuffle releases once all 32 lanes of the warp have reached
//   one; a lane that exited or waits at a barrier instead is an error (divergent full-mask
//   shuffle).
// - Atomics are read-modify-writes (one fiber runs at a time); float4 atomics check their
//   16-byte alignment. `__CUDA_ARCH__` is 900, so the sm_90 branches are what runs.
// - An error stops the launch and is returned by cudaGetLastError, as a CUDA fault would be.
//
// What it cannot show: weak memory ordering, truly concurrent races, code generation (registers,
// spills, vector loads), nvcc's math and FMA contraction, streams, performance; shared memory
// keeps the previous block's contents (a read before a write sees stale values, not garbage).
#pragma once

// CUDA's 16-bit and vector types have host implementations: include them before the macros
// below make headers believe they are compiled by nvcc.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <driver_types.h>
#include <math.h>  // float overloads of ::exp, ::log1p, ... in the global namespace, as CUDA has
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "simt_control.h"

#undef __host__
#undef __device__
#undef __global__
#undef __forceinline__
#undef __shared__
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static  // one copy per kernel instance: blocks run one at a time
#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
#define OMNIFAST_SIMT 1

namespace omnifast {
namespace simt {

enum class Wait { kRunnable, kBarrier, kShuffle, kExited };

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  uint3 thread_idx;
  Wait wait = Wait::kRunnable;
  unsigned shuffle_round = 0;  // which of the two exchange buffers its next shuffle uses
};

struct Runtime {
  std::mutex launch_mutex;  // one launch at a time: shared memory is one static copy
  std::mt19937_64 rng{kDefaultSeed};
  SimtStats stats;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  std::function<void()> body;
  std::vector<uint64_t> exchange[2];  // a value per thread, double-buffered by shuffle round
};

inline Runtime& runtime() {
  static Runtime r;
  return r;
}

// The last error and its text, per host thread as CUDA keeps them (a launch's fibers run on the
// thread that launched it).
struct ErrorState {
  cudaError_t last_error = cudaSuccess;
  std::string message;  // what went wrong, for cudaGetErrorString
};

inline ErrorState& errors() {
  static thread_local ErrorState e;
  return e;
}

// Fiber stacks: kernel frames are small, but the sanitizers' redzones are not.
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kStackBytes = 1 << 20;
#else
constexpr size_t kStackBytes = 128 << 10;
#endif

inline void switch_to_scheduler() {
  Runtime& r = runtime();
  swapcontext(&r.current->context, &r.scheduler);
}

// Records the first error of the launch. From inside a kernel the calling thread stops for good
// (its fiber is never resumed) and the launch ends at the next scheduling point.
inline void fail(cudaError_t code, const std::string& what) {
  Runtime& r = runtime();
  if (errors().last_error == cudaSuccess) {
    errors().last_error = code;
    errors().message = "simt: " + what;
  }
  if (r.current != nullptr) {
    r.current->wait = Wait::kExited;
    switch_to_scheduler();
  }
}

inline std::string where() {
  const Runtime& r = runtime();
  std::string s = "block " + std::to_string(r.block_idx.x);
  if (r.current != nullptr) s += ", thread " + std::to_string(r.current->thread_idx.x);
  return s;
}

inline void fiber_main() {
  Runtime& r = runtime();
  r.body();
  r.current->wait = Wait::kExited;
  switch_to_scheduler();
}

inline std::string warp_error(int warp, int at_shuffle, int exited) {
  return "block " + std::to_string(runtime().block_idx.x) + ", warp " + std::to_string(warp) +
         ": __shfl_xor_sync(0xffffffff) reached by " + std::to_string(at_shuffle) +
         " lanes; the others " + (exited > 0 ? "exited" : "wait at __syncthreads") +
         " (divergent full-mask shuffle)";
}

// Releases the warps whose 32 lanes all wait at a shuffle, else the block barrier; reports
// divergence and deadlock. Returns false when nothing could be released.
inline bool release_waiting() {
  Runtime& r = runtime();
  const int n = static_cast<int>(r.fibers.size());
  int exited = 0, at_barrier = 0, at_shuffle = 0;
  for (const Fiber& f : r.fibers) {
    exited += f.wait == Wait::kExited;
    at_barrier += f.wait == Wait::kBarrier;
    at_shuffle += f.wait == Wait::kShuffle;
  }
  bool released = false;
  for (int w = 0; w * 32 < n; ++w) {
    int shuffle = 0, gone = 0;
    for (int l = w * 32; l < std::min(n, w * 32 + 32); ++l) {
      shuffle += r.fibers[l].wait == Wait::kShuffle;
      gone += r.fibers[l].wait == Wait::kExited;
    }
    if (shuffle == 0) continue;
    if (shuffle == 32) {
      // Lanes are released together, so each is at its n-th shuffle; whether all are at the
      // same call of it is not checked (see the README's "What it cannot check").
      for (int l = w * 32; l < w * 32 + 32; ++l) r.fibers[l].wait = Wait::kRunnable;
      released = true;
    } else {
      fail(cudaErrorLaunchFailure, warp_error(w, shuffle, n < w * 32 + 32 ? 1 : gone));
      return false;
    }
  }
  if (released) return true;
  if (at_barrier > 0 && at_shuffle == 0) {
    if (exited > 0) {
      fail(cudaErrorLaunchFailure, "block " + std::to_string(r.block_idx.x) +
                                       ": __syncthreads reached by " + std::to_string(at_barrier) +
                                       " threads while " + std::to_string(exited) + " have exited");
      return false;
    }
    for (Fiber& f : r.fibers) f.wait = Wait::kRunnable;
    ++r.stats.barriers;
    return true;
  }
  fail(cudaErrorLaunchFailure, "block " + std::to_string(r.block_idx.x) + ": deadlock");
  return false;
}

// Runs every thread of the current block to its end, or until an error.
inline void run_block() {
  Runtime& r = runtime();
  const int n = static_cast<int>(r.fibers.size());
  for (Fiber& f : r.fibers) {
    f.wait = Wait::kRunnable;
    f.shuffle_round = 0;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  while (errors().last_error == cudaSuccess) {
    std::shuffle(order.begin(), order.end(), r.rng);
    bool ran = false;
    for (int i : order) {
      Fiber& f = r.fibers[i];
      if (f.wait != Wait::kRunnable) continue;
      r.current = &f;
      swapcontext(&r.scheduler, &f.context);
      r.current = nullptr;
      ran = true;
      if (errors().last_error != cudaSuccess) return;
    }
    if (ran) continue;
    if (std::all_of(r.fibers.begin(), r.fibers.end(),
                    [](const Fiber& f) { return f.wait == Wait::kExited; }))
      return;
    if (!release_waiting()) return;
  }
}

// Runs `body` as every thread of a 1-D grid, blocks in random order. Launch configurations CUDA
// refuses are refused the same way, without running anything.
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t,
                   std::function<void()> body) {
  Runtime& r = runtime();
  const std::lock_guard<std::mutex> lock(r.launch_mutex);
  if (errors().last_error != cudaSuccess) return;  // errors are sticky until read
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.z > 64 ||
      grid.y > 65535 || grid.z > 65535 || shared_bytes > 48 * 1024) {
    fail(cudaErrorInvalidConfiguration, "invalid configuration argument");
    return;
  }
  if (block.y != 1 || block.z != 1 || grid.y != 1 || grid.z != 1) {
    fail(cudaErrorInvalidConfiguration, "only 1-D launches are supported");
    return;
  }
  ++r.stats.launches;
  r.body = std::move(body);
  r.block_dim = block;
  r.grid_dim = grid;
  r.fibers.resize(threads);
  for (uint32_t t = 0; t < threads; ++t) {
    r.fibers[t].stack.resize(kStackBytes);
    r.fibers[t].thread_idx = uint3{t, 0, 0};
  }
  for (auto& e : r.exchange) e.assign(threads, 0);
  std::vector<uint32_t> blocks(grid.x);
  for (uint32_t b = 0; b < grid.x; ++b) blocks[b] = b;
  std::shuffle(blocks.begin(), blocks.end(), r.rng);
  for (uint32_t b : blocks) {
    r.block_idx = uint3{b, 0, 0};
    run_block();
    if (errors().last_error != cudaSuccess) break;
    ++r.stats.blocks;
    r.stats.threads += threads;
  }
  r.body = nullptr;
}

// `OMNIFAST_LAUNCH(grid, block, stream, kernel)(args...)`: the kernel called with copies of the
// arguments, as every thread of the launch.
template <typename... Params>
struct Launcher {
  dim3 grid, block;
  cudaStream_t stream;
  void (*kernel)(Params...);
  template <typename... Args>
  void operator()(Args... args) const {
    auto k = kernel;
    launch(grid, block, 0, stream, [=] { k(args...); });
  }
};

template <typename... Params>
Launcher<Params...> launcher(dim3 grid, dim3 block, cudaStream_t stream,
                             void (*kernel)(Params...)) {
  return Launcher<Params...>{grid, block, stream, kernel};
}

// ---- device built-ins
inline Fiber& self() {
  Fiber* f = runtime().current;
  if (f == nullptr) {
    fail(cudaErrorLaunchFailure, "a device built-in was called outside a kernel");
    std::abort();  // no kernel to stop: a bug in the caller, not in a kernel
  }
  return *f;
}

// A scheduling point: now and then, other threads of the block run before this one goes on.
inline void memory_point() {
  Runtime& r = runtime();
  if (r.current != nullptr && (r.rng() & 3) == 0) switch_to_scheduler();
}

inline void syncthreads() {
  self().wait = Wait::kBarrier;
  switch_to_scheduler();
}

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
  Runtime& r = runtime();
  Fiber& f = self();
  if (mask != 0xffffffffu) fail(cudaErrorLaunchFailure, where() + ": a partial-mask shuffle");
  if (lane_mask <= 0 || lane_mask >= 32)
    fail(cudaErrorLaunchFailure, where() + ": shuffle lane mask " + std::to_string(lane_mask));
  const int index = static_cast<int>(&f - r.fibers.data());
  const unsigned round = f.shuffle_round++ & 1;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  r.exchange[round][index] = bits;
  ++r.stats.shuffles;
  f.wait = Wait::kShuffle;
  switch_to_scheduler();  // resumed once all 32 lanes of the warp have written
  const int partner = (index & ~31) | ((index & 31) ^ lane_mask);
  T out;
  std::memcpy(&out, &r.exchange[round][partner], sizeof(T));
  return out;
}

template <typename T>
T atomic_add(T* address, T value) {
  memory_point();
  ++runtime().stats.atomics;
  const T old = *address;
  *address = old + value;
  return old;
}

}  // namespace simt
}  // namespace omnifast

#define threadIdx (::omnifast::simt::self().thread_idx)
#define blockIdx (::omnifast::simt::runtime().block_idx)
#define blockDim (::omnifast::simt::runtime().block_dim)
#define gridDim (::omnifast::simt::runtime().grid_dim)

inline void __syncthreads() { ::omnifast::simt::syncthreads(); }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return ::omnifast::simt::shfl_xor(mask, value, lane_mask);
}
inline void __threadfence() {
  ::omnifast::simt::memory_point();
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
template <typename T>
inline T __ldcg(const T* p) {
  ::omnifast::simt::memory_point();
  return *p;
}
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

inline int atomicAdd(int* p, int v) { return ::omnifast::simt::atomic_add(p, v); }
inline float atomicAdd(float* p, float v) { return ::omnifast::simt::atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return ::omnifast::simt::atomic_add(p, v); }
inline float4 atomicAdd(float4* p, float4 v) {
  using namespace ::omnifast::simt;
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    fail(cudaErrorMisalignedAddress, where() + ": float4 atomicAdd on a misaligned address");
  memory_point();
  ++runtime().stats.vector_atomics;
  const float4 old = *p;
  p->x += v.x, p->y += v.y, p->z += v.z, p->w += v.w;
  return old;
}

inline cudaError_t cudaPeekAtLastError() { return ::omnifast::simt::errors().last_error; }
inline cudaError_t cudaGetLastError() {
  auto& e = ::omnifast::simt::errors();
  const cudaError_t last = e.last_error;
  e.last_error = cudaSuccess;
  return last;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : ::omnifast::simt::errors().message.c_str();
}
