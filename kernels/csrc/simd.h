// bermo's C++ CPU kernels share these 64-byte vector helpers (included by every csrc/*.cpp that needs them;
// kernels/cpu_extension.py hashes this header with the sources, so a change rebuilds the extension).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstring>

namespace bermo_cpu {

#if defined(__AVX512F__)
#define BERMO_AVX512 1
#else
#define BERMO_AVX512 0
#endif

// 64-byte vectors of the accumulation type: one AVX-512 register where the build targets it, split by the
// compiler into narrower registers otherwise. 16-bit values are widened to float on load and rounded to
// nearest even on store (NaN stays NaN), as c10::BFloat16 / c10::Half do.
template <typename acc_t>
struct Simd;

template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  static constexpr int L = 16;
  static V zero() { return V{}; }
  static V splat(float s) {
#if BERMO_AVX512
    return reinterpret_cast<V>(_mm512_set1_ps(s));
#else
    return V{} + s;
#endif
  }
  static V fma(V a, V b, V c) {  // a * b + c, one rounding where the hardware has it
#if BERMO_AVX512
    return reinterpret_cast<V>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                               reinterpret_cast<__m512>(c)));
#else
    return a * b + c;
#endif
  }
  static V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static V load(const c10::BFloat16* p) {  // bfloat16 is the top half of a float
#if BERMO_AVX512
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return reinterpret_cast<V>(_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
#else
    V v;
    for (int j = 0; j < L; ++j) v[j] = static_cast<float>(p[j]);
    return v;
#endif
  }
  static V load(const c10::Half* p) {
#if BERMO_AVX512
    return reinterpret_cast<V>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#else
    V v;
    for (int j = 0; j < L; ++j) v[j] = static_cast<float>(p[j]);
    return v;
#endif
  }
  static void store(float* p, V v) { std::memcpy(p, &v, sizeof(v)); }
  static void store(c10::BFloat16* p, V v) {
#if BERMO_AVX512 && defined(__AVX512BW__)
    const __m512 f = reinterpret_cast<__m512>(v);
    const __m512i u = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
#else
    for (int j = 0; j < L; ++j) p[j] = static_cast<c10::BFloat16>(v[j]);
#endif
  }
  static void store(c10::Half* p, V v) {
#if BERMO_AVX512
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(reinterpret_cast<__m512>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    for (int j = 0; j < L; ++j) p[j] = static_cast<c10::Half>(v[j]);
#endif
  }
  static float hsum(V v) {  // fixed order: lane 0 first
    float s = 0;
    for (int j = 0; j < L; ++j) s += v[j];
    return s;
  }
};

template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  static constexpr int L = 8;
  static V zero() { return V{}; }
  static V splat(double s) {
#if BERMO_AVX512
    return reinterpret_cast<V>(_mm512_set1_pd(s));
#else
    return V{} + s;
#endif
  }
  static V fma(V a, V b, V c) {
#if BERMO_AVX512
    return reinterpret_cast<V>(_mm512_fmadd_pd(reinterpret_cast<__m512d>(a), reinterpret_cast<__m512d>(b),
                                               reinterpret_cast<__m512d>(c)));
#else
    return a * b + c;
#endif
  }
  static V load(const double* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(double* p, V v) { std::memcpy(p, &v, sizeof(v)); }
  static double hsum(V v) {
    double s = 0;
    for (int j = 0; j < L; ++j) s += v[j];
    return s;
  }
};

}  // namespace bermo_cpu
