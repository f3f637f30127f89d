"""README "Pruning": a block-pruned linear layer that learns its mask (movement pruning's topK)."""
import torch
from bermo.nn import MaskedLinear

layer = MaskedLinear.from_linear(torch.nn.Linear(768, 3072), method="topK", block_shape=(32, 32), density=0.1)
y = layer(torch.randn(8, 128, 768))      # scores learn by the straight-through gradient
print(layer)                             # method, block shape, current density
