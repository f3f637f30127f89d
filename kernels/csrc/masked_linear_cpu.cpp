// CPU kernels of the masked linear layer (movement pruning): y = x @ (W * expand(M)).T + b with W (N, K) and a
// block mask M (N / bo, K / bi), one value per bo x bi block of W; launched by kernels/masked_linear_cpu.py.
//
// Block-sparse products (forward, grad_input, grad_weight on kept blocks) read only the weight blocks whose
// mask value is nonzero: the host walks the mask once per call and lists the kept blocks per output block;
// the kept blocks are packed once per call into contiguous panels in the accumulation type (the mask value
// multiplied in, 16-bit values widened), and a register-blocked micro-kernel accumulates a tile of TT tokens
// x OW outputs (OW = 16, 32 or 64) over every kept block of its output block in 64-byte vectors.
//
// Determinism: every output value is computed by exactly one task, which sums its terms in a fixed order
// (kept blocks in mask order, then the block's rows); the tasks' boundaries depend only on the shapes, so
// results are bitwise identical from run to run and for any thread count. The dense products of the
// launcher's composite paths go through ml_mm, which cuts the product into shape-fixed tiles and gives each to
// one single-threaded BLAS call for the same reason (a multi-threaded BLAS call may split the reduction
// differently for different thread counts).
#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#if __has_include(<ATen/native/CPUBlas.h>)
#include <ATen/native/CPUBlas.h>
#endif
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
#define BERMO_ML_BRGEMM 1
#else
#define BERMO_ML_BRGEMM 0
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "simd.h"

namespace {

// The vector helpers (Simd<float>, Simd<double>; BERMO_AVX512) are shared with the other kernels.
using bermo_cpu::Simd;

// Micro-kernel tiles. Forward / grad_input: TT tokens x NV vectors of outputs, TT * NV <= 24 accumulators
// (AVX-512 has 32 registers). grad_weight on kept blocks: 16 / NV weight rows x NV vectors.
template <int NV>
constexpr int kTokens = NV == 1 ? 16 : NV == 2 ? 12 : NV == 4 ? 6 : 3;
template <int NV>
constexpr int kGradRows = NV >= 16 ? 1 : 16 / NV;
constexpr int kTokenBlock = 96;      // tokens of a forward / grad_input task
constexpr int64_t kPanelBytes = 16384;  // kept blocks' panels a token block's microtiles share from L1
constexpr int64_t kGradTokens = 64;  // tokens per step of the grad_weight tiles (their operands stay in L1)
constexpr int64_t kGradGroups = 16;  // grad_weight tasks: runs of consecutive kept blocks

// Where one kept block's terms start: a into the left operand, b into the right one (the panels).
struct Entry {
  int64_t a, b;
};

// tile[t][c] (+)= sum over entries e, in order, of sum_{r < RL} A[e.a + r * lda + t * ts] * B[e.b + r * ldb + c]
// for t < TT, c < NV * L: a broadcast of A per token and step, NV vector loads of B per step. kUnitT: ts == 1.
// With accumulate the sums continue from tile's values (the same additions, in the same order, as one call
// over all the entries).
template <typename acc_t, int NV, int TT, bool kUnitT>
inline void micro(const acc_t* A, int64_t lda, int64_t ts, const acc_t* B, int64_t ldb, const Entry* e, int64_t ne,
                  int64_t RL, acc_t* tile, bool accumulate) {
  using S = Simd<acc_t>;
  using V = typename S::V;
  constexpr int L = S::L;
  if (kUnitT) ts = 1;
  V acc[TT][NV];
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[t][v] = accumulate ? S::load(tile + (t * NV + v) * L) : S::zero();
  for (int64_t q = 0; q < ne; ++q) {
    const acc_t* a = A + e[q].a;
    const acc_t* b = B + e[q].b;
    for (int64_t r = 0; r < RL; ++r, a += lda, b += ldb) {
      V bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * L);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        const V s = S::splat(a[t * ts]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[t][v] = S::fma(s, bv[v], acc[t][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) S::store(tile + (t * NV + v) * L, acc[t][v]);
}

// Calls f(std::integral_constant<int, NV>) for the widest output tile (64, 32 or 16 values) dividing width.
template <typename acc_t, typename F>
inline void with_tile_width(int64_t width, F&& f) {
  constexpr int L = Simd<acc_t>::L;
  if (width % 64 == 0) {
    f(std::integral_constant<int, 64 / L>{});
  } else if (width % 32 == 0) {
    f(std::integral_constant<int, 32 / L>{});
  } else {
    TORCH_CHECK(width % 16 == 0, "bermo masked_linear: block side ", width, " is not a multiple of 16");
    f(std::integral_constant<int, 16 / L>{});
  }
}

// dst (rows, n) = src rows [r0, r0 + rows) of (T, n) in the accumulation type, rows past T zero.
template <typename scalar_t, typename acc_t>
void copy_rows(const scalar_t* src, int64_t T, int64_t n, int64_t r0, int64_t rows, acc_t* dst) {
  using S = Simd<acc_t>;
  constexpr int L = S::L;
  for (int64_t r = 0; r < rows; ++r) {
    acc_t* d = dst + r * n;
    if (r0 + r >= T) {
      std::fill_n(d, n, acc_t(0));
      continue;
    }
    const scalar_t* s = src + (r0 + r) * n;
    int64_t c = 0;
    if constexpr (std::is_same_v<acc_t, float>)
      for (; c + L <= n; c += L) S::store(d + c, S::load(s + c));
    for (; c < n; ++c) d[c] = static_cast<acc_t>(s[c]);
  }
}

// out (T, Nout) = A (T, Kin) times a block-sparse matrix given per output block of `width` columns as the list
// ent[ptr[blk] : ptr[blk + 1]] of (A column, panel offset) of its kept blocks, each panel RL x width with row
// stride ldb; plus bias (Nout values, or null). Tasks are (token block, OW-wide output tile), token-block
// major; a task runs its microtiles over runs of kept blocks whose panels fit kPanelBytes, so each panel is
// read from L1 by all the microtiles (the partial sums wait in a tile buffer between runs). A is read in place
// when it is already in the accumulation type; otherwise (and for a token block past T's last full microtile)
// the thread converts / copies the token block's rows once.
template <typename scalar_t, typename acc_t, int NV>
void sparse_mm(const scalar_t* A, int64_t T, int64_t Kin, const std::vector<int64_t>& ptr,
               const std::vector<Entry>& ent, const acc_t* panels, int64_t ldb, int64_t RL, int64_t width,
               const acc_t* bias, scalar_t* out, int64_t Nout) {
  using S = Simd<acc_t>;
  constexpr int L = S::L, OW = NV * L, TT = kTokens<NV>;
  constexpr int64_t MT = std::max(1, kTokenBlock / TT);
  constexpr bool kInPlace = std::is_same_v<scalar_t, acc_t>;
  const int64_t n_mt = (T + TT - 1) / TT, n_tb = (n_mt + MT - 1) / MT;
  const int64_t n_sub = Nout / OW, subs = width / OW;
  const int64_t run = std::max<int64_t>(1, kPanelBytes / (RL * OW * static_cast<int64_t>(sizeof(acc_t))));
  if (n_tb == 0 || n_sub == 0) return;
  at::parallel_for(0, n_tb * n_sub, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> rows_buf;
    std::vector<acc_t> tiles(static_cast<size_t>(MT * TT * OW));
    std::vector<Entry> local;
    const acc_t* base = nullptr;  // row m0 * TT of the token block
    int64_t base_tb = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tb = task / n_sub, s = task % n_sub;
      const int64_t m0 = tb * MT, m1 = std::min(n_mt, m0 + MT);
      if (tb != base_tb) {
        const int64_t r0 = m0 * TT, rows = (m1 - m0) * TT;
        if (kInPlace && r0 + rows <= T) {
          base = reinterpret_cast<const acc_t*>(A) + r0 * Kin;
        } else {
          rows_buf.resize(static_cast<size_t>(rows * Kin));
          copy_rows(A, T, Kin, r0, rows, rows_buf.data());
          base = rows_buf.data();
        }
        base_tb = tb;
      }
      const int64_t blk = s / subs, o = (s % subs) * OW;
      const int64_t ne = ptr[blk + 1] - ptr[blk];
      local.resize(static_cast<size_t>(ne));
      for (int64_t q = 0; q < ne; ++q) local[q] = Entry{ent[ptr[blk] + q].a, ent[ptr[blk] + q].b + o};
      for (int64_t q0 = 0; q0 < std::max<int64_t>(ne, 1); q0 += run) {
        const int64_t q1 = std::min(ne, q0 + run);
        for (int64_t m = m0; m < m1; ++m)
          micro<acc_t, NV, TT, false>(base + (m - m0) * TT * Kin, 1, Kin, panels, ldb, local.data() + q0,
                                      q1 - q0, RL, tiles.data() + (m - m0) * TT * OW, q0 > 0);
      }
      // (locals: the stores below could alias the lambda's captures, which would then be reloaded per row)
      scalar_t* const dst0 = out + s * OW;
      const int64_t ld = Nout;
      typename S::V b[NV];
      for (int v = 0; v < NV; ++v) b[v] = bias ? S::load(bias + s * OW + v * L) : S::zero();
      const acc_t* src = tiles.data();
      for (int64_t t = m0 * TT; t < std::min(T, m1 * TT); ++t, src += OW) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) S::store(dst0 + t * ld + v * L, S::load(src + v * L) + b[v]);
      }
    }
  });
}

// The kept blocks of mask (nbr, nbc), in row-major order (by_rows) or column-major order; ptr[g] is where
// block row (column) g's blocks start.
template <typename acc_t>
void kept_blocks(const acc_t* M, int64_t nbr, int64_t nbc, bool by_rows, std::vector<int64_t>& ptr,
                 std::vector<std::pair<int64_t, int64_t>>& kept) {
  const int64_t groups = by_rows ? nbr : nbc, inner = by_rows ? nbc : nbr;
  ptr.assign(static_cast<size_t>(groups + 1), 0);
  kept.clear();
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t h = 0; h < inner; ++h) {
      const int64_t i = by_rows ? g : h, j = by_rows ? h : g;
      if (M[i * nbc + j] != acc_t(0)) kept.emplace_back(i, j);
    }
    ptr[g + 1] = static_cast<int64_t>(kept.size());
  }
}

// Panel p = kept block (i, j) of W times its mask value, bo x bi (row-major) or transposed bi x bo.
template <typename scalar_t, typename acc_t>
void pack_panels(const scalar_t* W, int64_t K, const acc_t* M, int64_t nbc, int64_t bo, int64_t bi,
                 const std::vector<std::pair<int64_t, int64_t>>& kept, bool transpose, acc_t* P) {
  at::parallel_for(0, static_cast<int64_t>(kept.size()), 4, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t i = kept[p].first, j = kept[p].second;
      const acc_t m = M[i * nbc + j];
      acc_t* dst = P + p * bo * bi;
      for (int64_t n = 0; n < bo; ++n) {
        const scalar_t* src = W + (i * bo + n) * K + j * bi;
        if (transpose) {
          for (int64_t k = 0; k < bi; ++k) dst[k * bo + n] = static_cast<acc_t>(src[k]) * m;
        } else {
          for (int64_t k = 0; k < bi; ++k) dst[n * bi + k] = static_cast<acc_t>(src[k]) * m;
        }
      }
    }
  });
}

#define BERMO_ML_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

void check_blocked(const at::Tensor& w, const at::Tensor& mask, int64_t bo, int64_t bi) {
  TORCH_CHECK(bo > 0 && bi > 0 && bo % 16 == 0 && bi % 16 == 0,
              "bermo masked_linear: the block kernels take block sides that are multiples of 16, got (", bo, ", ",
              bi, ")");
  TORCH_CHECK(w.dim() == 2 && w.size(0) % bo == 0 && w.size(1) % bi == 0 && mask.size(0) == w.size(0) / bo &&
                  mask.size(1) == w.size(1) / bi,
              "bermo masked_linear: mask shape does not match the weight and block shape");
  TORCH_CHECK(w.is_contiguous() && mask.is_contiguous(), "bermo masked_linear: weight and mask must be contiguous");
}

}  // namespace

// out (T, N) = x (T, K) @ (W * expand(M)).T + bias, reading only W's kept blocks. bias: N values in the
// accumulation type, or empty. bo and bi are multiples of 16.
void ml_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& mask, const at::Tensor& bias, int64_t bo,
                int64_t bi, at::Tensor& out) {
  check_blocked(w, mask, bo, bi);
  const int64_t T = x.size(0), K = w.size(1), N = w.size(0), nbr = N / bo, nbc = K / bi;
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous() && x.size(1) == K && out.size(0) == T && out.size(1) == N,
              "bermo masked_linear: bad input or output shape");
  BERMO_ML_DISPATCH(x.scalar_type(), "bermo_ml_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(bias.numel() == 0 || (bias.numel() == N && bias.is_contiguous() &&
                                      bias.scalar_type() == c10::CppTypeToScalarType<acc_t>::value),
                "bermo masked_linear: bias must be N contiguous values in the accumulation type, or empty");
    const acc_t* M = mask.data_ptr<acc_t>();
    std::vector<int64_t> ptr;
    std::vector<std::pair<int64_t, int64_t>> kept;
    kept_blocks(M, nbr, nbc, true, ptr, kept);
    const int64_t nk = static_cast<int64_t>(kept.size());
    at::Tensor panels = at::empty({std::max<int64_t>(1, nk * bo * bi)}, mask.options());
    acc_t* P = panels.data_ptr<acc_t>();
    pack_panels(w.data_ptr<scalar_t>(), K, M, nbc, bo, bi, kept, /*transpose=*/true, P);
    std::vector<Entry> ent(static_cast<size_t>(nk));
    for (int64_t p = 0; p < nk; ++p) ent[p] = Entry{kept[p].second * bi, p * bo * bi};
    const acc_t* b = bias.numel() ? bias.data_ptr<acc_t>() : nullptr;
    with_tile_width<acc_t>(bo, [&](auto nv) {
      sparse_mm<scalar_t, acc_t, decltype(nv)::value>(x.data_ptr<scalar_t>(), T, K, ptr, ent, P, bo, bi, bo, b,
                                                        out.data_ptr<scalar_t>(), N);
    });
  });
}

// dx (T, K) = dy (T, N) @ (W * expand(M)), reading only W's kept blocks.
void ml_grad_input(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& mask, int64_t bo, int64_t bi,
                   at::Tensor& dx) {
  check_blocked(w, mask, bo, bi);
  const int64_t T = dy.size(0), K = w.size(1), N = w.size(0), nbr = N / bo, nbc = K / bi;
  TORCH_CHECK(dy.is_contiguous() && dx.is_contiguous() && dy.size(1) == N && dx.size(0) == T && dx.size(1) == K,
              "bermo masked_linear: bad gradient shape");
  BERMO_ML_DISPATCH(dy.scalar_type(), "bermo_ml_grad_input", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* M = mask.data_ptr<acc_t>();
    std::vector<int64_t> ptr;
    std::vector<std::pair<int64_t, int64_t>> kept;
    kept_blocks(M, nbr, nbc, false, ptr, kept);
    const int64_t nk = static_cast<int64_t>(kept.size());
    at::Tensor panels = at::empty({std::max<int64_t>(1, nk * bo * bi)}, mask.options());
    acc_t* P = panels.data_ptr<acc_t>();
    pack_panels(w.data_ptr<scalar_t>(), K, M, nbc, bo, bi, kept, /*transpose=*/false, P);
    std::vector<Entry> ent(static_cast<size_t>(nk));
    for (int64_t p = 0; p < nk; ++p) ent[p] = Entry{kept[p].first * bo, p * bo * bi};
    with_tile_width<acc_t>(bi, [&](auto nv) {
      sparse_mm<scalar_t, acc_t, decltype(nv)::value>(dy.data_ptr<scalar_t>(), T, N, ptr, ent, P, bi, bo, bi,
                                                        nullptr, dx.data_ptr<scalar_t>(), K);
    });
  });
}

// gw (N, K) = (dy^T @ x) * expand(M) on the kept blocks, zero elsewhere; dy (T, N) and x (T, K) in the
// accumulation type, gw in the weight's type. Tasks are kGradGroups runs of consecutive kept blocks (row-major,
// so a run shares dy's columns); a task walks the tokens in steps of kGradTokens, and within a step every tile of
// TR weight rows x OW columns of its blocks, so a step's slices of dy and x are read from L1 by all the tiles.
// Each value sums its tokens in token order, whatever the thread count.
void ml_grad_weight_kept(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mask, int64_t bo, int64_t bi,
                         at::Tensor& gw) {
  check_blocked(gw, mask, bo, bi);
  const int64_t T = dy.size(0), N = gw.size(0), K = gw.size(1), nbr = N / bo, nbc = K / bi;
  TORCH_CHECK(dy.is_contiguous() && x.is_contiguous() && gw.is_contiguous() && dy.size(1) == N && x.size(0) == T &&
                  x.size(1) == K && dy.scalar_type() == mask.scalar_type() && x.scalar_type() == mask.scalar_type(),
              "bermo masked_linear: bad grad_weight operands");
  BERMO_ML_DISPATCH(gw.scalar_type(), "bermo_ml_grad_weight_kept", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using S = Simd<acc_t>;
    constexpr int L = S::L;
    const acc_t* M = mask.data_ptr<acc_t>();
    const acc_t* D = dy.data_ptr<acc_t>();
    const acc_t* X = x.data_ptr<acc_t>();
    scalar_t* G = gw.data_ptr<scalar_t>();
    std::vector<int64_t> ptr;
    std::vector<std::pair<int64_t, int64_t>> kept;
    kept_blocks(M, nbr, nbc, true, ptr, kept);
    const int64_t nk = static_cast<int64_t>(kept.size());
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {  // zeros where the mask is zero
      for (int64_t n = begin; n < end; ++n)
        for (int64_t j = 0; j < nbc; ++j)
          if (M[(n / bo) * nbc + j] == acc_t(0)) std::fill_n(G + n * K + j * bi, bi, scalar_t(0));
    });
    if (nk == 0) return;
    with_tile_width<acc_t>(bi, [&](auto nv) {
      constexpr int NV = decltype(nv)::value, OW = NV * L, TR = kGradRows<NV>;
      const int64_t row_tiles = bo / TR, col_tiles = bi / OW, block = bo * bi;
      const int64_t per_group = (nk + kGradGroups - 1) / kGradGroups, groups = (nk + per_group - 1) / per_group;
      at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> acc;
        const Entry e{0, 0};
        for (int64_t grp = begin; grp < end; ++grp) {
          const int64_t p0 = grp * per_group, p1 = std::min(nk, p0 + per_group);
          acc.resize(static_cast<size_t>((p1 - p0) * block));  // per block: its tiles, each TR x OW
          for (int64_t t0 = 0; t0 < std::max<int64_t>(T, 1); t0 += kGradTokens) {
            const int64_t tn = std::min(kGradTokens, T - t0);
            for (int64_t p = p0; p < p1; ++p) {
              const int64_t i = kept[p].first, j = kept[p].second;
              for (int64_t rt = 0; rt < row_tiles; ++rt)
                for (int64_t ct = 0; ct < col_tiles; ++ct)
                  micro<acc_t, NV, TR, true>(D + t0 * N + i * bo + rt * TR, N, 1, X + t0 * K + j * bi + ct * OW, K,
                                             &e, 1, std::max<int64_t>(tn, 0),
                                             acc.data() + (p - p0) * block + (rt * col_tiles + ct) * TR * OW, t0 > 0);
            }
          }
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t i = kept[p].first, j = kept[p].second;
            const typename S::V m = S::splat(M[i * nbc + j]);
            for (int64_t rt = 0; rt < row_tiles; ++rt)
              for (int64_t ct = 0; ct < col_tiles; ++ct) {
                const acc_t* src = acc.data() + (p - p0) * block + (rt * col_tiles + ct) * TR * OW;
                for (int t = 0; t < TR; ++t)
                  for (int v = 0; v < NV; ++v)
                    S::store(G + (i * bo + rt * TR + t) * K + j * bi + ct * OW + v * L,
                             S::load(src + t * OW + v * L) * m);
              }
          }
        }
      });
    });
  });
}

// From G = dy^T @ x (N, K, accumulation type): gw = G * expand(M) in the weight's type and, when gm is not
// empty, gm = blocksum(G * W) (N / bo, K / bi). Each block's sum runs over fixed chunks of at most 64 of its
// rows (the chunk's rows in order, 16 or 8 lanes along each row where bi allows), and the chunks' sums are
// added in order: the same order for any thread count.
void ml_grad_epilogue(const at::Tensor& g, const at::Tensor& w, const at::Tensor& mask, int64_t bo, int64_t bi,
                      at::Tensor& gw, at::Tensor& gm) {
  TORCH_CHECK(bo > 0 && bi > 0 && w.size(0) % bo == 0 && w.size(1) % bi == 0 && mask.size(0) == w.size(0) / bo &&
                  mask.size(1) == w.size(1) / bi,
              "bermo masked_linear: mask shape does not match the weight and block shape");
  TORCH_CHECK(g.is_contiguous() && w.is_contiguous() && mask.is_contiguous() && gw.is_contiguous() &&
                  g.sizes() == w.sizes() && gw.sizes() == w.sizes() && g.scalar_type() == mask.scalar_type(),
              "bermo masked_linear: bad grad_weight epilogue operands");
  const bool need_gm = gm.numel() > 0;
  TORCH_CHECK(!need_gm || (gm.is_contiguous() && gm.sizes() == mask.sizes() && gm.scalar_type() == mask.scalar_type()),
              "bermo masked_linear: bad grad_mask buffer");
  const int64_t N = w.size(0), K = w.size(1), nbr = N / bo, nbc = K / bi;
  int64_t R = std::min<int64_t>(bo, 64);
  while (bo % R) --R;
  const int64_t n_chunks = N / R, per_block = bo / R;
  BERMO_ML_DISPATCH(w.scalar_type(), "bermo_ml_grad_epilogue", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using S = Simd<acc_t>;
    using V = typename S::V;
    constexpr int L = S::L;
    const acc_t* Gp = g.data_ptr<acc_t>();
    const scalar_t* Wp = w.data_ptr<scalar_t>();
    const acc_t* M = mask.data_ptr<acc_t>();
    scalar_t* GW = gw.data_ptr<scalar_t>();
    acc_t* GM = need_gm ? gm.data_ptr<acc_t>() : nullptr;
    std::vector<acc_t> partial(need_gm && per_block > 1 ? static_cast<size_t>(n_chunks * nbc) : 0);
    const bool vec = bi % L == 0;
    at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<V> lanes(vec && need_gm ? static_cast<size_t>(nbc) : 0);
      std::vector<acc_t> sums(need_gm ? static_cast<size_t>(nbc) : 0);
      for (int64_t c = begin; c < end; ++c) {
        const int64_t i = c * R / bo;
        const acc_t* Mi = M + i * nbc;
        std::fill(lanes.begin(), lanes.end(), S::zero());
        std::fill(sums.begin(), sums.end(), acc_t(0));
        for (int64_t n = c * R; n < c * R + R; ++n) {
          const acc_t* gr = Gp + n * K;
          const scalar_t* wr = Wp + n * K;
          scalar_t* out = GW + n * K;
          if (vec) {
            for (int64_t j = 0; j < nbc; ++j) {
              const V m = S::splat(Mi[j]);
              V s = need_gm ? lanes[j] : S::zero();
              for (int64_t k = j * bi; k < j * bi + bi; k += L) {
                const V gv = S::load(gr + k);
                S::store(out + k, gv * m);
                if (need_gm) s = S::fma(gv, S::load(wr + k), s);
              }
              if (need_gm) lanes[j] = s;
            }
          } else if (bi == 1) {
            for (int64_t k = 0; k < K; ++k) out[k] = static_cast<scalar_t>(gr[k] * Mi[k]);
            if (need_gm)
              for (int64_t k = 0; k < K; ++k) sums[k] += gr[k] * static_cast<acc_t>(wr[k]);
          } else {
            for (int64_t j = 0; j < nbc; ++j) {
              const acc_t m = Mi[j];
              acc_t s = 0;
              for (int64_t k = j * bi; k < j * bi + bi; ++k) {
                out[k] = static_cast<scalar_t>(gr[k] * m);
                s += gr[k] * static_cast<acc_t>(wr[k]);
              }
              if (need_gm) sums[j] += s;
            }
          }
        }
        if (!need_gm) continue;
        if (vec)
          for (int64_t j = 0; j < nbc; ++j) sums[j] = S::hsum(lanes[j]);
        acc_t* dst = per_block > 1 ? partial.data() + c * nbc : GM + i * nbc;
        std::copy(sums.begin(), sums.end(), dst);
      }
    });
    if (need_gm && per_block > 1) {
      at::parallel_for(0, nbr * nbc, 64, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t i = b / nbc, j = b % nbc;
          acc_t s = 0;
          for (int64_t c = i * per_block; c < (i + 1) * per_block; ++c) s += partial[c * nbc + j];
          GM[b] = s;
        }
      });
    }
  });
}

// MKL's thread-local thread count (the C interface; mkl_service.h maps mkl_set_num_threads_local to it), where
// torch's BLAS is MKL (libtorch_cpu exports it); null otherwise.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace {
// Makes BLAS calls on this thread single-threaded while alive. Inside a parallel region MKL and oneDNN (torch's
// 16-bit products) still plan their work for the global thread count (MKL, for one, splits the sums of a long
// reduction differently for 1 and 2 threads, then runs the parts one after another), so this thread's counts
// are set to one explicitly: MKL's thread-local count, and OpenMP's for the current task (what oneDNN reads).
struct SequentialBlas {
  int mkl_previous = 0, omp_previous = 1;
  SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) mkl_previous = MKL_Set_Num_Threads_Local(1);
#ifdef _OPENMP
    omp_previous = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
  }
  ~SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(mkl_previous);
#ifdef _OPENMP
    omp_set_num_threads(omp_previous);
#endif
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;
};
}  // namespace

// out (R, C) = [bias +] a (R, Kd) @ b (Kd, C) for the launcher's dense paths, in tiles fixed by the shape, each
// by one single-threaded BLAS call, so the result does not depend on the thread count. One output dimension is
// cut, the one whose tiles share the smaller operand (row tiles all read b, column tiles all read a, and each
// call packs what it reads), into an even number of tiles at least min_tile wide, or two halves when it is
// shorter than twice that but at least kMinHalf (256), or not at all when shorter still. Fewer, larger tiles are faster: on the 1024-token
// FFN products on two threads, 1024-wide tiles matched MKL's own threading (13.9 vs 14.5 ms forward, 3072 x 768)
// where 512-wide ones were 4% slower. a and b may be any strided views; out is contiguous; bias is C values or
// empty.
void ml_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias, at::Tensor& out, int64_t min_tile) {
  const int64_t R = a.size(0), C = b.size(1);
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && out.is_contiguous() && out.size(0) == R &&
                  out.size(1) == C && a.scalar_type() == out.scalar_type() && b.scalar_type() == out.scalar_type(),
              "bermo masked_linear: bad matmul operands");
  if (R == 0 || C == 0) return;
  const bool split_rows = C <= R;
  const int64_t dim = split_rows ? R : C;
  min_tile = std::max<int64_t>(1, min_tile);
  int64_t n = dim / min_tile;
  // a dimension under twice min_tile is halved when it is at least kMinHalf long: a 768 x 768 weight gradient
  // (the attention layers' G = dY^T X) in one call left the second core idle (0.75x eager on the train step)
  constexpr int64_t kMinHalf = 256;
  if (n <= 1) n = dim >= kMinHalf ? 2 : 1;
  n = std::max<int64_t>(1, n - n % 2);
  const int64_t nr = split_rows ? n : 1, nc = split_rows ? 1 : n;
  const bool has_bias = bias.numel() > 0;
  at::parallel_for(0, nr * nc, 1, [&](int64_t begin, int64_t end) {
    SequentialBlas sequential;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ti = task / nc, tj = task % nc;
      const int64_t r0 = R * ti / nr, r1 = R * (ti + 1) / nr, c0 = C * tj / nc, c1 = C * (tj + 1) / nc;
      at::Tensor o = out.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0);
      const at::Tensor ar = a.narrow(0, r0, r1 - r0), bc = b.narrow(1, c0, c1 - c0);
      if (has_bias) {
        o.copy_(bias.narrow(0, c0, c1 - c0).unsqueeze(0).expand({r1 - r0, c1 - c0}));
        o.addmm_(ar, bc);
      } else {
        at::mm_out(o, ar, bc);
      }
    }
  });
}

// Whether ml_mm_bf16 can run: torch's oneDNN batch-reduce GEMM micro-kernel for bfloat16 (AMX or AVX-512
// bfloat16 instructions), exported by libtorch_cpu since torch 2.5.
bool ml_has_bf16_brgemm() {
#if BERMO_ML_BRGEMM
  return at::native::cpublas::could_pack(at::kBFloat16);
#else
  return false;
#endif
}

// out (M, N) float32 = a (M, Kd) @ b (Kd, N), both bfloat16 and contiguous, Kd even, N a multiple of 16:
// bfloat16 products summed in float32 (the products are exact in float32), as a float32 product of the
// widened operands would, but on the bfloat16 units (5x faster than MKL's float32 product with AMX). b is
// packed once into column blocks of 64 (or 32, 16) in the micro-kernel's pair-interleaved layout; each task
// is one call for a tile of 128 rows x one block, so the result does not depend on the thread count.
void ml_mm_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  TORCH_CHECK(ml_has_bf16_brgemm(), "bermo masked_linear: no bfloat16 batch-reduce GEMM on this CPU / torch");
#if BERMO_ML_BRGEMM
  const int64_t M = a.size(0), Kd = a.size(1), N = b.size(1);
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
                  out.scalar_type() == at::kFloat && a.is_contiguous() && b.is_contiguous() && out.is_contiguous() &&
                  b.size(0) == Kd && out.size(0) == M && out.size(1) == N && Kd % 2 == 0 && N % 16 == 0,
              "bermo masked_linear: bad bfloat16 matmul operands");
  if (M == 0 || N == 0) return;
  if (Kd == 0) {
    out.zero_();
    return;
  }
  constexpr int64_t kRows = 128;
  const int64_t nb = N % 64 == 0 ? 64 : N % 32 == 0 ? 32 : 16, blocks = N / nb, row_tiles = (M + kRows - 1) / kRows;
  at::Tensor packed = at::empty({blocks, Kd * nb}, b.options());
  const at::BFloat16* bp = b.data_ptr<at::BFloat16>();
  at::BFloat16* pp = packed.data_ptr<at::BFloat16>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      at::native::cpublas::pack(Kd, nb, N, nb, at::kBFloat16, at::kBFloat16, bp + j * nb, pp + j * Kd * nb);
  });
  const at::BFloat16* ap = a.data_ptr<at::BFloat16>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, row_tiles * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m0 = (task / blocks) * kRows, j = task % blocks;
      at::native::cpublas::brgemm(std::min(kRows, M - m0), nb, Kd, Kd, nb, N, /*add_C=*/false, ap + m0 * Kd,
                                  pp + j * Kd * nb, op + m0 * N + j * nb, /*is_vnni=*/true);
    }
    at::native::cpublas::brgemm_release(true);
  });
#endif
}

// (number of nonzero values, whether every value is 0 or 1) of a contiguous float / double mask, in one pass:
// what the launcher's plan needs to know of a (1, 1) mask as large as the weight.
std::tuple<int64_t, bool> ml_mask_stats(const at::Tensor& mask) {
  TORCH_CHECK(mask.is_contiguous(), "bermo masked_linear: mask must be contiguous");
  const int64_t n = mask.numel();
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> counts(static_cast<size_t>(chunks), 0);
  std::vector<uint8_t> binary(static_cast<size_t>(chunks), 1);
  AT_DISPATCH_FLOATING_TYPES(mask.scalar_type(), "bermo_ml_mask_stats", [&] {
    const scalar_t* p = mask.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        int64_t count = 0, other = 0;
        for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
          count += p[i] != scalar_t(0);
          other += (p[i] != scalar_t(0)) & (p[i] != scalar_t(1));
        }
        counts[c] = count;
        binary[c] = other == 0;
      }
    });
  });
  int64_t count = 0;
  bool all_binary = true;
  for (int64_t c = 0; c < chunks; ++c) {
    count += counts[c];
    all_binary = all_binary && binary[c];
  }
  return {count, all_binary};
}

void register_masked_linear(pybind11::module_& m) {
  m.def("ml_forward", &ml_forward);
  m.def("ml_grad_input", &ml_grad_input);
  m.def("ml_grad_weight_kept", &ml_grad_weight_kept);
  m.def("ml_grad_epilogue", &ml_grad_epilogue);
  m.def("ml_mm", &ml_mm);
  m.def("ml_mask_stats", &ml_mask_stats);
  m.def("ml_has_bf16_brgemm", &ml_has_bf16_brgemm);
  m.def("ml_mm_bf16", &ml_mm_bf16);
}
