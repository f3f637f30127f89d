"""Triton launches on the tensors' GPU, not on whichever CUDA device is current (a kernel launched on device 0
with cuda:1 pointers faults or reads unordered memory). Every launcher the ops call is guarded."""
import pytest
import torch

from conftest import HAS_TRITON

LAUNCHERS = {
    "scalar_mix_triton": ["mix_forward", "mix_backward", "ln_stats", "ln_backward"],
    "masked_linear_triton": ["kept_tiles", "sparse_mm", "masked_weight", "forward", "grad_input", "grad_weight"],
    "block_sparse_linear_triton": ["forward", "forward_with"],
}


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("module", sorted(LAUNCHERS))
def test_every_triton_launcher_runs_on_its_tensors_device(module):
    import importlib

    mod = importlib.import_module(f"bermo.kernels.{module}")
    for name in LAUNCHERS[module]:
        assert getattr(getattr(mod, name), "on_tensor_device", False), f"{module}.{name} is not guarded"


def test_tensor_device_finds_the_first_tensor():
    from bermo.kernels.device_guard import tensor_device

    meta = torch.empty(1, device="meta")
    assert tensor_device((None, 3, meta, torch.empty(1))) == torch.device("meta")
    assert tensor_device(([meta, torch.empty(1)], torch.empty(1))) == torch.device("meta")
    assert tensor_device(([], 1.0)) is None


def test_guard_switches_to_the_tensors_device(monkeypatch):
    """The guard enters ``torch.cuda.device(t.device)`` exactly when the tensor's device is not current."""
    from bermo.kernels import device_guard

    entered = []

    class Recorder:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Recorder)
    monkeypatch.setattr(device_guard, "tensor_device", lambda args: args[0])
    launcher = device_guard.on_tensor_device(lambda d: "ran")
    assert launcher(torch.device("cuda", 1)) == "ran" and entered == [torch.device("cuda", 1)]
    assert launcher(torch.device("cuda", 0)) == "ran" and len(entered) == 1
    assert launcher(torch.device("cpu")) == "ran" and len(entered) == 1


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_ops_on_the_second_gpu_while_the_first_is_current():
    import bermo

    dev = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 7, 64, generator=gen) for _ in range(3)]
    s, g = torch.randn(3, generator=gen), torch.ones(1)
    want = bermo.scalar_mix(xs, s, g, backend="reference")
    got = bermo.scalar_mix([x.to(dev) for x in xs], s.to(dev), g.to(dev), backend="triton")
    torch.testing.assert_close(got.cpu(), want)
    x, w = torch.randn(96, 128, generator=gen), torch.randn(64, 128, generator=gen)
    mask = (torch.rand(2, 4, generator=gen) < 0.5).float()
    want = x @ (w * torch.kron(mask, torch.ones(32, 32))).T
    got = bermo.masked_linear(x.to(dev), w.to(dev), mask.to(dev), block_shape=(32, 32), backend="triton",
                              density=0.1)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
