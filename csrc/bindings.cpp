// The only file that knows Python: turns NumPy arrays into strided views, releases the GIL for the
// work, and maps C++ errors to ValueError. Input normalisation (torch tensors, 2-D batches, dtypes) is
// done by the genneg_ext Python wrapper; the checks here guard the memory accesses whatever the caller.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "boxes.h"
#include "collision.h"
#include "offroad.h"
#include "polygon_offroad.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace {

using genneg::BoxBatch;

std::string shape_string(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d > 0) out += ", ";
    out += std::to_string(a.shape(d));
  }
  return out + (a.ndim() == 1 ? ",)" : ")");
}

bool is_byte_mask(const py::array& a) {
  const auto kind = a.dtype().kind();
  return a.itemsize() == 1 && (kind == 'b' || kind == 'u');
}

BoxBatch make_batch(const py::array& boxes, const std::optional<py::array>& valid) {
  if (boxes.ndim() != 3 || boxes.shape(2) != 5) {
    throw py::value_error("boxes must have shape (S, A, 5), got " + shape_string(boxes));
  }
  BoxBatch b;
  // array_t's isinstance is NumPy's type equivalence (native float32/float64), not dtype identity.
  if (py::isinstance<py::array_t<float>>(boxes)) {
    b.dtype = genneg::Dtype::kFloat32;
  } else if (py::isinstance<py::array_t<double>>(boxes)) {
    b.dtype = genneg::Dtype::kFloat64;
  } else {
    throw py::type_error("boxes must be float32 or float64, got " + std::string(py::str(boxes.dtype())));
  }
  b.data = static_cast<const char*>(boxes.data());
  b.scenes = boxes.shape(0);
  b.agents = boxes.shape(1);
  b.stride_scene = boxes.strides(0);
  b.stride_agent = boxes.strides(1);
  b.stride_field = boxes.strides(2);
  if (valid.has_value()) {
    const py::array& v = *valid;
    if (v.ndim() != 2 || v.shape(0) != b.scenes || v.shape(1) != b.agents) {
      throw py::value_error("valid must have shape (S, A) = (" + std::to_string(b.scenes) + ", " +
                            std::to_string(b.agents) + ") to match boxes, got " + shape_string(v));
    }
    if (!is_byte_mask(v)) throw py::type_error("valid must be a bool or uint8 array");
    b.valid = static_cast<const uint8_t*>(v.data());
    b.valid_stride_scene = v.strides(0);
    b.valid_stride_agent = v.strides(1);
  }
  return b;
}

int threads_from(int64_t threads) {
  if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
  return genneg::resolve_threads(threads);
}

void check_margin(double margin) {
  if (!std::isfinite(margin) || margin < 0.0 || margin > genneg::kMaxSizeM) {
    throw py::value_error("margin must be a number of metres in [0, 1e100], got " + std::to_string(margin));
  }
}

// "auto" (the widest the CPU supports) or a named instruction set this CPU supports.
genneg::PairOptions pair_options(const std::string& isa, const std::string& broad_phase) {
  genneg::PairOptions options;
  if (isa == "baseline") {
    options.isa = genneg::Isa::kBaseline;
  } else if (isa == "avx2") {
    options.isa = genneg::Isa::kAvx2;
  } else if (isa == "avx512") {
    options.isa = genneg::Isa::kAvx512;
  } else if (isa != "auto") {
    throw py::value_error("isa must be 'auto', 'baseline', 'avx2' or 'avx512', got '" + isa + "'");
  }
  if (!genneg::isa_supported(options.isa)) {
    throw py::value_error("isa '" + isa + "' is not supported by this CPU (see genneg_ext.available_isas())");
  }
  if (broad_phase == "all_pairs") {
    options.broad_phase = genneg::BroadPhase::kAllPairs;
  } else if (broad_phase == "sweep") {
    options.broad_phase = genneg::BroadPhase::kSweep;
  } else if (broad_phase != "auto") {
    throw py::value_error("broad_phase must be 'auto', 'all_pairs' or 'sweep', got '" + broad_phase + "'");
  }
  return options;
}

py::list available_isas() {
  py::list out;
  for (const auto isa : {genneg::Isa::kBaseline, genneg::Isa::kAvx2, genneg::Isa::kAvx512}) {
    if (genneg::isa_supported(isa)) out.append(genneg::isa_name(isa));
  }
  return out;
}

[[noreturn]] void rethrow_box_error(const genneg::BoxInputError& e, bool batched) {
  const std::string where = batched ? "boxes[" + std::to_string(e.scene()) + ", " + std::to_string(e.vehicle()) +
                                          "] (scene " + std::to_string(e.scene()) + ", vehicle " +
                                          std::to_string(e.vehicle()) + ")"
                                    : "boxes[" + std::to_string(e.vehicle()) + "] (vehicle " +
                                          std::to_string(e.vehicle()) + ")";
  throw py::value_error(where + ": " + e.what());
}

py::array_t<bool> collisions(const py::array& boxes, const std::optional<py::array>& valid, double margin,
                             int64_t threads, bool batched, const std::string& isa, const std::string& broad_phase) {
  const BoxBatch batch = make_batch(boxes, valid);
  check_margin(margin);
  const genneg::PairOptions options = pair_options(isa, broad_phase);
  const int n_threads = threads_from(threads);
  py::array_t<bool> out({batch.scenes, batch.agents});
  auto* dst = reinterpret_cast<uint8_t*>(out.mutable_data());
  try {
    py::gil_scoped_release release;
    genneg::collisions(batch, margin, n_threads, dst, options);
  } catch (const genneg::BoxInputError& e) {
    rethrow_box_error(e, batched);
  }
  return out;
}

// For tests: the rectangles of one scene's boxes, (A, 8) float64 rows (cx, cy, c, s, hl, hw, ex, ey), as
// the collision kernels prepare them with `isa` ("baseline", "avx2", "avx512"), or as geometry.cpp's
// make_rect does one at a time (isa = "make_rect"; the offroad oracles use it).
py::array_t<double> rect_frames(const py::array& boxes, double margin, const std::string& isa) {
  const BoxBatch batch = make_batch(boxes, std::nullopt);
  if (batch.scenes != 1) throw py::value_error("rect_frames takes one scene, shape (1, A, 5)");
  check_margin(margin);
  py::array_t<double> out({batch.agents, static_cast<py::ssize_t>(8)});
  double* dst = out.mutable_data();
  try {
    if (isa == "make_rect") {
      genneg::SceneRects scene;
      genneg::load_scene(batch, 0, margin, &scene);
      for (size_t k = 0; k < scene.rects.size(); ++k) {
        const genneg::Rect& r = scene.rects[k];
        const double row[8] = {r.cx, r.cy, r.c, r.s, r.hl, r.hw, r.ex, r.ey};
        std::copy(row, row + 8, dst + 8 * k);
      }
      return out;
    }
    const genneg::PairOptions options = pair_options(isa, "auto");
    genneg::RectArrays arrays;
    genneg::load_scene_arrays(options.isa, batch, 0, margin, &arrays);
    for (size_t k = 0; k < arrays.n; ++k) {
      const genneg::Rect r = arrays.rect(k);
      const double row[8] = {r.cx, r.cy, r.c, r.s, r.hl, r.hw, r.ex, r.ey};
      std::copy(row, row + 8, dst + 8 * k);
    }
  } catch (const genneg::BoxInputError& e) {
    rethrow_box_error(e, false);
  }
  return out;
}

py::array_t<int64_t> collision_pairs(const py::array& boxes, const std::optional<py::array>& valid,
                                     double margin, int64_t threads, bool batched, const std::string& isa,
                                     const std::string& broad_phase) {
  const BoxBatch batch = make_batch(boxes, valid);
  check_margin(margin);
  const genneg::PairOptions options = pair_options(isa, broad_phase);
  const int n_threads = threads_from(threads);
  std::vector<int64_t> flat;
  try {
    py::gil_scoped_release release;
    flat = genneg::collision_pairs(batch, margin, n_threads, options);
  } catch (const genneg::BoxInputError& e) {
    rethrow_box_error(e, batched);
  }
  const auto rows = static_cast<py::ssize_t>(flat.size() / 3);
  py::array_t<int64_t> out({rows, static_cast<py::ssize_t>(3)});
  std::copy(flat.begin(), flat.end(), out.mutable_data());
  return out;
}

py::array_t<bool> offroad(const py::array& boxes, const std::optional<py::array>& valid, const py::array& drivable,
                          double origin_x, double origin_y, double resolution, const std::string& mode,
                          int64_t threads, bool batched) {
  const BoxBatch batch = make_batch(boxes, valid);
  if (drivable.ndim() != 2) throw py::value_error("drivable must have shape (H, W), got " + shape_string(drivable));
  if (drivable.shape(0) == 0 || drivable.shape(1) == 0) {
    throw py::value_error("drivable map is empty: shape " + shape_string(drivable));
  }
  if (!is_byte_mask(drivable)) throw py::type_error("drivable must be a bool or uint8 array");
  if (!(std::fabs(origin_x) <= genneg::kMaxAbsCoordinateM) || !(std::fabs(origin_y) <= genneg::kMaxAbsCoordinateM)) {
    throw py::value_error("origin must be two finite numbers of metres with |x|, |y| <= 1e100");
  }
  if (!(resolution >= genneg::kMinSizeM && resolution <= genneg::kMaxSizeM)) {
    throw py::value_error("resolution must be a number of metres per cell in [1e-100, 1e100], got " +
                          std::to_string(resolution));
  }
  genneg::OffroadMode off_mode;
  if (mode == "exact") {
    off_mode = genneg::OffroadMode::kExact;
  } else if (mode == "corners") {
    off_mode = genneg::OffroadMode::kCorners;
  } else {
    throw py::value_error("mode must be 'exact' or 'corners', got '" + mode + "'");
  }
  genneg::Raster raster;
  raster.data = static_cast<const uint8_t*>(drivable.data());
  raster.height = drivable.shape(0);
  raster.width = drivable.shape(1);
  raster.stride_row = drivable.strides(0);
  raster.stride_col = drivable.strides(1);
  raster.origin_x = origin_x;
  raster.origin_y = origin_y;
  raster.resolution = resolution;
  const int n_threads = threads_from(threads);
  py::array_t<bool> out({batch.scenes, batch.agents});
  auto* dst = reinterpret_cast<uint8_t*>(out.mutable_data());
  try {
    py::gil_scoped_release release;
    genneg::offroad(batch, raster, off_mode, n_threads, dst);
  } catch (const genneg::BoxInputError& e) {
    rethrow_box_error(e, batched);
  }
  return out;
}

genneg::RoadGeometry road_from_rings(const py::array_t<double, py::array::c_style | py::array::forcecast>& points,
                                     const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& offsets) {
  if (points.ndim() != 2 || points.shape(1) != 2) {
    throw py::value_error("points must have shape (P, 2), got " + shape_string(points));
  }
  if (offsets.ndim() != 1 || offsets.shape(0) < 2) {
    throw py::value_error("ring_offsets must have shape (R + 1,) with R >= 1, got " + shape_string(offsets));
  }
  const int64_t* off = offsets.data();
  const int64_t rings = offsets.shape(0) - 1;
  if (off[0] != 0 || off[rings] != points.shape(0)) {
    throw py::value_error("ring_offsets must start at 0 and end at the number of points (" +
                          std::to_string(points.shape(0)) + ")");
  }
  for (int64_t r = 0; r < rings; ++r) {
    if (off[r + 1] < off[r]) throw py::value_error("ring_offsets must not decrease (at ring " + std::to_string(r) + ")");
  }
  try {
    py::gil_scoped_release release;
    return genneg::build_road(points.data(), off, rings);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

py::array_t<bool> offroad_polygons(const py::array& boxes, const std::optional<py::array>& valid,
                                   const genneg::RoadGeometry& road, int64_t threads, bool batched) {
  const BoxBatch batch = make_batch(boxes, valid);
  const int n_threads = threads_from(threads);
  py::array_t<bool> out({batch.scenes, batch.agents});
  auto* dst = reinterpret_cast<uint8_t*>(out.mutable_data());
  try {
    py::gil_scoped_release release;
    genneg::offroad_polygons(batch, road, n_threads, dst);
  } catch (const genneg::BoxInputError& e) {
    rethrow_box_error(e, batched);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "genneg compiled traffic oracles (use the typed wrappers in genneg_ext)";
  m.attr("__version__") = GENNEG_VERSION;
  m.def("collisions", &collisions, py::arg("boxes"), py::arg("valid"), py::arg("margin"), py::arg("threads"),
        py::arg("batched"), py::arg("isa") = "auto", py::arg("broad_phase") = "auto",
        "(S, A, 5) float32/float64 boxes, optional (S, A) bool valid -> (S, A) bool collides.");
  m.def("collision_pairs", &collision_pairs, py::arg("boxes"), py::arg("valid"), py::arg("margin"),
        py::arg("threads"), py::arg("batched"), py::arg("isa") = "auto", py::arg("broad_phase") = "auto",
        "(S, A, 5) boxes -> (P, 3) int64 rows (scene, i, j), i < j.");
  m.def("rect_frames", &rect_frames, py::arg("boxes"), py::arg("margin"), py::arg("isa"),
        "For tests: (1, A, 5) boxes -> (A, 8) float64 rectangles (cx, cy, c, s, hl, hw, ex, ey) as prepared "
        "by the collision kernels of `isa` or by make_rect (isa='make_rect').");
  m.def("available_isas", &available_isas, "Instruction sets this CPU can run the collision kernels with.");
  m.def("offroad", &offroad, py::arg("boxes"), py::arg("valid"), py::arg("drivable"), py::arg("origin_x"),
        py::arg("origin_y"), py::arg("resolution"), py::arg("mode"), py::arg("threads"), py::arg("batched"),
        "(S, A, 5) boxes, (H, W) uint8 drivable raster -> (S, A) bool offroad.");
  py::class_<genneg::RoadGeometry>(m, "RoadGeometry", "Prepared road boundary (segments and grid index).")
      .def_property_readonly("segments", [](const genneg::RoadGeometry& g) { return g.x0.size(); })
      .def_property_readonly("bounds", [](const genneg::RoadGeometry& g) {
        return py::make_tuple(g.min_x, g.min_y, g.max_x, g.max_y);
      });
  m.def("road_from_rings", &road_from_rings, py::arg("points"), py::arg("ring_offsets"),
        "(P, 2) float64 ring points, (R + 1,) int64 ring offsets -> RoadGeometry.");
  m.def("offroad_polygons", &offroad_polygons, py::arg("boxes"), py::arg("valid"), py::arg("road"),
        py::arg("threads"), py::arg("batched"), "(S, A, 5) boxes, RoadGeometry -> (S, A) bool offroad.");
  m.attr("MAX_ABS_COORDINATE_M") = genneg::kMaxAbsCoordinateM;
  m.attr("MIN_SIZE_M") = genneg::kMinSizeM;
  m.attr("MAX_SIZE_M") = genneg::kMaxSizeM;
  m.attr("MAX_ABS_HEADING_RAD") = genneg::kMaxAbsHeadingRad;
  m.def("available_cores", &genneg::available_cores, "Cores this process may run on (threads=0 uses all).");
}
