#include "collision.h"

#include <algorithm>
#include <cmath>

#include "thread_pool.h"

namespace genneg {

namespace {

// Scenes per thread at least: about 20,000 pair tests' worth, so a thread start (~20 us) is amortised.
int64_t scene_grain(int64_t agents) {
  const int64_t pairs_per_scene = std::max<int64_t>(1, agents * (agents - 1) / 2 + agents);
  return std::max<int64_t>(1, 20000 / pairs_per_scene);
}

}  // namespace

void collisions(const BoxBatch& batch, double margin, int threads, uint8_t* out, const PairOptions& options) {
  const int64_t A = batch.agents;
  parallel_for(batch.scenes, threads, [&](int64_t begin, int64_t end) {
    RectArrays scene;
    PairSearch search;
    for (int64_t s = begin; s < end; ++s) {
      uint8_t* row = out + s * A;
      for (int64_t a = 0; a < A; ++a) row[a] = 0;
      load_scene_arrays(options.isa, batch, s, margin, &scene);
      overlapping_pairs(scene, options.isa, options.broad_phase, /*sorted=*/false, &search);
      for (const auto& [k, l] : search.pairs) {
        row[scene.slots[k]] = 1;
        row[scene.slots[l]] = 1;
      }
    }
  }, scene_grain(A));
}

std::vector<int64_t> collision_pairs(const BoxBatch& batch, double margin, int threads,
                                     const PairOptions& options) {
  const int64_t chunks = chunk_count(batch.scenes, threads, scene_grain(batch.agents));
  std::vector<std::vector<int64_t>> parts(static_cast<size_t>(chunks));
  // One task per contiguous chunk of scenes, each with its own output list, joined in chunk order.
  parallel_for(chunks, static_cast<int>(chunks), [&](int64_t kbegin, int64_t kend) {
    for (int64_t k = kbegin; k < kend; ++k) {
      const int64_t begin = batch.scenes * k / chunks;
      const int64_t end = batch.scenes * (k + 1) / chunks;
      auto& part = parts[static_cast<size_t>(k)];
      RectArrays scene;
      PairSearch search;
      for (int64_t s = begin; s < end; ++s) {
        load_scene_arrays(options.isa, batch, s, margin, &scene);
        overlapping_pairs(scene, options.isa, options.broad_phase, /*sorted=*/true, &search);
        for (const auto& [i, j] : search.pairs) {
          part.push_back(s);
          part.push_back(scene.slots[i]);
          part.push_back(scene.slots[j]);
        }
      }
    }
  });
  std::vector<int64_t> flat;
  size_t total = 0;
  for (const auto& p : parts) total += p.size();
  flat.reserve(total);
  for (const auto& p : parts) flat.insert(flat.end(), p.begin(), p.end());
  return flat;
}

}  // namespace genneg
