"""Mixed precision for the linear ops: under ``torch.autocast`` they cast like ``F.linear`` does.

Autocast lists PyTorch's own ops (``F.linear``, ``matmul``, ...) and casts their floating-point inputs to the
autocast dtype; bermo's ops are custom, so without this they would see a float16/bfloat16 activation next to
a float32 weight (the usual state under ``Trainer(bf16=True)``) and refuse the pair. ``autocast_inputs``
applies the same rule at the ops' entry: when autocast is on for the tensors' device, float32/16-bit tensors
go to the autocast dtype (float64 and non-float tensors, such as masks' bools and indices, stay as they are).
The casts are differentiable, so float32 parameters get float32 gradients, as with ``nn.Linear``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

_CAST = (torch.float32, torch.float16, torch.bfloat16)


def autocast_inputs(device_type: str, *tensors: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """``tensors`` as ``F.linear`` under autocast would use them (unchanged when autocast is off there)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta, ...): nothing to cast
        return tensors
    if not enabled:
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _CAST else t for t in tensors)
