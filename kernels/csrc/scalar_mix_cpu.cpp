// Fused CPU kernels for the scalar mix; the same four passes as kernels/scalar_mix.py (Triton).
//
// Every layer is a (rows, cols) view with a shared row stride (kernels/layout.py). Work is split into tiles
// of at most kTile elements whose boundaries depend only on the shape, never on the thread count, and every
// tile writes its own partial sums: the host reduces them in a fixed order, so results are deterministic.
// A tile of the output (or of the output gradient) stays in cache while the layers stream through it, so
// each layer is read once per pass. Accumulation is in at::opmath_type (float for 16-bit inputs).
#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kTile = 16384;

struct Tiles {
  int64_t rows, cols, stride, col_block, row_block, n_col_blocks, count;
  Tiles(int64_t r, int64_t c, int64_t s) : rows(r), cols(c), stride(s) {
    col_block = std::max<int64_t>(1, std::min<int64_t>(cols, kTile));
    row_block = std::max<int64_t>(1, kTile / col_block);
    n_col_blocks = (cols + col_block - 1) / col_block;
    count = ((rows + row_block - 1) / row_block) * n_col_blocks;
  }
  // f(tile, r0, r1, c0, c1, scratch) for every tile, in parallel; scratch holds kTile accumulators.
  template <typename acc_t, typename F>
  void run(F&& f) const {
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(static_cast<size_t>(kTile));
      for (int64_t t = begin; t < end; ++t) {
        const int64_t rb = t / n_col_blocks, cb = t % n_col_blocks;
        const int64_t r0 = rb * row_block, c0 = cb * col_block;
        f(t, r0, std::min(rows, r0 + row_block), c0, std::min(cols, c0 + col_block), scratch.data());
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

#define BERMO_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace

// out = sum_k coef[k] * xs[k] + bias; out is contiguous (rows, cols).
void mix_forward(const std::vector<at::Tensor>& xs, const at::Tensor& coef, const at::Tensor& bias,
                 at::Tensor& out, int64_t rows, int64_t cols, int64_t stride) {
  Tiles tiles(rows, cols, stride);
  BERMO_DISPATCH(out.scalar_type(), "bermo_mix_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const acc_t* a = coef.data_ptr<acc_t>();
    const acc_t b = *bias.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t L = static_cast<int64_t>(x.size());
    tiles.run<acc_t>([&](int64_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1, acc_t* acc) {
      const int64_t w = c1 - c0;
      for (int64_t r = r0; r < r1; ++r) {
        acc_t* ar = acc + (r - r0) * w;
_Pragma("omp simd")
        for (int64_t c = 0; c < w; ++c) ar[c] = b;
      }
      for (int64_t k = 0; k < L; ++k) {
        const acc_t ak = a[k];
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* xr = x[k] + r * stride + c0;
          acc_t* ar = acc + (r - r0) * w;
_Pragma("omp simd")
          for (int64_t c = 0; c < w; ++c) ar[c] += ak * static_cast<acc_t>(xr[c]);
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t* ar = acc + (r - r0) * w;
        scalar_t* orow = o + r * cols + c0;
_Pragma("omp simd")
        for (int64_t c = 0; c < w; ++c) orow[c] = static_cast<scalar_t>(ar[c]);
      }
    });
  });
}

// grads[k] = coef[k] * g where grads[k] is non-empty; when partials is non-empty (tiles, L + 1), its row t
// gets [sum g * (x_k - center_k) for k] + [sum g] over tile t.
void mix_backward(const at::Tensor& grad_out, const std::vector<at::Tensor>& xs, std::vector<at::Tensor> grads,
                  const at::Tensor& coef, const at::Tensor& center, at::Tensor& partials, int64_t rows,
                  int64_t cols, int64_t stride) {
  Tiles tiles(rows, cols, stride);
  const bool dots = partials.numel() > 0;
  BERMO_DISPATCH(grad_out.scalar_type(), "bermo_mix_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const auto gx = out_bases<scalar_t>(grads);
    const acc_t* a = coef.data_ptr<acc_t>();
    const acc_t* mu = center.data_ptr<acc_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    acc_t* part = dots ? partials.data_ptr<acc_t>() : nullptr;
    const int64_t L = static_cast<int64_t>(x.size());
    tiles.run<acc_t>([&](int64_t t, int64_t r0, int64_t r1, int64_t c0, int64_t c1, acc_t* g) {
      const int64_t w = c1 - c0;
      acc_t gsum = 0;
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* src = go + r * cols + c0;
        acc_t* gr = g + (r - r0) * w;
_Pragma("omp simd reduction(+ : gsum)")
        for (int64_t c = 0; c < w; ++c) {
          gr[c] = static_cast<acc_t>(src[c]);
          gsum += gr[c];
        }
      }
      for (int64_t k = 0; k < L; ++k) {
        const acc_t ak = a[k], mk = mu[k];
        acc_t dot = 0;
        for (int64_t r = r0; r < r1; ++r) {
          const acc_t* gr = g + (r - r0) * w;
          if (dots) {
            const scalar_t* xr = x[k] + r * stride + c0;
_Pragma("omp simd reduction(+ : dot)")
            for (int64_t c = 0; c < w; ++c) dot += gr[c] * (static_cast<acc_t>(xr[c]) - mk);
          }
          if (gx[k]) {
            scalar_t* dst = gx[k] + r * cols + c0;
_Pragma("omp simd")
            for (int64_t c = 0; c < w; ++c) dst[c] = static_cast<scalar_t>(ak * gr[c]);
          }
        }
        if (dots) part[t * (L + 1) + k] = dot;
      }
      if (dots) part[t * (L + 1) + L] = gsum;
    });
  });
}

// partials (tiles, 2L + 1): [count, mean_k for k, M2_k for k] over each tile's unmasked rows.
void ln_stats(const std::vector<at::Tensor>& xs, const at::Tensor& row_mask, at::Tensor& partials, int64_t rows,
              int64_t cols, int64_t stride) {
  Tiles tiles(rows, cols, stride);
  BERMO_DISPATCH(xs[0].scalar_type(), "bermo_ln_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const acc_t* m = row_mask.data_ptr<acc_t>();
    acc_t* part = partials.data_ptr<acc_t>();
    const int64_t L = static_cast<int64_t>(x.size());
    tiles.run<acc_t>([&](int64_t t, int64_t r0, int64_t r1, int64_t c0, int64_t c1, acc_t*) {
      const int64_t w = c1 - c0;
      acc_t n = 0;
      for (int64_t r = r0; r < r1; ++r) n += m[r] * static_cast<acc_t>(w);
      acc_t* p = part + t * (2 * L + 1);
      p[0] = n;
      for (int64_t k = 0; k < L; ++k) {
        acc_t s = 0;
        for (int64_t r = r0; r < r1; ++r) {
          if (m[r] == 0) continue;
          const scalar_t* xr = x[k] + r * stride + c0;
_Pragma("omp simd reduction(+ : s)")
          for (int64_t c = 0; c < w; ++c) s += static_cast<acc_t>(xr[c]);
        }
        const acc_t mean = n > 0 ? s / n : acc_t(0);
        acc_t m2 = 0;
        for (int64_t r = r0; r < r1; ++r) {
          if (m[r] == 0) continue;
          const scalar_t* xr = x[k] + r * stride + c0;
_Pragma("omp simd reduction(+ : m2)")
          for (int64_t c = 0; c < w; ++c) {
            const acc_t d = static_cast<acc_t>(xr[c]) - mean;
            m2 += d * d;
          }
        }
        p[1 + k] = mean;
        p[1 + L + k] = m2;
      }
    });
  });
}

// grads[k] = coef_k * g - m * (alpha_k + beta_k * (x_k - center_k)) where grads[k] is non-empty.
void ln_backward(const at::Tensor& grad_out, const std::vector<at::Tensor>& xs, std::vector<at::Tensor> grads,
                 const at::Tensor& row_mask, const at::Tensor& coef, const at::Tensor& alpha,
                 const at::Tensor& beta, const at::Tensor& center, int64_t rows, int64_t cols, int64_t stride) {
  Tiles tiles(rows, cols, stride);
  BERMO_DISPATCH(grad_out.scalar_type(), "bermo_ln_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto x = bases<scalar_t>(xs);
    const auto gx = out_bases<scalar_t>(grads);
    const acc_t *m = row_mask.data_ptr<acc_t>(), *a = coef.data_ptr<acc_t>(), *al = alpha.data_ptr<acc_t>(),
                *be = beta.data_ptr<acc_t>(), *mu = center.data_ptr<acc_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    const int64_t L = static_cast<int64_t>(x.size());
    tiles.run<acc_t>([&](int64_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1, acc_t*) {
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mix_forward", &mix_forward);
  m.def("mix_backward", &mix_backward);
  m.def("ln_stats", &ln_stats);
  m.def("ln_backward", &ln_backward);
  m.def("num_tiles", &num_tiles);
}
