// CPU kernel of the block-sparse linear layer (bermo.nn.BlockSparseLinear, inference): y = x @ W^T + b with W
// (N, K) given in BSR form, the kept bo x bi blocks only: block-row pointers crow (N / bo + 1), block-column
// indices col (nnz) and values (nnz, bo, bi). Launched by kernels/block_sparse_linear_cpu.py.
//
// bsl_pack turns the values into panels in the accumulation type, each block transposed to bi x bo_pad
// (bo_pad: bo rounded up to a multiple of 16, the padding zero), so that one row of a panel is the block's
// contribution of one input feature to all bo outputs: a run of 64-byte vectors. The launcher packs once per
// values tensor (and again after an in-place change) and keeps the panels.
//
// bsl_forward: the tokens are cut into chunks (at most 96 tokens, and at most kChunkBytes of x, which is packed
// feature-major once per chunk and widened to the accumulation type); work units are (chunk, group of block
// rows), handed to the threads one at a time. For each block row, a unit walks its chunk in microtiles of TT
// tokens and, for each OW-wide slice of the row's outputs, accumulates a TT x OW tile in registers over the
// row's kept blocks only (a broadcast of x per token and input feature, NV vector loads of the panel, TT x NV
// FMAs). A row's panels are taken in runs that fit kPanelBytes, so each run is read from L1 by every microtile
// of the chunk (the partial sums wait in a small tile buffer between runs). The last run of a full microtile
// writes its registers straight to the output (a tail microtile, or a slice narrower than OW, goes through the
// tile buffer): 5-20% faster than writing every tile through the buffer (float32 FFN shapes, 0.1 of the 32x32
// blocks, 1024 tokens, 1 and 2 threads). The bias is added before the one rounding to the output dtype; a large
// float32 output is written with non-temporal stores.
//
// Determinism: every output value is computed by one task, which adds its terms in a fixed order (the row's
// kept blocks in index order, then the block's input features), whatever the thread count.
#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace {

// The vector helpers (Simd<float>, Simd<double>; BERMO_AVX512) are shared with the other kernels.
using bermo_cpu::Simd;

#if BERMO_AVX512
constexpr bool kStreamAvailable = true;
inline void stream_store(float* p, Simd<float>::V v) { _mm512_stream_ps(p, reinterpret_cast<__m512>(v)); }
#else
constexpr bool kStreamAvailable = false;
inline void stream_store(float* p, Simd<float>::V v) { Simd<float>::store(p, v); }
#endif

inline void stream_fence() {
#if BERMO_AVX512
  _mm_sfence();
#endif
}

// Tile shapes: TT tokens x NV vectors, TT * NV <= 24 accumulators (AVX-512 has 32 registers).
template <int NV>
constexpr int kTokens = NV == 1 ? 16 : NV == 2 ? 12 : NV == 4 ? 6 : 3;
constexpr int kChunkTokens = 96;        // at most this many tokens in a chunk (rounded to whole microtiles)
constexpr int64_t kChunkBytes = 1 << 19;  // and at most this much packed x: it stays in L2 next to the panels
constexpr int64_t kPanelBytes = 24576;  // a run of panels that the chunk's microtiles share from L1
constexpr int64_t kPad = 16;            // panels' output side is padded to a multiple of this
constexpr int64_t kSerialFmas = 1 << 21;  // below this many multiply-adds a product runs on one thread
constexpr int64_t kStreamBytes = 1 << 23;  // outputs larger than this are written past the caches (float32)

// acc[t][v] += sum over the run's blocks q, in order, of sum_{k < bi} A[(col_off[q] + k) * TT + t] *
// B[q][k * ldb + v * L + c], for t < TT, c < L. A is a microtile of x packed feature-major (TT tokens per input
// feature, so a block's operand is one contiguous run); B[q] points at the block's panel, offset to the slice.
template <typename acc_t, int NV, int TT>
__attribute__((always_inline)) inline void run_blocks(typename Simd<acc_t>::V (&acc)[TT][NV], const acc_t* A,
                                                      const int64_t* col_off, const acc_t* const* B, int64_t nq,
                                                      int64_t bi, int64_t ldb) {
  using S = Simd<acc_t>;
  using V = typename S::V;
  constexpr int L = S::L;
  for (int64_t q = 0; q < nq; ++q) {
    const acc_t* a = A + col_off[q] * TT;
    const acc_t* b = B[q];
    for (int64_t k = 0; k < bi; ++k, a += TT, b += ldb) {
      V bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * L);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        const V s = S::splat(a[t]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[t][v] = S::fma(s, bv[v], acc[t][v]);
      }
    }
  }
}

// The TT x NV * L register tile: zero, or the partial sums of the earlier runs from the tile buffer.
template <typename acc_t, int NV, int TT>
__attribute__((always_inline)) inline void start_tile(typename Simd<acc_t>::V (&acc)[TT][NV], const acc_t* tile,
                                                      bool accumulate) {
  using S = Simd<acc_t>;
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[t][v] = accumulate ? S::load(tile + (t * NV + v) * S::L) : S::zero();
}

// One run of a row's blocks for one microtile, the partial sums kept in the tile buffer.
template <typename acc_t, int NV, int TT>
inline void micro(const acc_t* A, const int64_t* col_off, const acc_t* const* B, int64_t nq, int64_t bi,
                  int64_t ldb, acc_t* tile, bool accumulate) {
  using S = Simd<acc_t>;
  typename S::V acc[TT][NV];
  start_tile<acc_t, NV, TT>(acc, tile, accumulate);
  run_blocks<acc_t, NV, TT>(acc, A, col_off, B, nq, bi, ldb);
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) S::store(tile + (t * NV + v) * S::L, acc[t][v]);
}

// One output row's slice y (NV vectors) plus the bias when there is one (none: nothing is added, so a sum of
// -0.0 stays -0.0, as in the dense product), rounded once to the output dtype; float32 past the caches when
// `stream`.
template <typename scalar_t, typename acc_t, int NV>
__attribute__((always_inline)) inline void store_row(scalar_t* dst, typename Simd<acc_t>::V (&y)[NV],
                                                     const acc_t* bias, bool stream) {
  using S = Simd<acc_t>;
  constexpr int L = S::L;
  if (bias) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) y[v] += S::load(bias + v * L);
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) stream_store(dst + v * L, y[v]);
      return;
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) S::store(dst + v * L, y[v]);
}

// The row's last run for a microtile of TT whole tokens and a full-width slice: the sums go straight to the
// output rows dst (stride ldd) with the bias (or none), without a pass through the tile buffer.
template <typename scalar_t, typename acc_t, int NV, int TT>
inline void micro_out(const acc_t* A, const int64_t* col_off, const acc_t* const* B, int64_t nq, int64_t bi,
                      int64_t ldb, const acc_t* tile, bool accumulate, const acc_t* bias, scalar_t* dst,
                      int64_t ldd, bool stream) {
  typename Simd<acc_t>::V acc[TT][NV];
  start_tile<acc_t, NV, TT>(acc, tile, accumulate);
  run_blocks<acc_t, NV, TT>(acc, A, col_off, B, nq, bi, ldb);
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t) store_row<scalar_t, acc_t, NV>(dst + t * ldd, acc[t], bias, stream);
}

// dst (TT x n, feature-major: dst[k * TT + t]) = rows [r0, r0 + TT) of src (T, n) in the accumulation type,
// rows past T zero.
template <int TT, typename scalar_t, typename acc_t>
void pack_microtile(const scalar_t* src, int64_t T, int64_t n, int64_t r0, acc_t* dst) {
  const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(TT, T - r0));
  if (rows < TT) std::fill_n(dst, n * TT, acc_t(0));
  constexpr int64_t kStep = 64;  // features per pass: the TT source rows' pieces stay in L1
  for (int64_t k0 = 0; k0 < n; k0 += kStep) {
    const int64_t k1 = std::min(n, k0 + kStep);
    for (int64_t t = 0; t < rows; ++t) {
      const scalar_t* s = src + (r0 + t) * n;
      for (int64_t k = k0; k < k1; ++k) dst[k * TT + t] = static_cast<acc_t>(s[k]);
    }
  }
}

// out (T, N) = A (T, K) @ W^T + bias, W given by crow / col (int64) and the packed panels (nnz, bi, bo_pad).
template <typename scalar_t, typename acc_t, int NV>
void forward_impl(const scalar_t* A, int64_t T, int64_t K, const int64_t* crow, const int64_t* col, int64_t nbr,
                  const acc_t* panels, int64_t bo, int64_t bi, int64_t bo_pad, const acc_t* bias, scalar_t* out) {
  using S = Simd<acc_t>;
  constexpr int L = S::L, OW = NV * L, TT = kTokens<NV>;
  const int64_t MT = std::max<int64_t>(  // microtiles per chunk
      1, std::min<int64_t>(kChunkTokens / TT, kChunkBytes / (TT * K * static_cast<int64_t>(sizeof(acc_t)))));
  const int64_t N = nbr * bo;
  const int64_t n_mt = (T + TT - 1) / TT, n_chunks = (n_mt + MT - 1) / MT;
  const int64_t slices = bo_pad / OW, panel = bi * bo_pad;
  const int64_t run = std::max<int64_t>(1, kPanelBytes / (bi * OW * static_cast<int64_t>(sizeof(acc_t))));
  if (n_chunks == 0 || nbr == 0) return;
  // A float32 output much larger than the caches is written with non-temporal stores (no read for ownership,
  // no eviction of x and the panels); only when every row slice starts on a 64-byte boundary.
  const bool stream = kStreamAvailable && std::is_same_v<scalar_t, float> &&
                      T * N * static_cast<int64_t>(sizeof(scalar_t)) > kStreamBytes && N % L == 0 && bo % L == 0 &&
                      reinterpret_cast<uintptr_t>(out) % 64 == 0;
  // Work units: (chunk, group of block rows), chunk-major, handed out one at a time to whichever thread asks
  // next (a thread slowed by the other processes on a shared machine takes fewer units instead of holding
  // everyone up). The units' results do not depend on which thread runs them.
  // Small products (a few tokens, few blocks) run on the calling thread: waking the pool costs more than they do.
  const int64_t fmas = T * crow[nbr] * bi * bo_pad;
  const int64_t n_threads = fmas < kSerialFmas ? 1 : std::max<int64_t>(1, at::get_num_threads());
  const int64_t groups = std::min<int64_t>(nbr, std::max<int64_t>(1, (8 * n_threads + n_chunks - 1) / n_chunks));
  const int64_t units = n_chunks * groups;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    std::vector<acc_t> xp;  // the chunk's microtiles, packed
    std::vector<acc_t> tiles(static_cast<size_t>(MT * TT * OW));
    std::vector<int64_t> offs;
    std::vector<const acc_t*> bs;
    int64_t packed_chunk = -1;
    for (int64_t unit = next.fetch_add(1); unit < units; unit = next.fetch_add(1)) {
      const int64_t chunk = unit / groups, g = unit % groups;
      const int64_t m0 = chunk * MT, m1 = std::min(n_mt, m0 + MT);
      if (chunk != packed_chunk) {
        xp.resize(static_cast<size_t>((m1 - m0) * TT * K));
        for (int64_t m = m0; m < m1; ++m) pack_microtile<TT>(A, T, K, m * TT, xp.data() + (m - m0) * TT * K);
        packed_chunk = chunk;
      }
      for (int64_t i = nbr * g / groups; i < nbr * (g + 1) / groups; ++i) {
        const int64_t e0 = crow[i], ne = crow[i + 1] - e0;
        offs.resize(static_cast<size_t>(ne));
        bs.resize(static_cast<size_t>(ne));
        for (int64_t q = 0; q < ne; ++q) offs[q] = col[e0 + q] * bi;
        for (int64_t s = 0; s < slices; ++s) {
          for (int64_t q = 0; q < ne; ++q) bs[q] = panels + (e0 + q) * panel + s * OW;
          const int64_t c0 = s * OW, width = std::min<int64_t>(OW, bo - c0);
          const int64_t n0 = i * bo + c0;
          // Microtiles [m0, m0 + direct) hold TT whole tokens: in a full-width slice their last run goes straight
          // to the output; the rest go through the tile buffer and the epilogue below.
          const int64_t direct = width == OW ? std::max<int64_t>(0, std::min(m1, T / TT) - m0) : 0;
          for (int64_t q0 = 0; q0 < std::max<int64_t>(ne, 1); q0 += run) {
            const int64_t q1 = std::min(ne, q0 + run);
            const bool last = q1 >= ne;
            for (int64_t m = m0; m < m1; ++m) {
              if (last && m < m0 + direct) {
                micro_out<scalar_t, acc_t, NV, TT>(xp.data() + (m - m0) * TT * K, offs.data() + q0, bs.data() + q0,
                                                   q1 - q0, bi, bo_pad, tiles.data() + (m - m0) * TT * OW, q0 > 0,
                                                   bias ? bias + n0 : nullptr, out + m * TT * N + n0, N, stream);
              } else {
                micro<acc_t, NV, TT>(xp.data() + (m - m0) * TT * K, offs.data() + q0, bs.data() + q0, q1 - q0, bi,
                                     bo_pad, tiles.data() + (m - m0) * TT * OW, q0 > 0);
              }
            }
          }
          // Epilogue of the rest: bias, one rounding, only the slice's real outputs (bo may not fill the padded
          // slice).
          if (width <= 0) continue;
          for (int64_t m = m0 + direct; m < m1; ++m) {
            const int64_t rows = std::min<int64_t>(TT, T - m * TT);
            for (int64_t t = 0; t < rows; ++t) {
              scalar_t* dst = out + (m * TT + t) * N + n0;
              const acc_t* src = tiles.data() + ((m - m0) * TT + t) * OW;
              if (width == OW) {
                typename S::V y[NV];
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) y[v] = S::load(src + v * L);
                store_row<scalar_t, acc_t, NV>(dst, y, bias ? bias + n0 : nullptr, stream);
              } else {
                for (int64_t c = 0; c < width; ++c)
                  dst[c] = static_cast<scalar_t>(bias ? src[c] + bias[n0 + c] : src[c]);
              }
            }
          }
        }
      }
    }
    if (stream) stream_fence();
  };
  if (n_threads == 1) {
    work(0, 1);
  } else {
    at::parallel_for(0, n_threads, 1, work);
  }
}

#define BERMO_BSL_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

int64_t padded(int64_t bo) { return (bo + kPad - 1) / kPad * kPad; }

}  // namespace

// The panels of values (nnz, bo, bi) in the accumulation type: (nnz, bi, bo_pad), block e transposed, zero in
// the padding columns [bo, bo_pad).
at::Tensor bsl_pack(const at::Tensor& values) {
  TORCH_CHECK(values.dim() == 3 && values.is_contiguous() && values.device().is_cpu(),
              "bermo block_sparse_linear: values must be a contiguous (nnz, bo, bi) CPU tensor");
  const int64_t nnz = values.size(0), bo = values.size(1), bi = values.size(2), bo_pad = padded(bo);
  const auto acc = values.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor packed = at::empty({nnz, bi, bo_pad}, values.options().dtype(acc));
  BERMO_BSL_DISPATCH(values.scalar_type(), "bermo_bsl_pack", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = values.data_ptr<scalar_t>();
    acc_t* dst = packed.data_ptr<acc_t>();
    at::parallel_for(0, nnz, 16, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t* s = src + e * bo * bi;
        acc_t* d = dst + e * bi * bo_pad;
        for (int64_t k = 0; k < bi; ++k) {
          acc_t* dk = d + k * bo_pad;
          for (int64_t n = 0; n < bo; ++n) dk[n] = static_cast<acc_t>(s[n * bi + k]);
          std::fill(dk + bo, dk + bo_pad, acc_t(0));
        }
      }
    });
  });
  return packed;
}

// out (T, N) = x (T, K) @ W^T + bias over the kept blocks only. crow (N / bo + 1) and col (nnz) are int64 (the
// op layer checks their order; their bounds are checked here too, O(nnz), since a compiled graph skips the op
// layer's check and an index out of range would read outside x); packed comes from bsl_pack; bias is N values in
// the accumulation type, or empty; out is contiguous (T, N) in x's dtype.
void bsl_forward(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& packed,
                 const at::Tensor& bias, int64_t bo, at::Tensor& out) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && out.is_contiguous() && out.dim() == 2 &&
                  out.size(0) == x.size(0) && x.scalar_type() == out.scalar_type(),
              "bermo block_sparse_linear: bad input or output");
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1 && crow.scalar_type() == at::kLong &&
                  col.scalar_type() == at::kLong && crow.is_contiguous() && col.is_contiguous(),
              "bermo block_sparse_linear: indices must be contiguous int64");
  TORCH_CHECK(packed.dim() == 3 && packed.is_contiguous() && packed.size(0) == col.size(0) && bo > 0 &&
                  packed.size(2) == padded(bo),
              "bermo block_sparse_linear: bad packed values");
  const int64_t T = x.size(0), K = x.size(1), nbr = crow.size(0) - 1, bi = packed.size(1), bo_pad = packed.size(2);
  TORCH_CHECK(nbr >= 0 && out.size(1) == nbr * bo && bi > 0 && K % bi == 0,
              "bermo block_sparse_linear: shapes do not match");
  {
    const int64_t *cr = crow.data_ptr<int64_t>(), *cl = col.data_ptr<int64_t>(), nnz = col.size(0), nbc = K / bi;
    TORCH_CHECK(cr[0] == 0 && cr[nbr] == nnz, "bermo block_sparse_linear: crow_indices must run from 0 to nnz = ",
                nnz, "; got ", cr[0], " .. ", cr[nbr]);
    for (int64_t i = 0; i < nbr; ++i) {
      TORCH_CHECK(cr[i] <= cr[i + 1], "bermo block_sparse_linear: crow_indices must be non-decreasing; crow_indices[",
                  i + 1, "] = ", cr[i + 1], " < crow_indices[", i, "] = ", cr[i]);
    }
    for (int64_t k = 0; k < nnz; ++k) {
      TORCH_CHECK(cl[k] >= 0 && cl[k] < nbc, "bermo block_sparse_linear: col_indices must lie in [0, ", nbc,
                  "); col_indices[", k, "] = ", cl[k]);
    }
  }
  BERMO_BSL_DISPATCH(x.scalar_type(), "bermo_bsl_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(packed.scalar_type() == c10::CppTypeToScalarType<acc_t>::value &&
                    (bias.numel() == 0 || (bias.scalar_type() == packed.scalar_type() && bias.is_contiguous() &&
                                           bias.numel() == nbr * bo)),
                "bermo block_sparse_linear: packed values and bias must be in the accumulation type");
    const acc_t* b = bias.numel() ? bias.data_ptr<acc_t>() : nullptr;
    auto run = [&](auto nv) {
      forward_impl<scalar_t, acc_t, decltype(nv)::value>(x.data_ptr<scalar_t>(), T, K, crow.data_ptr<int64_t>(),
                                                           col.data_ptr<int64_t>(), nbr, packed.data_ptr<acc_t>(),
                                                           bo, bi, bo_pad, b, out.data_ptr<scalar_t>());
    };
    constexpr int L = Simd<acc_t>::L;
    if (bo_pad % 64 == 0) {
      run(std::integral_constant<int, 64 / L>{});
    } else if (bo_pad % 32 == 0) {
      run(std::integral_constant<int, 32 / L>{});
    } else {
      run(std::integral_constant<int, 16 / L>{});
    }
  });
}

void register_block_sparse_linear(pybind11::module_& m) {
  m.def("bsl_pack", &bsl_pack);
  m.def("bsl_forward", &bsl_forward);
}
