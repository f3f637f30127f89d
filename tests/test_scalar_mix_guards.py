"""Out-of-bounds writes fail by assertion, not by a heap-corruption abort (or not at all): every kernel output
and workspace is allocated with guard regions on both sides, and the guards must be intact after each pass."""
import pytest
import torch

import bermo
from bermo.kernels import layout
from helpers import BACKENDS

GUARD = 4096  # elements on each side: a tail of a tile, a row or a whole block past the end lands in it
SENTINEL = 12345.0


@pytest.fixture
def guarded(monkeypatch):
    buffers = []

    def allocate(shape, dtype, device):
        numel = 1
        for n in shape:
            numel *= n
        buf = torch.full((numel + 2 * GUARD,), SENTINEL, dtype=dtype, device=device)
        buffers.append(buf)
        return buf[GUARD:GUARD + numel].view(shape)

    monkeypatch.setattr(layout, "output_like",
                        lambda x0, shape=None: allocate(tuple(x0.shape if shape is None else shape), x0.dtype,
                                                        x0.device))
    monkeypatch.setattr(layout, "workspace", lambda shape, dtype, device: allocate(tuple(shape), dtype, device))
    return buffers


def _intact(buffers):
    return all(bool((b[:GUARD] == SENTINEL).all() and (b[-GUARD:] == SENTINEL).all()) for b in buffers)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("shape", [(3, 5, 37), (2, 3, 768), (1, 1, 1), (4, 7, 1040)], ids=str)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
@pytest.mark.parametrize("stacked", [False, True], ids=["list", "stacked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_no_write_past_any_output(guarded, backend, device, shape, do_layer_norm, stacked, dtype):
    gen = torch.Generator().manual_seed(1)
    L = 13
    base = [torch.randn(shape, generator=gen).to(dtype).to(device) for _ in range(L)]
    xs = torch.stack(base).requires_grad_() if stacked else [t.requires_grad_() for t in base]
    s = torch.randn(L, generator=gen).to(device).requires_grad_()
    g = torch.ones(1, device=device, requires_grad=True)
    mask = torch.ones(shape[:-1], dtype=torch.bool, device=device) if do_layer_norm else None
    out = bermo.scalar_mix(xs, s, g, mask=mask, do_layer_norm=do_layer_norm, backend=backend)
    out.backward(torch.randn(shape, generator=gen).to(dtype).to(device))
    assert guarded, "the launchers allocate through layout.output_like / layout.workspace"
    assert _intact(guarded), "a kernel wrote past the end (or before the start) of an output or workspace"
    assert not out.isnan().any()
