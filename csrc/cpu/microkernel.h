// Register-blocked multiply-accumulate kernels for gathered rows, written with GCC vector extensions so the
// compiler emits the widest FMA the build targets (AVX2: 8 floats / 4 doubles per register).
#pragma once
#include <cstdint>

namespace sparseconv {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32), aligned(4)));
  static constexpr int lanes = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32), aligned(8)));
  static constexpr int lanes = 4;
};

// out[r][col:col+NV*L] += sum_c a[r][c] * w[c][col:col+NV*L] for R gathered rows.
template <typename T, int R, int NV>
inline void rows_times_w(const T* const* a, T* const* out_rows, int64_t col, const T* w, int64_t cin,
                         int64_t ldw) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  T* out[R];
  for (int r = 0; r < R; ++r) out[r] = out_rows[r] + col;
  w += col;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = *reinterpret_cast<const V*>(out[r] + v * L);
  for (int64_t c = 0; c < cin; ++c) {
    V wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = *reinterpret_cast<const V*>(w + c * ldw + v * L);
    for (int r = 0; r < R; ++r) {
      const T s = a[r][c];
      for (int v = 0; v < NV; ++v) acc[r][v] += wv[v] * s;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out[r] + v * L) = acc[r][v];
}

// g[r][0:NV*L] += sum_p a[p * lda + r] * b[p * ldb + 0:NV*L] over np pairs: an R x NV*L block of a weight
// gradient from contiguous gathered rows (a: input rows, b: output-gradient rows; g: the block's first element).
template <typename T, int R, int NV>
inline void outer_accumulate(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t np, T* g, int64_t ldg) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = *reinterpret_cast<const V*>(g + r * ldg + v * L);
  for (int64_t p = 0; p < np; ++p, a += lda, b += ldb) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = *reinterpret_cast<const V*>(b + v * L);
    for (int r = 0; r < R; ++r) {
      const T s = a[r];
      for (int v = 0; v < NV; ++v) acc[r][v] += bv[v] * s;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(g + r * ldg + v * L) = acc[r][v];
}

}  // namespace sparseconv
