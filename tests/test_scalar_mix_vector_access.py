"""The Triton kernels' two variants: 16-byte vector access (ALIGNED=True) where the host checked that every
address and row stride allows it, element-by-element access otherwise. The interpreter ignores the alignment
hints, so these tests check the choice and the numbers; the compile test checks the PTX, and the GPU tests run
both variants for real."""
import pytest
import torch

from conftest import HAS_TRITON, TRITON_DEVICE
from bermo.kernels.layout import RowLayout, as_rows, vector_access_ok

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")


def _rows(tensors):
    layout, views = as_rows(tensors)
    return layout, views


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_host_check(dtype):
    esize = torch.empty((), dtype=dtype).element_size()
    width = 64  # 64 elements: a multiple of 16 bytes for every dtype
    fresh = [torch.randn(3, 5, width).to(dtype) for _ in range(3)]
    assert vector_access_ok(*_rows(fresh))
    # A view starting one element into its buffer: the base address is off by esize bytes.
    buf = torch.randn(3 * 5 * width + 1).to(dtype)
    shifted = fresh[:2] + [buf[1:].view(3, 5, width)]
    assert not vector_access_ok(*_rows(shifted))
    # Rows of an odd length (contiguous): neither the inputs' nor the outputs' rows stay aligned.
    odd = [torch.randn(3, 5, 37).to(dtype) for _ in range(2)]
    assert not vector_access_ok(*_rows(odd))
    # A row stride that is not a multiple of 16 bytes (a slice of wider rows), and one that is.
    narrow = 16 // esize  # elements in 16 bytes
    bad_stride = [torch.randn(3, 5, width + 1).to(dtype)[..., :width] for _ in range(2)]
    good_stride = [torch.randn(3, 5, width + narrow).to(dtype)[..., :width] for _ in range(2)]
    assert _rows(bad_stride)[0].row_stride == width + 1 and not vector_access_ok(*_rows(bad_stride))
    assert _rows(good_stride)[0].row_stride == width + narrow and vector_access_ok(*_rows(good_stride))
    # Missing entries (layers that need no gradient) are skipped.
    layout, views = _rows(fresh)
    assert vector_access_ok(layout, [None, views[0], None])
    assert vector_access_ok(RowLayout(1, 8, 8), [None])


class _Recorder:
    """Stands in for a @triton.jit kernel: records each launch's ALIGNED and forwards the launch."""

    def __init__(self, kernel, seen):
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.seen.append(kwargs["ALIGNED"])
            return launch(*args, **kwargs)
        return run


@pytest.fixture
def launches(monkeypatch):
    from bermo.kernels import scalar_mix_triton as k

    seen = []
    for name in ("scalar_mix_fwd_kernel", "scalar_mix_bwd_kernel", "ln_stats_kernel", "ln_bwd_kernel"):
        monkeypatch.setattr(k, name, _Recorder(getattr(k, name), seen))
    return seen


def _layers(kind, dtype, device, gen):
    if kind == "aligned":
        return [torch.randn(2, 3, 32, generator=gen).to(dtype).to(device) for _ in range(3)]
    if kind == "offset":  # each layer a view one element into its buffer
        return [torch.randn(2 * 3 * 32 + 1, generator=gen).to(dtype).to(device)[1:].view(2, 3, 32)
                for _ in range(3)]
    if kind == "odd_stride":
        return [torch.randn(2, 3, 33, generator=gen).to(dtype).to(device)[..., :32] for _ in range(3)]
    return [torch.randn(2, 3, 31, generator=gen).to(dtype).to(device) for _ in range(3)]  # odd width


@pytest.mark.parametrize("kind,expected", [("aligned", True), ("offset", False), ("odd_stride", False),
                                           ("odd_width", False)])
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_launchers_pick_the_variant_and_both_agree(launches, kind, expected, do_layer_norm, dtype):
    import bermo
    from helpers import reference_grads

    gen = torch.Generator().manual_seed(8)
    layers = _layers(kind, dtype, TRITON_DEVICE, gen)
    assert layers[0].shape[-1] in (31, 32)
    xs = [t.detach().requires_grad_() for t in layers]
    s = torch.tensor([0.3, -0.5, 0.2], device=TRITON_DEVICE, requires_grad=True)
    g = torch.tensor([1.4], device=TRITON_DEVICE, requires_grad=True)
    mask = (torch.rand(layers[0].shape[:-1], generator=gen) > 0.3).to(TRITON_DEVICE) if do_layer_norm else None
    grad_out = torch.randn(layers[0].shape, generator=gen).to(dtype).to(TRITON_DEVICE)
    out = bermo.scalar_mix(xs, s, g, mask=mask, do_layer_norm=do_layer_norm, backend="triton")
    out.backward(grad_out)
    assert launches and all(a is expected for a in launches), launches
    eps = 1e-13 if dtype == torch.float32 else 1e-4
    ref_out, ref_layers, ref_s, _ = reference_grads([t.detach().cpu() for t in layers], s.detach().cpu().double(),
                                                    g.detach().cpu().double(), grad_out.cpu(),
                                                    None if mask is None else mask.cpu(), do_layer_norm, eps)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.cpu().double(), ref_out, rtol=tol, atol=tol * ref_out.abs().max().item())
    for x, r in zip(xs, ref_layers):
        torch.testing.assert_close(x.grad.cpu().double(), r, rtol=tol, atol=tol * r.abs().max().item())


def test_forcing_the_vector_variant_on_unaligned_tensors_is_an_error():
    from bermo.kernels import scalar_mix_triton as k

    layers = _layers("offset", torch.float32, TRITON_DEVICE, torch.Generator().manual_seed(0))
    coef = torch.ones(3, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match="not a multiple of 16 bytes"):
        k.mix_forward(layers, coef, torch.zeros_like(coef), aligned=True)
    # The fallback forced on aligned tensors is always allowed (the benchmark compares the two).
    aligned = _layers("aligned", torch.float32, TRITON_DEVICE, torch.Generator().manual_seed(0))
    a = k.mix_forward(aligned, coef, torch.zeros_like(coef), aligned=False)
    b = k.mix_forward(aligned, coef, torch.zeros_like(coef))
    assert torch.equal(a, b)


def test_pointer_tables_under_capture_are_kept_and_not_cached(monkeypatch):
    """Inside a CUDA graph capture a new table is written by captured fills, kept for the process's life and
    kept out of the eager cache (it holds its values only once the graph replays); a cached table the capture
    reads is kept too (the LRU would free it). Routing only: the CUDA calls are stood in for."""
    from bermo.kernels import layout

    monkeypatch.setattr(layout, "_TABLES", layout.OrderedDict())
    monkeypatch.setattr(layout, "_CAPTURED", {})
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {"cuda_stream": 7})())
    made = []
    monkeypatch.setattr(layout, "captured_table", lambda ptrs, device: made.append(ptrs) or torch.tensor(ptrs))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    x = torch.zeros(4)
    table = layout.pointer_table([x, None], "cuda")
    assert made == [(x.data_ptr(), 0)] and list(layout._CAPTURED.values()) == [table] and not layout._TABLES
    cached = torch.tensor([1, 2])
    layout._TABLES[(torch.device("cuda"), 7, (x.data_ptr(),))] = cached
    assert layout.pointer_table([x], "cuda") is cached and layout._CAPTURED[id(cached)] is cached and len(made) == 1
    layout.pointer_table([x], "cuda")  # captured again: kept once
    assert len(layout._CAPTURED) == 2


def test_captured_table_holds_the_addresses():
    from bermo.kernels.layout import captured_table

    assert captured_table([5, 2 ** 47 + 3, 0], "cpu").tolist() == [5, 2 ** 47 + 3, 0]
