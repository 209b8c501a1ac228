#include "thread_pool.h"

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

namespace genneg {

int available_cores() {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

int resolve_threads(int64_t requested) {
  if (requested <= 0) return available_cores();
  return static_cast<int>(std::min<int64_t>(requested, 1024));
}

int64_t chunk_count(int64_t n, int threads, int64_t grain) {
  if (n <= 0) return 1;
  const int64_t g = std::max<int64_t>(1, grain);
  const int64_t by_grain = (n + g - 1) / g;
  return std::max<int64_t>(1, std::min<int64_t>(threads, by_grain));
}

void parallel_for(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  const int64_t chunks = chunk_count(n, threads, grain);
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  auto run_chunk = [&](int64_t k) {
    const int64_t begin = n * k / chunks;
    const int64_t end = n * (k + 1) / chunks;
    try {
      fn(begin, end);
    } catch (...) {
      errors[static_cast<size_t>(k)] = std::current_exception();
    }
  };
  // A thread that cannot be started (resource limits) must not leave joinable threads behind (their
  // destructors would call std::terminate): join the ones started, then report it as runtime_error.
  std::string start_failure;
  for (int64_t k = 1; k < chunks; ++k) {
    try {
      workers.emplace_back(run_chunk, k);
    } catch (const std::exception& e) {
      start_failure = "could not start worker thread " + std::to_string(k) + " of " +
                      std::to_string(chunks - 1) + " (" + e.what() + "); retry with fewer threads";
      break;
    }
  }
  if (start_failure.empty()) run_chunk(0);
  for (auto& w : workers) w.join();
  if (!start_failure.empty()) throw std::runtime_error(start_failure);
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace genneg
