"""The argument checks of the scalar-mix C++ entry points (kernels/csrc/scalar_mix_cpu.cpp), called directly.

The valid calls are the launchers' own: kernels/scalar_mix_cpu.py runs with its ``extension()`` wrapped by a
recorder, over layouts that take every branch of ``as_rows`` (contiguous, strided [CLS] views, stacked slices,
a broadcast row stride of 0, one row, 0-d layers, no rows, a zero-width last dimension, the contiguous
fallback); every recorded call is replayed and must succeed. Each bad call changes one argument of a recorded
call (dtype, device, layout, shape, length, contiguity, stride, size) and must raise a RuntimeError naming
that argument, before any kernel reads or writes.
"""
from __future__ import annotations

import pytest
import torch

from helpers import needs_cpu_kernels

pytestmark = needs_cpu_kernels

from bermo.kernels import scalar_mix_cpu  # noqa: E402
from bermo.kernels.layout import acc_dtype  # noqa: E402

L = 3
NEED = [True, False, True]  # one layer without a gradient: an empty entry in grads
ARGS = {
    "mix_forward": ("xs", "coef", "center", "out", "rows", "cols", "stride"),
    "mix_backward": ("grad_out", "xs", "grads", "coef", "center", "partials", "rows", "cols", "stride"),
    "ln_stats": ("xs", "row_mask", "partials", "rows", "cols", "stride"),
    "ln_backward": ("grad_out", "xs", "grads", "row_mask", "coef", "alpha", "beta", "center", "rows", "cols",
                    "stride"),
    "num_tiles": ("rows", "cols", "stride"),
}


@pytest.fixture(scope="module")
def ext():
    return scalar_mix_cpu.extension()  # the compiled module, as the launchers get it


class Recorder:
    """Stands in for the extension module: forwards every call and keeps (name, args)."""

    def __init__(self, module):
        self.module, self.calls = module, []

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def call(*args):
            self.calls.append((name, args))
            return fn(*args)

        return call


def layers_of(kind: str, dtype: torch.dtype):
    """(the layers, stacked, the row mask's shape) of one input layout."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    if kind == "contiguous":
        return [randn(2, 5, 40) for _ in range(L)], False, (2, 5)
    if kind == "cls":  # hidden[:, 0] of every layer: row stride 5 * 40
        return [randn(4, 5, 40)[:, 0] for _ in range(L)], False, (4,)
    if kind == "stacked":
        return [randn(L, 2, 3, 24)], True, (2, 3)
    if kind == "stacked-cls":
        return [randn(L, 4, 5, 24)[:, :, 0]], True, (4,)
    if kind == "broadcast":  # one row expanded: row stride 0
        return [randn(37).expand(6, 37) for _ in range(L)], False, (6,)
    if kind == "one-row":  # a single row of a wider tensor: its row stride is never used
        return [randn(1, 48)[:, :19] for _ in range(L)], False, (1,)
    if kind == "scalar":
        return [randn(()) for _ in range(L)], False, ()
    if kind == "transposed":  # no unit column stride: the launcher makes the layers contiguous
        return [randn(24, 3).t() for _ in range(L)], False, (3,)
    if kind == "mixed":  # different row strides: made contiguous too
        return [randn(4, 5, 24)[:, 0], randn(4, 24), randn(4, 7, 24)[:, 1]], False, (4,)
    if kind == "no-rows":
        return [randn(0, 24) for _ in range(L)], False, (0,)
    if kind == "zero-width":
        return [randn(4, 0) for _ in range(L)], False, (4,)
    raise ValueError(kind)


KINDS = ["contiguous", "cls", "stacked", "stacked-cls", "broadcast", "one-row", "scalar", "transposed", "mixed",
         "no-rows", "zero-width"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def launcher_calls(ext, kind: str, dtype: torch.dtype):
    """Every extension call the four CPU launchers make on one layout (mix_backward with and without sums)."""
    layers, stacked, mask_shape = layers_of(kind, dtype)
    tensors = list(layers[0].unbind(0)) if stacked else layers
    acc = acc_dtype(dtype)
    g = torch.Generator().manual_seed(1)
    coef, center, alpha, beta = (torch.randn(L, generator=g, dtype=acc) for _ in range(4))
    row_mask = torch.ones(mask_shape, dtype=acc).reshape(-1)
    if row_mask.numel() > 1:
        row_mask[-1] = 0
    grad_out = torch.randn(tensors[0].shape, generator=g).to(dtype)
    need = NEED if not stacked else [True] * L
    rec = Recorder(ext)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scalar_mix_cpu, "extension", lambda: rec)
        out = scalar_mix_cpu.mix_forward(tensors, coef, center)
        scalar_mix_cpu.mix_backward(grad_out, tensors, coef, center, need, True, stacked)
        scalar_mix_cpu.mix_backward(grad_out, tensors, coef, center, need, False, stacked)
        scalar_mix_cpu.ln_stats(tensors, row_mask)
        scalar_mix_cpu.ln_backward(grad_out, tensors, row_mask, coef, alpha, beta, center, need, stacked)
    expected = sum(coef[k] * (tensors[k].to(acc) - center[k]) for k in range(L))
    torch.testing.assert_close(out, expected.to(dtype))  # (the dtype's tolerance: one rounding)
    return rec.calls


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_launcher_calls_pass_the_checks(ext, kind, dtype):
    calls = launcher_calls(ext, kind, dtype)  # the launchers themselves go through the checks
    made = {name for name, _ in calls}
    assert "ln_stats" in made  # the statistics launcher calls the kernel even with no elements
    if kind not in ("no-rows", "zero-width"):
        assert {"mix_forward", "mix_backward", "ln_backward"} <= made
    for name, args in calls:  # and the same calls made directly
        getattr(ext, name)(*args)


# ----------------------------------------------------------------------------------------------------------
# Bad calls: one argument of a recorded call changed
# ----------------------------------------------------------------------------------------------------------
def other_float(dtype):
    return torch.float16 if dtype != torch.float16 else torch.float32


def other_acc(dtype):
    return torch.float64 if dtype == torch.float32 else torch.float32


def strided_like(t):
    """``t``'s shape and values with every stride doubled: not contiguous."""
    s = torch.zeros(*t.shape, 2, dtype=t.dtype)[..., 0]
    s.copy_(t)
    return s


VECTORS = ("coef", "center", "alpha", "beta")
ROWS_OUT = ("out", "grad_out")


def bad_cases(name: str):
    """(case id, function of the recorded call's args dict that breaks one argument, message pattern)."""
    args = ARGS[name]
    cases = []

    def add(cid, fn, pattern):
        cases.append(pytest.param(fn, pattern, id=f"{name}-{cid}"))

    # the layers
    add("xs-empty", lambda a: a.update(xs=[]), r"xs must hold at least one layer")
    add("xs-int", lambda a: a.update(xs=[x.to(torch.int32) for x in a["xs"]]),
        r"xs must be float32, float64, float16 or bfloat16; got Int")
    add("xs1-dtype", lambda a: a["xs"].__setitem__(1, a["xs"][1].to(other_float(a["xs"][0].dtype))),
        r"xs\[1\] must have the dtype of xs\[0\]")
    add("xs1-meta", lambda a: a["xs"].__setitem__(1, a["xs"][1].to("meta")), r"xs\[1\] must be a strided CPU tensor")
    add("xs1-rows", lambda a: a["xs"].__setitem__(1, a["xs"][1][:-1]), r"xs\[1\] must be a \(rows, cols\)")
    add("xs1-cols", lambda a: a["xs"].__setitem__(1, a["xs"][1][:, :-1]), r"xs\[1\] must be a \(rows, cols\)")
    add("xs1-1d", lambda a: a["xs"].__setitem__(1, a["xs"][1].reshape(-1)), r"xs\[1\] must be a \(rows, cols\)")
    add("xs1-column-stride", lambda a: a["xs"].__setitem__(1, strided_like(a["xs"][1])),
        r"xs\[1\] must have strides \(stride, 1\)")
    add("xs1-transposed", lambda a: a["xs"].__setitem__(1, a["xs"][1].t().contiguous().t()),
        r"xs\[1\] must have strides \(stride, 1\)")
    add("stride", lambda a: a.update(stride=a["stride"] + 1), r"xs\[0\] must have strides \(stride, 1\)")
    add("rows-too-many", lambda a: a.update(rows=a["rows"] + 1), r"xs\[0\] must be a \(rows, cols\)")
    add("cols-too-many", lambda a: a.update(cols=a["cols"] + 1), r"xs\[0\] must be a \(rows, cols\)")
    add("rows-negative", lambda a: a.update(rows=-1), r"rows, cols and stride must be non-negative")
    add("stride-negative", lambda a: a.update(stride=-1), r"rows, cols and stride must be non-negative")
    # the layers' outputs and the output gradient: contiguous, rows * cols elements, the layers' dtype
    for arg in (a for a in args if a in ROWS_OUT):
        add(f"{arg}-dtype", lambda a, arg=arg: a.update({arg: a[arg].to(other_float(a[arg].dtype))}),
            rf"{arg} must have the layers' dtype")
        add(f"{arg}-meta", lambda a, arg=arg: a.update({arg: a[arg].to("meta")}), rf"{arg} must be a strided CPU")
        add(f"{arg}-short", lambda a, arg=arg: a.update({arg: a[arg].reshape(-1)[:-1]}),
            rf"{arg} must hold rows \* cols")
        add(f"{arg}-long", lambda a, arg=arg: a.update({arg: a[arg].new_zeros(a[arg].numel() + 1)}),
            rf"{arg} must hold rows \* cols")
        add(f"{arg}-strided", lambda a, arg=arg: a.update({arg: strided_like(a[arg])}), rf"{arg} must be contiguous")
    if "grads" in args:
        add("grads-short", lambda a: a.update(grads=a["grads"][:-1]), r"grads must hold one tensor per layer")
        add("grads-long", lambda a: a.update(grads=a["grads"] + a["grads"][:1]),
            r"grads must hold one tensor per layer")
        add("grads0-dtype", lambda a: a["grads"].__setitem__(0, a["grads"][0].to(other_float(a["grads"][0].dtype))),
            r"grads\[0\] must have the layers' dtype")
        add("grads0-meta", lambda a: a["grads"].__setitem__(0, a["grads"][0].to("meta")),
            r"grads\[0\] must be a strided CPU tensor")
        add("grads0-short", lambda a: a["grads"].__setitem__(0, a["grads"][0].reshape(-1)[:-1]),
            r"grads\[0\] must hold rows \* cols")
        add("grads0-strided", lambda a: a["grads"].__setitem__(0, strided_like(a["grads"][0])),
            r"grads\[0\] must be contiguous")
    # the per-layer vectors: contiguous (L,) in the accumulation type
    for arg in (a for a in args if a in VECTORS):
        add(f"{arg}-dtype", lambda a, arg=arg: a.update({arg: a[arg].to(other_acc(a[arg].dtype))}),
            rf"{arg} must be in the accumulation type")
        add(f"{arg}-meta", lambda a, arg=arg: a.update({arg: a[arg].to("meta")}), rf"{arg} must be a strided CPU")
        add(f"{arg}-sparse", lambda a, arg=arg: a.update({arg: a[arg].to_sparse()}), rf"{arg} must be a strided CPU")
        add(f"{arg}-short", lambda a, arg=arg: a.update({arg: a[arg][:-1]}), rf"{arg} must have shape \({L},\)")
        add(f"{arg}-long", lambda a, arg=arg: a.update({arg: torch.cat([a[arg], a[arg][:1]])}),
            rf"{arg} must have shape \({L},\)")
        add(f"{arg}-2d", lambda a, arg=arg: a.update({arg: a[arg][:, None]}), rf"{arg} must have shape \({L},\)")
        add(f"{arg}-strided", lambda a, arg=arg: a.update({arg: strided_like(a[arg])}), rf"{arg} must be contiguous")
    if "row_mask" in args:
        add("row_mask-dtype", lambda a: a.update(row_mask=a["row_mask"].to(other_acc(a["row_mask"].dtype))),
            r"row_mask must be in the accumulation type")
        add("row_mask-bool", lambda a: a.update(row_mask=a["row_mask"] != 0), r"row_mask must be in the accumulation")
        add("row_mask-meta", lambda a: a.update(row_mask=a["row_mask"].to("meta")), r"row_mask must be a strided CPU")
        add("row_mask-short", lambda a: a.update(row_mask=a["row_mask"][:-1]), r"row_mask must have shape \(rows,\)")
        add("row_mask-2d", lambda a: a.update(row_mask=a["row_mask"][:, None]), r"row_mask must have shape \(rows,\)")
        add("row_mask-strided", lambda a: a.update(row_mask=strided_like(a["row_mask"])),
            r"row_mask must be contiguous")
    if "partials" in args:
        add("partials-dtype", lambda a: a.update(partials=a["partials"].to(other_acc(a["partials"].dtype))),
            r"partials must be in the accumulation type")
        add("partials-meta", lambda a: a.update(partials=a["partials"].to("meta")), r"partials must be a strided CPU")
        add("partials-fewer-tiles", lambda a: a.update(partials=a["partials"][:-1]),
            r"partials must have shape \(num_tiles, ")
        add("partials-narrow", lambda a: a.update(partials=a["partials"][:, :-1].contiguous()),
            r"partials must have shape \(num_tiles, ")
        add("partials-1d", lambda a: a.update(partials=a["partials"].reshape(-1)),
            r"partials must have shape \(num_tiles, ")
        add("partials-strided", lambda a: a.update(partials=strided_like(a["partials"])),
            r"partials must be contiguous")
    return cases


@pytest.fixture(scope="module")
def recorded(ext):
    """The first recorded call of each entry point, per layers' dtype, on a layout with several tiles of
    strided rows (row stride 5 * 40 > cols: several rows, so the row stride is checked)."""
    cache = {}

    def get(name, dtype):
        if dtype not in cache:
            layers = [torch.randn(1000, 5, 40).to(dtype)[:, 0] for _ in range(L)]  # 1000 x 40: three tiles
            acc = acc_dtype(dtype)
            vec = [torch.randn(L, dtype=acc) for _ in range(4)]
            row_mask = torch.ones(1000, dtype=acc)
            grad_out = torch.randn(1000, 40).to(dtype)
            rec = Recorder(ext)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(scalar_mix_cpu, "extension", lambda: rec)
                scalar_mix_cpu.mix_forward(layers, vec[0], vec[1])
                scalar_mix_cpu.mix_backward(grad_out, layers, vec[0], vec[1], NEED, True)
                scalar_mix_cpu.ln_stats(layers, row_mask)
                scalar_mix_cpu.ln_backward(grad_out, layers, row_mask, *vec, NEED)
            cache[dtype] = {}
            for n, args in rec.calls:
                cache[dtype].setdefault(n, args)
        assert cache[dtype]["num_tiles"] == (1000, 40, 200)
        return dict(zip(ARGS[name], cache[dtype][name]))

    return get


ALL_BAD = [pytest.param(name, *p.values, id=p.id) for name in ("mix_forward", "mix_backward", "ln_stats",
                                                                "ln_backward") for p in bad_cases(name)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name, breaks, pattern", ALL_BAD)
def test_bad_argument_is_named(ext, recorded, name, breaks, pattern, dtype):
    args = recorded(name, dtype)
    getattr(ext, name)(*args.values())  # the recorded call is valid
    args = {k: list(v) if isinstance(v, list) else v for k, v in args.items()}  # lists are changed in place
    breaks(args)
    with pytest.raises(RuntimeError, match=r"bermo scalar_mix: " + pattern):
        getattr(ext, name)(*args.values())


def test_every_entry_point_is_covered(ext):
    bound = {n for n in dir(ext) if n in ARGS}
    assert bound == set(ARGS)
    checked_names = {p.values[0] for p in ALL_BAD}
    assert checked_names == set(ARGS) - {"num_tiles"}  # num_tiles takes no tensors: nothing to read out of bounds
