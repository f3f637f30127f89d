"""``bermo.nn.ScalarMix``: a drop-in replacement for AllenNLP's ``ScalarMix`` backed by fused kernels."""
from __future__ import annotations

import operator
from typing import List, Optional

import torch
from torch.nn import Parameter, ParameterList

from .. import backends
from ..errors import ConfigurationError
from ..ops.scalar_mix import TensorsArg, as_layers, scalar_mix


class ScalarMix(torch.nn.Module):
    """``gamma * sum_k softmax(s)_k * tensors[k]``, one learned scalar ``s_k`` per tensor plus one ``gamma``.

    Same constructor, ``forward`` and ``state_dict`` keys (``scalar_parameters.0 .. N-1``, ``gamma``) as
    ``allennlp.modules.scalar_mix.ScalarMix``, so AllenNLP checkpoints load as they are. With
    ``do_layer_norm=True`` every tensor is first normalised with ONE mean and ONE variance over all of its
    unmasked elements (AllenNLP's masked layer norm; ``mask`` of shape ``tensors[0].shape[:-1]``).

    Differences from AllenNLP: ``tensors`` may also be one stacked ``(L, ...)`` tensor; float16/bfloat16
    inputs give an output of the input dtype (AllenNLP promotes them to float32), accumulation being float32
    either way; the backend (``triton``, ``cpu`` or ``reference``) is chosen per call from the tensors'
    device, overridable with ``backend=`` or ``$BERMO_BACKEND`` (see ``bermo.backends``).
    """

    def __init__(self, mixture_size: int, do_layer_norm: bool = False,
                 initial_scalar_parameters: Optional[List[float]] = None, trainable: bool = True,
                 backend: Optional[str] = None) -> None:
        super().__init__()
        try:  # any integral value, as AllenNLP (numpy integers included); not bools, not floats
            size = None if isinstance(mixture_size, bool) else operator.index(mixture_size)
        except TypeError:
            size = None
        if size is None or size < 1:
            raise ConfigurationError(f"mixture_size must be a positive integer, got {mixture_size!r}")
        mixture_size = size
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        elif len(initial_scalar_parameters) != mixture_size:
            raise ConfigurationError(
                "Length of initial_scalar_parameters {} differs from mixture_size {}".format(
                    initial_scalar_parameters, mixture_size))
        self.scalar_parameters = ParameterList(
            [Parameter(torch.tensor([float(v)], dtype=torch.float32), requires_grad=trainable)
             for v in initial_scalar_parameters])
        self.gamma = Parameter(torch.tensor([1.0], dtype=torch.float32), requires_grad=trainable)
        if backend is not None:
            backend = backends.requested(backend)  # fail early on a misspelt name; kept as the normalised name
        self.backend = backend

    def forward(self, tensors: TensorsArg, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        count = self._count(tensors)
        if not count:  # not a sequence, a 0-d tensor or nothing at all: the op's validation says which
            as_layers(tensors)
        if count != self.mixture_size:
            raise ConfigurationError("{} tensors were passed, but the module was initialized to mix {} tensors.".format(
                count, self.mixture_size))
        # The list's own parameter dict, in order: 7 us against 23 for iterating the list, at 13 layers on the
        # development CPU. A DataParallel replica has an empty dict (its parameters are plain attributes, which
        # .parameters() does not list either): iterate the list there.
        listed = self.scalar_parameters
        own = listed._parameters
        scalars = torch.cat(tuple(own.values()) if len(own) == len(listed) else list(listed))
        return scalar_mix(tensors, scalars, self.gamma, mask=mask, do_layer_norm=self.do_layer_norm,
                          backend=self.backend)

    def mixing_weights(self) -> torch.Tensor:
        """The current normalised weights ``softmax(s)`` (detached, float32 (float64 for float64 scalars), shape
        (mixture_size,)), whatever dtype the module was cast to."""
        scalars = torch.cat([p.detach() for p in self.scalar_parameters])
        return torch.softmax(scalars.to(torch.promote_types(scalars.dtype, torch.float32)), dim=0)

    @staticmethod
    def _count(tensors) -> Optional[int]:
        if isinstance(tensors, torch.Tensor):
            return tensors.shape[0] if tensors.dim() > 0 else None
        try:
            return len(tensors)
        except TypeError:
            return None

    def extra_repr(self) -> str:
        return f"mixture_size={self.mixture_size}, do_layer_norm={self.do_layer_norm}, backend={self.backend}"
