// Masked linear CPU kernels (placeholder until the kernels land).
#include <torch/extension.h>

void register_masked_linear(pybind11::module_& m) {}
