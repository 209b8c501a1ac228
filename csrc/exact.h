// Exact signs of small polynomials in float64 inputs: Shewchuk's floating-point expansions ("Adaptive
// precision floating-point arithmetic and fast robust geometric predicates", Discrete Comput. Geom. 18,
// 1997). A value is held as a sum of non-overlapping float64 components in increasing magnitude, with
// zero components removed, so its sign is the sign of the last component. Sums and products by a
// float64 are exact (two-sum, and two-product by fused multiply-add), as long as no product underflows
// (every input of the oracles is either 0 or at least 1e-100 in magnitude, so products of up to three
// inputs stay normal).
//
// The fast paths filter with an error bound and call these only when the float64 value is too close to
// zero to trust; they are slow (tens of nanoseconds) and exact.
#pragma once

#include <cmath>
#include <cstddef>

namespace genneg {

// Capacity in components; the polygon-offroad predicates need at most 48.
struct Expansion {
  static constexpr size_t kCapacity = 64;
  double v[kCapacity];
  size_t n = 0;

  // The sign of the value: -1, 0 or +1.
  int sign() const { return n == 0 ? 0 : (v[n - 1] > 0.0 ? 1 : -1); }
};

namespace exact_detail {

inline void two_sum(double a, double b, double* x, double* y) {
  *x = a + b;
  const double bv = *x - a;
  const double av = *x - bv;
  *y = (a - av) + (b - bv);
}

inline void two_product(double a, double b, double* x, double* y) {
  *x = a * b;
  *y = std::fma(a, b, -*x);  // exact low part (no underflow, see above)
}

}  // namespace exact_detail

// The exact value a (a float64).
inline Expansion expansion_of(double a) {
  Expansion e;
  if (a != 0.0) e.v[e.n++] = a;
  return e;
}

// The exact value a - b.
inline Expansion difference(double a, double b) {
  Expansion e;
  double x = 0.0, y = 0.0;
  exact_detail::two_sum(a, -b, &x, &y);
  if (y != 0.0) e.v[e.n++] = y;
  if (x != 0.0) e.v[e.n++] = x;
  return e;
}

// The exact sum e + f (Shewchuk's linear_expansion_sum with zero elimination, by repeated growth:
// O(|e| |f|), fine for the few components used here).
inline Expansion sum(const Expansion& e, const Expansion& f) {
  Expansion h = e;
  for (size_t j = 0; j < f.n; ++j) {
    // grow_expansion_zeroelim(h, f.v[j])
    Expansion g;
    double q = f.v[j];
    for (size_t i = 0; i < h.n; ++i) {
      double hi = 0.0, lo = 0.0;
      exact_detail::two_sum(q, h.v[i], &hi, &lo);
      q = hi;
      if (lo != 0.0) g.v[g.n++] = lo;
    }
    if (q != 0.0) g.v[g.n++] = q;
    h = g;
  }
  return h;
}

// The exact value -e.
inline Expansion negated(const Expansion& e) {
  Expansion h = e;
  for (size_t i = 0; i < h.n; ++i) h.v[i] = -h.v[i];
  return h;
}

// The exact product e * b (Shewchuk's scale_expansion_zeroelim).
inline Expansion scaled(const Expansion& e, double b) {
  Expansion h;
  if (e.n == 0 || b == 0.0) return h;
  double q = 0.0, lo = 0.0;
  exact_detail::two_product(e.v[0], b, &q, &lo);
  if (lo != 0.0) h.v[h.n++] = lo;
  for (size_t i = 1; i < e.n; ++i) {
    double p_hi = 0.0, p_lo = 0.0;
    exact_detail::two_product(e.v[i], b, &p_hi, &p_lo);
    double s = 0.0;
    exact_detail::two_sum(q, p_lo, &s, &lo);
    if (lo != 0.0) h.v[h.n++] = lo;
    exact_detail::two_sum(p_hi, s, &q, &lo);  // p_hi dominates s: a fast two-sum would do
    if (lo != 0.0) h.v[h.n++] = lo;
  }
  if (q != 0.0) h.v[h.n++] = q;
  return h;
}

// The exact product e * f.
inline Expansion product(const Expansion& e, const Expansion& f) {
  Expansion h;
  for (size_t j = 0; j < f.n; ++j) h = sum(h, scaled(e, f.v[j]));
  return h;
}

}  // namespace genneg
