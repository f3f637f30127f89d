"""``bermo eval``: accuracy (and F1) of a saved sequence classifier on a split or a file, plus its throughput.

Works for every model ``bermo train`` writes (``model/``, pruned ones with their masks baked in, and
``compressed/``) and any BERT or BERMo classifier checkpoint. The labels of the data must be the ones the model
was trained with (same count, and the same names when the model's config records them).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict

from .common import (CommandError, add_data_arguments, checkpoint_config, classifier_labels, f1_score,
                     is_classifier, load_data, matthews, write_json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a saved classifier folder (e.g. <output-dir>/model)")
    add_data_arguments(parser, need_train=False)
    parser.add_argument("--train-file", help=argparse.SUPPRESS)
    parser.add_argument("--split", default="validation", choices=("train", "validation", "test"),
                        help="the split of the data to score")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on the first N examples (default: all)")
    parser.add_argument("--output", help="also write the metrics as JSON here")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when there is one)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the model's weights and activations for inference; bfloat16 / float16 halve the "
                             "memory traffic on a GPU")


def load_classifier(path: str):
    """A saved classifier; a compressed one (BERMo or plain BERT) with its smaller layout rebuilt."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ..pruning.compressed_checkpoint import layout_of

    if layout_of(AutoConfig.from_pretrained(path)) is not None:
        from ..pruning import load_compressed

        return load_compressed(path)
    return AutoModelForSequenceClassification.from_pretrained(path)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise CommandError(f"--max-eval-samples must be at least 1; got {args.max_eval_samples}")
    if args.max_length < 2:
        raise CommandError(f"--max-length must be at least 2; got {args.max_length}")
    if args.task is None and not any((args.validation_file, args.test_file, args.train_file)):
        raise CommandError("no data: give --task NAME or --validation-file / --test-file")
    config = checkpoint_config(args.model, allow_compressed=True)
    if not is_classifier(config):
        raise CommandError(f"--model {args.model} is not a sequence classifier (architectures "
                           f"{getattr(config, 'architectures', None)}); "
                           "evaluate a model written by `bermo train` (its model/ or compressed/ folder)")
    if args.max_length > config.max_position_embeddings:
        raise CommandError(f"--max-length {args.max_length} exceeds the model's {config.max_position_embeddings} "
                           "positions")
    data = load_data(args, classifier_labels(config), args.model)  # the data's labels on the model's ids
    if args.split not in data.datasets:
        raise CommandError(f"--split {args.split}: {data.source} has the splits {list(data.datasets)}")
    names = [config.id2label[i] for i in range(config.num_labels)]
    if config.num_labels != data.num_labels:
        raise CommandError(f"--model {args.model} predicts {config.num_labels} labels {names} but the data has "
                           f"{data.num_labels} ({data.label_names})")

    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from ..data.text_classification import tokenize

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    split = tokenize(data, tokenizer, args.max_length)[args.split]
    if "labels" not in split.column_names:
        raise CommandError(f"the {args.split} split of {data.source} has no labels to score against")
    if args.max_eval_samples:
        split = split.select(range(min(args.max_eval_samples, len(split))))
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise CommandError(f"--device {args.device}: {str(err).splitlines()[0]}") from err
    model = load_classifier(args.model).to(device=device, dtype=getattr(torch, args.dtype)).eval()
    loader = DataLoader(split, batch_size=args.batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    preds, labels, tokens = [], [], 0
    seconds = 0.0
    warm_up = True
    with torch.inference_mode():
        for batch in tqdm(loader, desc="bermo eval", disable=None):
            batch = {k: v.to(device) for k, v in batch.items()}
            y = batch.pop("labels")
            if warm_up:  # one untimed call first: it builds or loads the kernels (a first C++ build took minutes)
                model(**batch)
                warm_up = False
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits = model(**batch).logits
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            tokens += int(batch["attention_mask"].sum())
            preds.append(logits.argmax(-1).cpu())
            labels.append(y.cpu())
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    result = {"command": "bermo eval", "model": args.model, "data": data.source, "split": args.split,
              "examples": int(len(y)), "accuracy": float((p == y).mean()),
              "f1": f1_score(y, p, data.num_labels), "matthews": matthews(y, p, data.num_labels),
              "f1_of": f"label {data.label_names[1]!r}" if data.num_labels == 2 else "macro average",
              "majority_share": float(np.bincount(y, minlength=data.num_labels).max() / len(y)),
              "model_seconds": round(seconds, 4), "examples_per_second": round(len(y) / seconds, 1),
              "tokens_per_second": round(tokens / seconds, 1), "batch_size": args.batch_size,
              "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
              "parameters": sum(t.numel() for t in model.parameters())}
    print(f"bermo eval: {result['examples']} {args.split} examples of {data.source}: accuracy "
          f"{result['accuracy']:.4f}, f1 {result['f1']:.4f} ({result['f1_of']}), matthews {result['matthews']:.4f}; "
          f"{result['examples_per_second']:.0f} examples/s, "
          f"{result['tokens_per_second']:.0f} tokens/s (model time, batch {args.batch_size}, {device}, {args.dtype}); "
          f"{result['parameters']:,} parameters")
    if args.output:
        write_json(args.output, result)
        print(f"  metrics {args.output}")
    return result
