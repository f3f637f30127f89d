"""BERMo configuration: a BERT configuration plus the settings of the scalar mix of its layers."""
from __future__ import annotations

from typing import List, Optional, Sequence

from transformers import BertConfig


class BermoConfig(BertConfig):
    """Configuration of a BERMo model (Kodge and Roy, 2021): BERT whose head reads an ELMo-style scalar mix
    ``gamma * sum_k softmax(s)_k * h_k`` of the encoder's representations.

    Args (beyond ``BertConfig``'s):
        mix_layers: which representations are mixed, as indices into ``hidden_states`` (0 = the embedding
            output, ``i`` = the output of encoder layer ``i``; negative indices count from the end). Default
            ``None``: all ``num_hidden_layers + 1`` of them, as in the paper.
        mix_layer_norm: apply AllenNLP's masked layer norm to each representation before mixing (default off).
        mix_initial_scalars: initial values of the mixing scalars ``s`` (default zeros: uniform weights);
            ``gamma`` starts at 1.
        mix_backend: force a ``bermo.backends`` backend for the mix (default: chosen per device).
    """

    model_type = "bermo"

    def __init__(self, mix_layers: Optional[Sequence[int]] = None, mix_layer_norm: bool = False,
                 mix_initial_scalars: Optional[Sequence[float]] = None, mix_backend: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.mix_layers = None if mix_layers is None else [int(i) for i in mix_layers]
        self.mix_layer_norm = bool(mix_layer_norm)
        self.mix_initial_scalars = None if mix_initial_scalars is None else [float(v) for v in mix_initial_scalars]
        self.mix_backend = mix_backend
        indices = self.mixed_layer_indices()  # validates mix_layers
        if self.mix_initial_scalars is not None and len(self.mix_initial_scalars) != len(indices):
            raise ValueError(f"mix_initial_scalars has {len(self.mix_initial_scalars)} values but {len(indices)} "
                             f"representations are mixed (mix_layers={self.mix_layers})")

    def mixed_layer_indices(self) -> List[int]:
        """Indices into ``hidden_states`` (0 .. num_hidden_layers) of the mixed representations, in order."""
        n = self.num_hidden_layers + 1
        if self.mix_layers is None:
            return list(range(n))
        if not self.mix_layers:
            raise ValueError("mix_layers is empty: mix at least one representation (or None for all)")
        out = []
        for i in self.mix_layers:
            if not -n <= i < n:
                raise ValueError(f"mix_layers index {i} is out of range: there are {n} representations "
                                 f"(0 = embeddings, 1..{n - 1} = encoder layers)")
            out.append(i % n)
        if len(set(out)) != len(out):
            raise ValueError(f"mix_layers {self.mix_layers} names a representation twice")
        return out
