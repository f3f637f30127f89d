"""README "Usage: a drop-in ScalarMix": mix every layer of a BERT encoder. Runs as is (a tiny random BERT)."""
import torch
from transformers import BertConfig, BertModel

from bermo.nn import ScalarMix

# Any BERT-style encoder; a tiny random one here so this runs anywhere. For a real one:
# bert = BertModel.from_pretrained("bert-base-uncased")  (12 layers: 13 hidden states)
bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128))
batch = {"input_ids": torch.randint(1000, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
hidden_states = bert(**batch, output_hidden_states=True).hidden_states  # num_hidden_layers + 1 tensors (B, T, H)

mix = ScalarMix(len(hidden_states))        # one scalar per layer (softmax-normalised) and a gamma
mixed = mix(hidden_states)                 # gamma * sum_k softmax(s)_k * h_k, shape (B, T, H)

mix_ln = ScalarMix(len(hidden_states), do_layer_norm=True)  # AllenNLP's masked layer norm of each layer first
mixed = mix_ln(hidden_states, mask=batch["attention_mask"])

mixed = mix(torch.stack(hidden_states))    # also takes one stacked (L, ...) tensor
print(tuple(mixed.shape), mix.mixing_weights())
