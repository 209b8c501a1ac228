// Static fork-join parallelism over an index range (scenes). Each call starts its own std::threads,
// splits [0, n) into equal contiguous chunks, runs them, joins, and rethrows the exception of the
// lowest chunk that threw, so errors are reported deterministically whatever the thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace genneg {

// Cores this process may run on (sched affinity on Linux, else std::thread::hardware_concurrency()).
int available_cores();

// `requested` threads, or available_cores() when requested == 0.
int resolve_threads(int64_t requested);

// Number of chunks parallel_for uses: at most `threads`, and no more than one per `grain` indices, so
// that small inputs are not split into chunks cheaper than starting a thread.
int64_t chunk_count(int64_t n, int threads, int64_t grain);

// Runs fn(begin, end) on chunk_count(n, threads, grain) threads over contiguous chunks covering
// [0, n); chunk k is ordered before chunk k + 1. With one chunk it runs on the calling thread. Results
// must not depend on the chunking (they do not in this library: each index is computed alone).
void parallel_for(int64_t n, int threads, const std::function<void(int64_t begin, int64_t end)>& fn,
                  int64_t grain = 1);

}  // namespace genneg
