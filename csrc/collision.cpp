#include "collision.h"

#include <algorithm>
#include <cmath>

#include "thread_pool.h"

namespace genneg {

namespace {

// Calls on_pair(k, l) (k < l, indices into scene.rects) for every overlapping pair. The bounding-box
// rejection is a true separating test on the x and y axes, so it never drops an overlapping pair
// beyond float64 rounding at exact touching.
template <typename OnPair>
void scene_pairs(const SceneRects& scene, OnPair&& on_pair) {
  const auto& r = scene.rects;
  const size_t n = r.size();
  for (size_t k = 0; k < n; ++k) {
    const Rect& a = r[k];
    for (size_t l = k + 1; l < n; ++l) {
      const Rect& b = r[l];
      if (!(std::fabs(b.cx - a.cx) < a.ex + b.ex)) continue;
      if (!(std::fabs(b.cy - a.cy) < a.ey + b.ey)) continue;
      if (rects_overlap(a, b)) on_pair(k, l);
    }
  }
}

}  // namespace

void collisions(const BoxBatch& batch, double margin, int threads, uint8_t* out) {
  const int64_t A = batch.agents;
  parallel_for(batch.scenes, threads, [&](int64_t begin, int64_t end) {
    SceneRects scene;
    for (int64_t s = begin; s < end; ++s) {
      uint8_t* row = out + s * A;
      for (int64_t a = 0; a < A; ++a) row[a] = 0;
      load_scene(batch, s, margin, &scene);
      scene_pairs(scene, [&](size_t k, size_t l) {
        row[scene.slots[k]] = 1;
        row[scene.slots[l]] = 1;
      });
    }
  });
}

std::vector<int64_t> collision_pairs(const BoxBatch& batch, double margin, int threads) {
  const int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, batch.scenes)));
  std::vector<std::vector<int64_t>> parts(static_cast<size_t>(chunks));
  // One task per contiguous chunk of scenes, each with its own output list, joined in chunk order.
  parallel_for(chunks, chunks, [&](int64_t kbegin, int64_t kend) {
    for (int64_t k = kbegin; k < kend; ++k) {
      const int64_t begin = batch.scenes * k / chunks;
      const int64_t end = batch.scenes * (k + 1) / chunks;
      auto& part = parts[static_cast<size_t>(k)];
      SceneRects scene;
      for (int64_t s = begin; s < end; ++s) {
        load_scene(batch, s, margin, &scene);
        scene_pairs(scene, [&](size_t i, size_t j) {
          part.push_back(s);
          part.push_back(scene.slots[i]);
          part.push_back(scene.slots[j]);
        });
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
