// Fused CPU kernels for the scalar mix; the same four passes as kernels/scalar_mix_triton.py.
//
// Every layer is a (rows, cols) view with a shared row stride (kernels/layout.py). Work is split into tiles
// of at most kTile elements whose boundaries depend only on the shape, never on the thread count, and every
// tile writes its own partial sums: the host reduces them in a fixed order, so results are deterministic.
// A block of the output (or of the output gradient) stays in L1 while the layers stream through it, so
// each layer is read once per pass. Accumulation is in at::opmath_type (float for 16-bit inputs).
#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kTile = 16384;  // elements per parallel task
constexpr int64_t kGroup = 8;     // layers streamed at once by the float paths (8 beat 16 and 32 here)
constexpr int64_t kBlock = 512;   // columns per L1-resident partial block of the float paths

struct Tiles {
  int64_t rows, cols, stride, col_block, row_block, n_col_blocks, count;
  Tiles(int64_t r, int64_t c, int64_t s) : rows(r), cols(c), stride(s) {
    col_block = std::max<int64_t>(1, std::min<int64_t>(cols, kTile));
    row_block = std::max<int64_t>(1, kTile / col_block);
    n_col_blocks = (cols + col_block - 1) / col_block;
    count = ((rows + row_block - 1) / row_block) * n_col_blocks;
  }
  // f(tile, r0, r1, c0, c1) for every tile, in parallel.
  template <typename F>
  void run(F&& f) const {
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t rb = t / n_col_blocks, cb = t % n_col_blocks;
        const int64_t r0 = rb * row_block, c0 = cb * col_block;
        f(t, r0, std::min(rows, r0 + row_block), c0, std::min(cols, c0 + col_block));
      }
    });
  }
};

template <typename scalar_t>
std::vector<const scalar_t*> bases(const std::vector<at::Tensor>& xs) {
  std::vector<const scalar_t*> p;
  for (const auto& x : xs) p.push_back(x.data_ptr<scalar_t>());
  return p;
}

template <typename scalar_t>
std::vector<scalar_t*> out_bases(const std::vector<at::Tensor>& gs) {
  std::vector<scalar_t*> p;
  for (const auto& g : gs) p.push_back(g.numel() ? g.data_ptr<scalar_t>() : nullptr);
  return p;
}

// Eight floats in a GCC/Clang vector: one AVX register where the build targets AVX, two SSE ones otherwise.
// float, bfloat16 and float16 rows take the vector paths below (16-bit values widened to float on load and
// rounded to nearest even on store); float64 goes through the scalar loops.
typedef float f32x8 __attribute__((vector_size(32)));
template <typename T>
inline constexpr bool kVec8 =
    std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline f32x8 load8(const c10::BFloat16* p) {  // bfloat16 is the top half of a float
#if defined(__AVX2__)
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<f32x8>(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
#else
  uint16_t u[8];
  uint32_t w[8];
  std::memcpy(u, p, sizeof(u));
  for (int j = 0; j < 8; ++j) w[j] = static_cast<uint32_t>(u[j]) << 16;
  f32x8 v;
  std::memcpy(&v, w, sizeof(v));
  return v;
#endif
}
inline f32x8 load8(const c10::Half* p) {
#if defined(__F16C__) && defined(__AVX__)
  return reinterpret_cast<f32x8>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  float f[8];
  for (int j = 0; j < 8; ++j) f[j] = static_cast<float>(p[j]);
  f32x8 v;
  std::memcpy(&v, f, sizeof(v));
  return v;
#endif
}
inline void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof(v)); }
inline void store8(c10::BFloat16* p, f32x8 v) {  // round to nearest even, NaN stays NaN (as c10::BFloat16)
#if defined(__AVX2__)
  const __m256 f = reinterpret_cast<__m256>(v);
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
#else
  uint32_t w[8];
  uint16_t out[8];
  std::memcpy(w, &v, sizeof(w));
  for (int j = 0; j < 8; ++j) {
    const uint32_t u = w[j];
    const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    out[j] = (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0} : rounded;
  }
  std::memcpy(p, out, sizeof(out));
#endif
}
inline void store8(c10::Half* p, f32x8 v) {
#if defined(__F16C__) && defined(__AVX__)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(reinterpret_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  for (int j = 0; j < 8; ++j) p[j] = static_cast<c10::Half>(v[j]);
#endif
}

// The vector paths' walk over one row: [c0, end) in 16-wide blocks, cut into kBlock-wide pieces, and within
// each piece the layers in groups of at most kGroup; f(piece_start, c, k0, k1) handles block c for layers
// [k0, k1). Returns end, where the scalar tail starts.
template <typename F>
inline int64_t for_vector_blocks(int64_t c0, int64_t c1, int64_t L, F&& f) {
  const int64_t end = c0 + (c1 - c0) / 16 * 16;
  for (int64_t s = c0; s < end; s += kBlock) {
    const int64_t e = std::min(end, s + kBlock);
    for (int64_t k0 = 0; k0 < L; k0 += kGroup) {
      const int64_t k1 = std::min(L, k0 + kGroup);
      for (int64_t c = s; c < e; c += 16) f(s, c, k0, k1);
    }
  }
  return end;
}

// One row's outputs [c0, c1) of the forward mix, out[c] = sum_k a[k] * (x[k][in + c] - mu[k]), as far as
// the vector path goes; returns where the scalar tail starts. (Centring before scaling: a near-constant layer
// under layer norm has a huge a[k], and a[k] * x - a[k] * mu would cancel catastrophically.) Blocks of 16
// outputs are accumulated in registers across a group of at most kGroup layers; with more layers the row is
// cut into kBlock-wide pieces whose float partial sums wait in an L1-resident buffer while the next group
// streams through. Every layer is still read once; only kGroup streams run at a time, since dozens of
// same-offset streams (layers of 2^k bytes sit at equal low address bits) defeat the caches' associativity
// and the prefetchers.
template <typename scalar_t, typename acc_t>
inline int64_t mix_row_vec(const scalar_t* const* x, int64_t L, const acc_t* a, const acc_t* mu, int64_t in,
                           scalar_t* o, int64_t c0, int64_t c1) {
  if constexpr (!kVec8<scalar_t>) {
    return c0;
  } else {
    alignas(32) float part[kBlock];
    return for_vector_blocks(c0, c1, L, [&](int64_t s, int64_t c, int64_t k0, int64_t k1) {
      float* pc = part + (c - s);
      f32x8 v0 = f32x8{}, v1 = v0;
      if (k0 > 0) {
        v0 = load8(pc);
        v1 = load8(pc + 8);
      }
      for (int64_t k = k0; k < k1; ++k) {
        const scalar_t* xr = x[k] + in + c;
        v0 += a[k] * (load8(xr) - mu[k]);
        v1 += a[k] * (load8(xr + 8) - mu[k]);
      }
      if (k1 == L) {
        store8(o + c, v0);
        store8(o + c + 8, v1);
      } else {
        store8(pc, v0);
        store8(pc + 8, v1);
      }
    });
  }
}

template <typename scalar_t, typename acc_t>
inline void mix_row(const scalar_t* const* x, int64_t L, const acc_t* a, const acc_t* mu, int64_t in,
                    scalar_t* o, int64_t c0, int64_t c1) {
  for (int64_t c = mix_row_vec(x, L, a, mu, in, o, c0, c1); c < c1; ++c) {
    acc_t v = 0;
    for (int64_t k = 0; k < L; ++k) v += a[k] * (static_cast<acc_t>(x[k][in + c]) - mu[k]);
    o[c] = static_cast<scalar_t>(v);
  }
}

// Backward rows: the vector part of one row (blocks of 16 with the output gradient in registers, walked by
// for_vector_blocks), accumulating lane-wise partial sums; returns where the scalar tail
// starts. float64 rows go through the scalar loop entirely.
template <typename scalar_t, typename acc_t>
struct BwdVec {
  std::vector<f32x8> d;
  f32x8 gs{};
  explicit BwdVec(int64_t L) : d(kVec8<scalar_t> ? static_cast<size_t>(L) : 0, f32x8{}) {}
  int64_t row(const scalar_t* g, const scalar_t* const* x, scalar_t* const* gx, int64_t L, const acc_t* a,
              const acc_t* mu, int64_t in, int64_t on, int64_t c0, int64_t c1, bool dots, bool write) {
    if constexpr (!kVec8<scalar_t>) {
      return c0;
    } else {
      return for_vector_blocks(c0, c1, L, [&](int64_t, int64_t c, int64_t k0, int64_t k1) {
        const f32x8 g0 = load8(g + c), g1 = load8(g + c + 8);
        if (dots && k0 == 0) gs += g0 + g1;
        for (int64_t k = k0; k < k1; ++k) {
          if (dots) {
            const scalar_t* xr = x[k] + in + c;
            d[k] += g0 * (load8(xr) - mu[k]) + g1 * (load8(xr + 8) - mu[k]);
          }
          if (write && gx[k]) {
            store8(gx[k] + on + c, a[k] * g0);
            store8(gx[k] + on + c + 8, a[k] * g1);
          }
        }
      });
    }
  }
  void reduce(acc_t* dot, acc_t& gsum, int64_t L) {
    if constexpr (kVec8<scalar_t>) {
      for (int64_t k = 0; k < L; ++k)
        for (int j = 0; j < 8; ++j) dot[k] += d[k][j];
      for (int j = 0; j < 8; ++j) gsum += gs[j];
    }
  }
};

#define BERMO_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Argument checks of the entry points, O(L) each. The launchers (kernels/scalar_mix_cpu.py) only make valid
// calls; these stop a direct call with a wrong dtype, shape, stride or device from reading or writing out of
// bounds. Every loop addresses layer k's element (r, c) at xs[k] + r * stride + c, a contiguous output or
// gradient at r * cols + c, and indexes the coefficient vectors by k < L and the row mask by r < rows.
// An argument's name for the messages, "xs[3]" or "out", formatted only when a check fails (no string is built
// per layer on every call).
struct Arg {
  Arg(const char* n, int64_t i = -1) : name(n), index(i) {}  // NOLINT: implicit from a literal
  const char* name;
  int64_t index;
};

std::ostream& operator<<(std::ostream& os, const Arg& a) {
  os << a.name;
  if (a.index >= 0) os << "[" << a.index << "]";
  return os;
}

void check_cpu(const at::Tensor& t, const Arg& name) {
  TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided, "bermo scalar_mix: ", name,
              " must be a strided CPU tensor; got one on ", t.device(), " with layout ", t.layout());
}

// The layers' common dtype (one of the four the kernels take), after checking that every layer is a
// (rows, cols) CPU view with strides (stride, 1) in that dtype.
at::ScalarType check_layers(const std::vector<at::Tensor>& xs, int64_t rows, int64_t cols, int64_t stride) {
  TORCH_CHECK(rows >= 0 && cols >= 0 && stride >= 0,
              "bermo scalar_mix: rows, cols and stride must be non-negative; got ", rows, ", ", cols, ", ", stride);
  TORCH_CHECK(!xs.empty(), "bermo scalar_mix: xs must hold at least one layer; got none");
  const auto dtype = xs[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "bermo scalar_mix: xs must be float32, float64, float16 or bfloat16; got ", dtype);
  for (size_t k = 0; k < xs.size(); ++k) {
    const at::Tensor& x = xs[k];
    check_cpu(x, Arg("xs", static_cast<int64_t>(k)));
    TORCH_CHECK(x.scalar_type() == dtype, "bermo scalar_mix: xs[", k, "] must have the dtype of xs[0] (", dtype,
                "); got ", x.scalar_type());
    TORCH_CHECK(x.dim() == 2 && x.size(0) == rows && x.size(1) == cols, "bermo scalar_mix: xs[", k,
                "] must be a (rows, cols) = (", rows, ", ", cols, ") view; got shape ", x.sizes());
    TORCH_CHECK((rows <= 1 || x.stride(0) == stride) && (cols <= 1 || x.stride(1) == 1), "bermo scalar_mix: xs[",
                k, "] must have strides (stride, 1) = (", stride, ", 1); got ", x.strides());
  }
  return dtype;
}

// A contiguous output (or output gradient) of rows * cols elements in the layers' dtype.
void check_rows_out(const at::Tensor& t, const Arg& name, at::ScalarType dtype, int64_t rows,
                    int64_t cols) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == dtype, "bermo scalar_mix: ", name, " must have the layers' dtype (", dtype,
              "); got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "bermo scalar_mix: ", name, " must be contiguous; got strides ", t.strides(),
              " for shape ", t.sizes());
  TORCH_CHECK(t.numel() == rows * cols, "bermo scalar_mix: ", name, " must hold rows * cols = ", rows, " * ", cols,
              " elements; got shape ", t.sizes());
}

// A contiguous (n,) vector in the accumulation type.
void check_vector(const at::Tensor& t, const Arg& name, at::ScalarType acc, int64_t n) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == acc, "bermo scalar_mix: ", name, " must be in the accumulation type ", acc,
              "; got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "bermo scalar_mix: ", name, " must have shape (", n, ",); got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "bermo scalar_mix: ", name, " must be contiguous; got strides ", t.strides());
}

// A contiguous (tiles, width) buffer of per-tile partial sums in the accumulation type.
void check_partials(const at::Tensor& t, at::ScalarType acc, int64_t tiles, int64_t width) {
  check_cpu(t, "partials");
  TORCH_CHECK(t.scalar_type() == acc, "bermo scalar_mix: partials must be in the accumulation type ", acc,
              "; got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == tiles && t.size(1) == width,
              "bermo scalar_mix: partials must have shape (num_tiles, ", width, ") = (", tiles, ", ", width,
              "); got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "bermo scalar_mix: partials must be contiguous; got strides ", t.strides());
}

// The per-layer gradient outputs: one per layer, each empty (no gradient) or a contiguous rows * cols output.
void check_grads(const std::vector<at::Tensor>& grads, size_t L, at::ScalarType dtype, int64_t rows,
                 int64_t cols) {
  TORCH_CHECK(grads.size() == L, "bermo scalar_mix: grads must hold one tensor per layer (", L, "); got ",
              grads.size());
  for (size_t k = 0; k < L; ++k)
    if (grads[k].numel()) check_rows_out(grads[k], Arg("grads", static_cast<int64_t>(k)), dtype, rows, cols);
}

// The 0/1 row mask: a contiguous (rows,) vector in the accumulation type. (With no elements at all, nothing
// is read: the launcher's mask then keeps the rows of the original shape, which a zero-width last dimension
// turns into rows = 0.)
void check_row_mask(const at::Tensor& m, at::ScalarType acc, int64_t rows, int64_t cols) {
  check_cpu(m, "row_mask");
  TORCH_CHECK(m.scalar_type() == acc, "bermo scalar_mix: row_mask must be in the accumulation type ", acc,
              "; got ", m.scalar_type());
  TORCH_CHECK(m.dim() == 1 && (m.size(0) == rows || rows * cols == 0),
              "bermo scalar_mix: row_mask must have shape (rows,) = (", rows, ",); got ", m.sizes());
  TORCH_CHECK(m.is_contiguous(), "bermo scalar_mix: row_mask must be contiguous; got strides ", m.strides());
}

}  // namespace

// out = sum_k coef[k] * (xs[k] - center[k]); out is contiguous (rows, cols).
void mix_forward(const std::vector<at::Tensor>& xs, const at::Tensor& coef, const at::Tensor& center,
                 at::Tensor& out, int64_t rows, int64_t cols, int64_t stride) {
  const auto dtype = check_layers(xs, rows, cols, stride);
  const auto acc = at::toOpMathType(dtype);
  const int64_t L = static_cast<int64_t>(xs.size());
  check_vector(coef, "coef", acc, L);
  check_vector(center, "center", acc, L);
  check_rows_out(out, "out", dtype, rows, cols);
  Tiles tiles(rows, cols, stride);
  BERMO_DISPATCH(out.scalar_type(), "bermo_mix_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const acc_t* a = coef.data_ptr<acc_t>();
    const acc_t* mu = center.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    tiles.run([&](int64_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      for (int64_t r = r0; r < r1; ++r) mix_row(x.data(), L, a, mu, r * stride, o + r * cols, c0, c1);
    });
  });
}

// grads[k] = coef[k] * g where grads[k] is non-empty; when partials is non-empty (tiles, L + 1), its row t
// gets [sum g * (x_k - center_k) for k] + [sum g] over tile t.
void mix_backward(const at::Tensor& grad_out, const std::vector<at::Tensor>& xs, std::vector<at::Tensor> grads,
                  const at::Tensor& coef, const at::Tensor& center, at::Tensor& partials, int64_t rows,
                  int64_t cols, int64_t stride) {
  const auto dtype = check_layers(xs, rows, cols, stride);
  const auto acc = at::toOpMathType(dtype);
  const int64_t L = static_cast<int64_t>(xs.size());
  check_rows_out(grad_out, "grad_out", dtype, rows, cols);
  check_grads(grads, xs.size(), dtype, rows, cols);
  check_vector(coef, "coef", acc, L);
  check_vector(center, "center", acc, L);
  Tiles tiles(rows, cols, stride);
  const bool dots = partials.numel() > 0;  // empty: no sums wanted
  if (dots) check_partials(partials, acc, tiles.count, L + 1);
  BERMO_DISPATCH(grad_out.scalar_type(), "bermo_mix_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const auto gx = out_bases<scalar_t>(grads);
    const acc_t* a = coef.data_ptr<acc_t>();
    const acc_t* mu = center.data_ptr<acc_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    acc_t* part = dots ? partials.data_ptr<acc_t>() : nullptr;
    tiles.run([&](int64_t t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      std::vector<acc_t> dot(static_cast<size_t>(L), acc_t(0));
      acc_t gsum = 0;
      BwdVec<scalar_t, acc_t> vec(L);
      // Two sweeps over the tile, the reductions and then the writes, each with half the concurrent memory
      // streams of a single sweep (the tile's output gradient is still in cache for the second).
      for (int pass = dots ? 0 : 1; pass < 2; ++pass) {
        const bool sum = pass == 0, write = pass == 1;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t in = r * stride, on = r * cols;
          int64_t c = vec.row(go + on, x.data(), gx.data(), L, a, mu, in, on, c0, c1, sum, write);
          for (; c < c1; ++c) {
            const acc_t g = static_cast<acc_t>(go[on + c]);
            if (sum) gsum += g;
            for (int64_t k = 0; k < L; ++k) {
              if (sum) dot[k] += g * (static_cast<acc_t>(x[k][in + c]) - mu[k]);
              if (write && gx[k]) gx[k][on + c] = static_cast<scalar_t>(a[k] * g);
            }
          }
        }
      }
      vec.reduce(dot.data(), gsum, L);
      if (dots) {
        for (int64_t k = 0; k < L; ++k) part[t * (L + 1) + k] = dot[k];
        part[t * (L + 1) + L] = gsum;
      }
    });
  });
}

// partials (tiles, 3L + 1): [count, mean_k for k, M2_k for k, shift_k for k] over each tile's unmasked rows,
// the means of x_k - shift_k with shift_k the tile's first unmasked value of layer k (0 when it has none: a value of
// the data keeps a near-constant layer's sums small and exact, and a padded value never enters them). As in
// AllenNLP (which multiplies by the mask), a NaN or infinity in a masked row still poisons the layer's
// statistics: masked rows are summed times zero, which is 0 for finite values and NaN otherwise.
void ln_stats(const std::vector<at::Tensor>& xs, const at::Tensor& row_mask, at::Tensor& partials, int64_t rows,
              int64_t cols, int64_t stride) {
  const auto dtype = check_layers(xs, rows, cols, stride);
  const auto acc = at::toOpMathType(dtype);
  const int64_t L = static_cast<int64_t>(xs.size());
  check_row_mask(row_mask, acc, rows, cols);
  Tiles tiles(rows, cols, stride);
  check_partials(partials, acc, tiles.count, 3 * L + 1);
  BERMO_DISPATCH(xs[0].scalar_type(), "bermo_ln_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const acc_t* m = row_mask.data_ptr<acc_t>();
    acc_t* part = partials.data_ptr<acc_t>();
    tiles.run([&](int64_t t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      const int64_t w = c1 - c0;
      acc_t n = 0;
      int64_t first = -1;  // the tile's first unmasked row: every layer's shift is its value at (first, c0)
      for (int64_t r = r0; r < r1; ++r) {
        n += m[r] * static_cast<acc_t>(w);
        if (first < 0 && m[r] != 0) first = r;
      }
      acc_t* p = part + t * (3 * L + 1);
      p[0] = n;
      for (int64_t k = 0; k < L; ++k) {
        const acc_t shift = first < 0 || w == 0 ? acc_t(0) : static_cast<acc_t>(x[k][first * stride + c0]);
        acc_t s = 0, poison = 0;
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* xr = x[k] + r * stride + c0;
          if (m[r] == 0) {
_Pragma("omp simd reduction(+ : poison)")
            for (int64_t c = 0; c < w; ++c) poison += static_cast<acc_t>(xr[c]) * acc_t(0);
            continue;
          }
_Pragma("omp simd reduction(+ : s)")
          for (int64_t c = 0; c < w; ++c) s += static_cast<acc_t>(xr[c]) - shift;
        }
        const acc_t mean = (n > 0 ? s / n : acc_t(0)) + poison;
        acc_t m2 = 0;
        for (int64_t r = r0; r < r1; ++r) {
          if (m[r] == 0) continue;
          const scalar_t* xr = x[k] + r * stride + c0;
_Pragma("omp simd reduction(+ : m2)")
          for (int64_t c = 0; c < w; ++c) {
            const acc_t d = (static_cast<acc_t>(xr[c]) - shift) - mean;
            m2 += d * d;
          }
        }
        p[1 + k] = mean;
        p[1 + L + k] = m2;
        p[1 + 2 * L + k] = shift;
      }
    });
  });
}

// grads[k] = coef_k * g - m * (alpha_k + beta_k * (x_k - center_k)) where grads[k] is non-empty.
void ln_backward(const at::Tensor& grad_out, const std::vector<at::Tensor>& xs, std::vector<at::Tensor> grads,
                 const at::Tensor& row_mask, const at::Tensor& coef, const at::Tensor& alpha,
                 const at::Tensor& beta, const at::Tensor& center, int64_t rows, int64_t cols, int64_t stride) {
  const auto dtype = check_layers(xs, rows, cols, stride);
  const auto acc = at::toOpMathType(dtype);
  const int64_t L = static_cast<int64_t>(xs.size());
  check_rows_out(grad_out, "grad_out", dtype, rows, cols);
  check_grads(grads, xs.size(), dtype, rows, cols);
  check_row_mask(row_mask, acc, rows, cols);
  check_vector(coef, "coef", acc, L);
  check_vector(alpha, "alpha", acc, L);
  check_vector(beta, "beta", acc, L);
  check_vector(center, "center", acc, L);
  Tiles tiles(rows, cols, stride);
  BERMO_DISPATCH(grad_out.scalar_type(), "bermo_ln_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const auto gx = out_bases<scalar_t>(grads);
    const acc_t *m = row_mask.data_ptr<acc_t>(), *a = coef.data_ptr<acc_t>(), *al = alpha.data_ptr<acc_t>(),
                *be = beta.data_ptr<acc_t>(), *mu = center.data_ptr<acc_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    tiles.run([&](int64_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      for (int64_t k = 0; k < L; ++k) {
        if (!gx[k]) continue;
        const acc_t ak = a[k], mk = mu[k];
        for (int64_t r = r0; r < r1; ++r) {
          const acc_t mal = m[r] * al[k], mbe = m[r] * be[k];
          const scalar_t* gr = go + r * cols + c0;
          const scalar_t* xr = x[k] + r * stride + c0;
          scalar_t* dst = gx[k] + r * cols + c0;
_Pragma("omp simd")
          for (int64_t c = 0; c < c1 - c0; ++c)
            dst[c] = static_cast<scalar_t>(ak * static_cast<acc_t>(gr[c]) - mal -
                                           mbe * (static_cast<acc_t>(xr[c]) - mk));
        }
      }
    });
  });
}

int64_t num_tiles(int64_t rows, int64_t cols, int64_t stride) { return Tiles(rows, cols, stride).count; }

void register_scalar_mix(pybind11::module_& m) {
  m.def("mix_forward", &mix_forward);
  m.def("mix_backward", &mix_backward);
  m.def("ln_stats", &ln_stats);
  m.def("ln_backward", &ln_backward);
  m.def("num_tiles", &num_tiles);
}
