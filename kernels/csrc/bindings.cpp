// The one Python module of bermo's C++ kernels: every kernels/csrc/*.cpp is compiled into it, and each op's
// file adds its functions through its register_* function (one build, one cache, one availability check).
#include <torch/extension.h>

void register_scalar_mix(pybind11::module_& m);
void register_masked_linear(pybind11::module_& m);
void register_block_sparse_linear(pybind11::module_& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_scalar_mix(m);
  register_masked_linear(m);
  register_block_sparse_linear(m);
}
