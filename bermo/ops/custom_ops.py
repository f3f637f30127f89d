"""Turn an op's plain kernel-calling functions into PyTorch custom ops (opaque to ``torch.compile``, with fake
implementations for tracing) while eager calls skip the dispatcher.

    OPS = CustomOps("scalar_mix", {"forward": (forward_fn, forward_fake), ...})
    OPS().forward(...)    # the custom op under torch.compile, the plain function otherwise

Each function is registered as ``bermo::<prefix>_<name>``. Calling the plain function directly in eager mode
saves the dispatcher's ~100 us per call; under ``torch.compile`` the custom op keeps the kernels opaque.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Dict, Tuple

import torch


class CustomOps:
    def __init__(self, prefix: str, functions: Dict[str, Tuple[Callable, Callable]]):
        eager, custom = {}, {}
        for name, (fn, fake) in functions.items():
            op = torch.library.custom_op(f"bermo::{prefix}_{name}", fn, mutates_args=())
            op.register_fake(fake)
            eager[name], custom[name] = fn, op
        self.eager, self.custom = SimpleNamespace(**eager), SimpleNamespace(**custom)

    def __call__(self) -> SimpleNamespace:
        return self.custom if torch.compiler.is_compiling() else self.eager
