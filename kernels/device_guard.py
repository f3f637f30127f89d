"""Triton launches on the tensors' GPU: ``on_tensor_device``, the decorator of every Triton launcher.

Triton launches a kernel on the *current* CUDA device and its current stream, whatever device the tensors live
on: with ``cuda:1`` tensors while device 0 is current (``model.to("cuda:1")`` then a forward), the kernel would
run on GPU 0 with pointers into GPU 1's memory (an illegal-address fault, or unordered reads with peer access).
Autograd's backward threads and DataParallel's replicas set the device themselves; a plain forward does not.
"""
from __future__ import annotations

import functools

import torch


def tensor_device(args) -> "torch.device | None":
    """The device of the first tensor among ``args`` (a tensor, or the first of a list or tuple of them)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0].device
    return None


def on_tensor_device(launcher):
    """Run ``launcher`` with its first tensor argument's CUDA device current (no-op when it already is, or on
    CPU tensors under the Triton interpreter)."""
    @functools.wraps(launcher)
    def guarded(*args, **kwargs):
        device = tensor_device(args)
        if device is not None and device.type == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                return launcher(*args, **kwargs)
        return launcher(*args, **kwargs)

    guarded.on_tensor_device = True
    return guarded
