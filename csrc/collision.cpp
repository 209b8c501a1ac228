#include "collision.h"

#include <algorithm>
#include <cmath>

#include "thread_pool.h"

namespace genneg {

namespace {

// Per-thread structure-of-arrays copy of a scene's bounding boxes, reused across scenes.
struct PairScratch {
  std::vector<double> cx, cy, ex, ey;
  std::vector<uint8_t> candidate;
  void resize(size_t n) {
    if (cx.size() >= n) return;
    cx.resize(n);
    cy.resize(n);
    ex.resize(n);
    ey.resize(n);
    candidate.resize(n);
  }
};

// Calls on_pair(k, l) (k < l, indices into scene.rects) for every overlapping pair. A branch-free
// bounding-box pass over all l > k (a true separating test on the x and y axes, so it never drops an
// overlapping pair beyond float64 rounding at exact touching) marks the candidates; only those get the
// separating-axis test.
template <typename OnPair>
void scene_pairs(const SceneRects& scene, PairScratch* scratch, OnPair&& on_pair) {
  const auto& r = scene.rects;
  const size_t n = r.size();
  scratch->resize(n);
  double* cx = scratch->cx.data();
  double* cy = scratch->cy.data();
  double* ex = scratch->ex.data();
  double* ey = scratch->ey.data();
  uint8_t* candidate = scratch->candidate.data();
  for (size_t k = 0; k < n; ++k) {
    cx[k] = r[k].cx;
    cy[k] = r[k].cy;
    ex[k] = r[k].ex;
    ey[k] = r[k].ey;
  }
  for (size_t k = 0; k + 1 < n; ++k) {
    const double cxk = cx[k], cyk = cy[k], exk = ex[k], eyk = ey[k];
    for (size_t l = k + 1; l < n; ++l) {
      const bool x_overlap = std::fabs(cx[l] - cxk) < exk + ex[l];
      const bool y_overlap = std::fabs(cy[l] - cyk) < eyk + ey[l];
      candidate[l] = static_cast<uint8_t>(x_overlap & y_overlap);
    }
    for (size_t l = k + 1; l < n; ++l) {
      if (candidate[l] && rects_overlap(r[k], r[l])) on_pair(k, l);
    }
  }
}
// Scenes per thread at least: about 20,000 pair tests' worth, so a thread start (~20 us) is amortised.
int64_t scene_grain(int64_t agents) {
  const int64_t pairs_per_scene = std::max<int64_t>(1, agents * (agents - 1) / 2 + agents);
  return std::max<int64_t>(1, 20000 / pairs_per_scene);
}

}  // namespace

void collisions(const BoxBatch& batch, double margin, int threads, uint8_t* out) {
  const int64_t A = batch.agents;
  parallel_for(batch.scenes, threads, [&](int64_t begin, int64_t end) {
    SceneRects scene;
    PairScratch scratch;
    for (int64_t s = begin; s < end; ++s) {
      uint8_t* row = out + s * A;
      for (int64_t a = 0; a < A; ++a) row[a] = 0;
      load_scene(batch, s, margin, &scene);
      scene_pairs(scene, &scratch, [&](size_t k, size_t l) {
        row[scene.slots[k]] = 1;
        row[scene.slots[l]] = 1;
      });
    }
  }, scene_grain(A));
}

std::vector<int64_t> collision_pairs(const BoxBatch& batch, double margin, int threads) {
  const int64_t chunks = chunk_count(batch.scenes, threads, scene_grain(batch.agents));
  std::vector<std::vector<int64_t>> parts(static_cast<size_t>(chunks));
  // One task per contiguous chunk of scenes, each with its own output list, joined in chunk order.
  parallel_for(chunks, static_cast<int>(chunks), [&](int64_t kbegin, int64_t kend) {
    for (int64_t k = kbegin; k < kend; ++k) {
      const int64_t begin = batch.scenes * k / chunks;
      const int64_t end = batch.scenes * (k + 1) / chunks;
      auto& part = parts[static_cast<size_t>(k)];
      SceneRects scene;
      PairScratch scratch;
      for (int64_t s = begin; s < end; ++s) {
        load_scene(batch, s, margin, &scene);
        scene_pairs(scene, &scratch, [&](size_t i, size_t j) {
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
