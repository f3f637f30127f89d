"""The AllenNLP surface of bermo.nn.ScalarMix: constructor, parameters, checkpoints and every error."""
import warnings

import pytest
import torch

import bermo
from bermo import BackendUnavailableError, ConfigurationError, ScalarMix
from bermo import backends
from helpers import BACKENDS, needs_cpu_kernels


def test_parameters_match_allennlp():
    m = ScalarMix(4)
    assert isinstance(m.scalar_parameters, torch.nn.ParameterList)
    for p in m.scalar_parameters:
        assert p.dtype == torch.float32 and p.shape == (1,) and p.item() == 0.0 and p.requires_grad
    assert m.gamma.dtype == torch.float32 and m.gamma.shape == (1,) and m.gamma.item() == 1.0
    # Same keys, and the same order as AllenNLP's module (its own parameter gamma before the ParameterList).
    assert list(m.state_dict()) == ["gamma", "scalar_parameters.0", "scalar_parameters.1", "scalar_parameters.2",
                                    "scalar_parameters.3"]
    m2 = ScalarMix(3, initial_scalar_parameters=[1.0, -2.0, 0.5])
    assert [p.item() for p in m2.scalar_parameters] == [1.0, -2.0, 0.5]


def test_trainable_false_freezes_everything_gamma_included():
    m = ScalarMix(3, trainable=False)
    assert all(not p.requires_grad for p in m.parameters()) and not m.gamma.requires_grad


def test_allennlp_checkpoint_loads_and_round_trips(tmp_path):
    # What AllenNLP's ScalarMix(3).state_dict() holds: float32 shape-(1,) tensors under these keys.
    allennlp_state = {"scalar_parameters.0": torch.tensor([0.25]), "scalar_parameters.1": torch.tensor([-1.5]),
                      "scalar_parameters.2": torch.tensor([2.0]), "gamma": torch.tensor([0.75])}
    m = ScalarMix(3)
    assert m.load_state_dict(allennlp_state) is not None
    assert [p.item() for p in m.scalar_parameters] == [0.25, -1.5, 2.0] and m.gamma.item() == 0.75
    path = tmp_path / "mix.pt"
    torch.save(m.state_dict(), path)
    m2 = ScalarMix(3)
    m2.load_state_dict(torch.load(path))
    for key, value in m.state_dict().items():
        assert torch.equal(value, m2.state_dict()[key]) and value.dtype == torch.float32
    xs = [torch.randn(2, 3, 8) for _ in range(3)]
    assert torch.equal(m(xs), m2(xs))
    expected = 0.75 * sum(w * x for w, x in zip(torch.softmax(torch.tensor([0.25, -1.5, 2.0]), 0), xs))
    torch.testing.assert_close(m(xs), expected)


def test_tuple_input_like_hf_hidden_states():
    xs = tuple(torch.randn(2, 3, 8) for _ in range(3))
    m = ScalarMix(3, backend="reference")
    torch.testing.assert_close(ScalarMix(3)(xs), m(list(xs)))


def test_half_inputs_keep_their_dtype():
    for dtype in (torch.float16, torch.bfloat16):
        assert ScalarMix(2)([torch.randn(2, 4).to(dtype) for _ in range(2)]).dtype == dtype


# ---------------------------------------------------------------------------------------------- errors
def test_wrong_number_of_tensors_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="2 tensors were passed, but the module was initialized to mix 3 tensors"):
        ScalarMix(3)([torch.randn(2, 4)] * 2)
    with pytest.raises(ConfigurationError, match="4 tensors were passed"):
        ScalarMix(3)(torch.randn(4, 2, 4))


def test_wrong_number_of_initial_scalars_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match=r"Length of initial_scalar_parameters \[1.0, 2.0\] differs from mixture_size 3"):
        ScalarMix(3, initial_scalar_parameters=[1.0, 2.0])


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_mixture_size(size):
    with pytest.raises(ConfigurationError, match="mixture_size"):
        ScalarMix(size)


@pytest.mark.parametrize("backend,device", BACKENDS)
class TestErrors:
    def test_layer_norm_without_mask(self, backend, device):
        with pytest.raises(ValueError, match="do_layer_norm=True needs a mask"):
            ScalarMix(2, do_layer_norm=True, backend=backend).to(device)([torch.randn(2, 3, 4, device=device)] * 2)

    def test_differing_shapes(self, backend, device):
        with pytest.raises(ValueError, match=r"same shape; tensors\[0\] has shape \(2, 3\) but tensors\[1\] has shape \(2, 4\)"):
            ScalarMix(2, backend=backend)([torch.randn(2, 3, device=device), torch.randn(2, 4, device=device)])

    def test_differing_dtypes(self, backend, device):
        with pytest.raises(ValueError, match="same dtype"):
            ScalarMix(2, backend=backend)([torch.randn(2, 3, device=device),
                                           torch.randn(2, 3, device=device, dtype=torch.float64)])

    def test_differing_devices(self, backend, device):
        with pytest.raises(ValueError, match="same device"):
            ScalarMix(2, backend=backend)([torch.randn(2, 3, device=device), torch.randn(2, 3, device="meta")])

    def test_empty_inputs(self, backend, device):
        with pytest.raises(ValueError, match="no tensors to mix"):
            ScalarMix(1, backend=backend)([])
        with pytest.raises(ValueError, match="no tensors to mix"):
            bermo.scalar_mix(torch.randn(0, 3, device=device), torch.zeros(0, device=device),
                             torch.ones(1, device=device), backend=backend)

    def test_integer_inputs(self, backend, device):
        with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
            ScalarMix(2, backend=backend)([torch.ones(2, 3, dtype=torch.int64, device=device)] * 2)

    def test_not_a_tensor(self, backend, device):
        with pytest.raises(TypeError, match=r"tensors\[1\] is a list"):
            ScalarMix(2, backend=backend)([torch.randn(2, 3, device=device), [1.0, 2.0]])

    def test_mask_shape_mismatch(self, backend, device):
        xs = [torch.randn(2, 3, 4, device=device)] * 2
        with pytest.raises(ValueError, match=r"mask shape \(2, 4\) does not match the tensors' shape \(2, 3, 4\)"):
            ScalarMix(2, do_layer_norm=True, backend=backend).to(device)(xs, torch.ones(2, 4, dtype=torch.bool, device=device))

    def test_float_mask(self, backend, device):
        xs = [torch.randn(2, 3, 4, device=device)] * 2
        with pytest.raises(TypeError, match="mask must be bool or integer"):
            ScalarMix(2, do_layer_norm=True, backend=backend).to(device)(xs, torch.ones(2, 3, device=device))

    def test_integer_mask_not_zero_one(self, backend, device):
        xs = [torch.randn(2, 3, 4, device=device)] * 2
        with pytest.raises(ValueError, match="only 0 and 1"):
            ScalarMix(2, do_layer_norm=True, backend=backend).to(device)(xs, torch.full((2, 3), 2, device=device))

    def test_all_masked(self, backend, device):
        xs = [torch.randn(2, 3, 4, device=device)] * 2
        with pytest.raises(ValueError, match="masks every position"):
            ScalarMix(2, do_layer_norm=True, backend=backend).to(device)(xs, torch.zeros(2, 3, dtype=torch.bool, device=device))

    def test_parameters_on_another_device(self, backend, device):
        with pytest.raises(ValueError, match=r"scalar parameters are on meta but the tensors are on"):
            ScalarMix(2, backend=backend).to("meta")([torch.randn(2, 3, device=device)] * 2)


# ---------------------------------------------------------------------------------------------- backends
def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown bermo backend 'cuda'.*auto, triton, cpu, reference"):
        ScalarMix(2, backend="cuda")
    monkeypatch.setenv("BERMO_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"'fast' \(from the \$BERMO_BACKEND\)"):
        ScalarMix(2)([torch.randn(2, 3)] * 2)


@needs_cpu_kernels
def test_auto_picks_cpu_on_cpu_tensors():
    assert backends.resolve(None, torch.device("cpu"), "ScalarMix") == "cpu"
    assert backends.resolve("auto", torch.device("meta"), "ScalarMix") == "reference"


@needs_cpu_kernels
def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv("BERMO_BACKEND", "reference")
    assert backends.resolve(None, torch.device("cpu"), "ScalarMix") == "reference"
    # The module argument wins over the environment.
    assert backends.resolve("cpu", torch.device("cpu"), "ScalarMix") == "cpu"


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="'cpu' cannot run ScalarMix on meta tensors: it needs CPU tensors"):
        backends.resolve("cpu", torch.device("meta"), "ScalarMix")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="'triton' cannot run ScalarMix on cpu tensors: it needs CUDA"):
        ScalarMix(2, backend="triton")([torch.randn(2, 3)] * 2)


def test_cpu_build_failure_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(backends, "_cpu_build_error", lambda: "the C++ extension could not be built (test)")
    backends._warn_fallback.cache_clear()
    xs = [torch.randn(2, 3) for _ in range(2)]
    with pytest.warns(RuntimeWarning, match="falling back to the reference backend.*could not be built"):
        out = ScalarMix(2)(xs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScalarMix(2)(xs)  # the second call warns no more
    torch.testing.assert_close(out, ScalarMix(2, backend="reference")(xs))
    with pytest.raises(BackendUnavailableError, match="could not be built"):
        ScalarMix(2, backend="cpu")(xs)
    backends._warn_fallback.cache_clear()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float64_module_gets_float64_parameter_gradients(backend, device):
    m = ScalarMix(3, backend=backend).to(device).double()
    xs = [torch.randn(2, 5, dtype=torch.float64, device=device) for _ in range(3)]
    m(xs).sum().backward()
    assert all(p.grad.dtype == torch.float64 for p in m.parameters())


# ---------------------------------------------------------------------------------------------- CUDA choice
# Backend resolution needs no GPU: these run everywhere, with CUDA's availability patched where it matters.
def test_auto_picks_triton_for_cuda_tensors_without_the_interpreter(monkeypatch):
    """On CUDA tensors auto is Triton whether or not TRITON_INTERPRET is set (a GPU user must never silently
    get the slow reference), provided Triton imports."""
    if backends._triton_import_error() is not None:
        pytest.skip("Triton is not importable here")
    for interpret in ("0", "1"):
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
        assert backends.resolve(None, torch.device("cuda"), "ScalarMix") == "triton"
        assert backends.resolve(None, torch.device("cuda", 0), "ScalarMix") == "triton"
        assert backends.resolve("triton", torch.device("cuda"), "ScalarMix") == "triton"


@needs_cpu_kernels
def test_auto_follows_the_tensors_device_not_cuda_availability(monkeypatch):
    """CPU tensors on a machine with a GPU still get the C++ kernel, and CUDA tensors get Triton, whatever
    torch.cuda.is_available() says."""
    for available in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert backends.resolve(None, torch.device("cpu"), "ScalarMix") == "cpu"
        if backends._triton_import_error() is None:
            assert backends.resolve(None, torch.device("cuda"), "ScalarMix") == "triton"


def test_cpu_backend_refuses_cuda_tensors():
    with pytest.raises(BackendUnavailableError, match="'cpu' cannot run ScalarMix on cuda tensors"):
        backends.resolve("cpu", torch.device("cuda"), "ScalarMix")


def test_triton_missing_on_cuda_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(backends, "_triton_import_error", lambda: "Triton is not installed")
    backends._warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="falling back to the reference backend on cuda tensors"):
        assert backends.resolve(None, torch.device("cuda"), "ScalarMix") == "reference"
    backends._warn_fallback.cache_clear()
