"""The modules run as DataParallel replicas (what the HF Trainer makes of a model on several GPUs driven by one
process). ``torch.nn.parallel.replicate`` needs CUDA devices; ``replica_of`` repeats its module handling on the
CPU: each module's ``_replicate_for_data_parallel()`` (an empty ``_parameters`` dict), children re-attached, and
each parameter set as a plain, non-leaf tensor attribute. A forward that reads ``_parameters`` or
``.parameters()`` finds nothing there (ScalarMix did: ``torch.cat`` of nothing)."""
from __future__ import annotations

import pytest
import torch

from bermo.nn import BlockSparseLinear, ScalarMix
from helpers import needs_cpu_kernels, tiny_bermo_config


def replica_of(module: torch.nn.Module) -> torch.nn.Module:
    modules = list(module.modules())
    replicas = {id(m): m._replicate_for_data_parallel() for m in modules}
    for m in modules:
        r = replicas[id(m)]
        for key, child in m._modules.items():
            setattr(r, key, None if child is None else replicas[id(child)])
        for key, p in m._parameters.items():
            if p is None:
                r._parameters[key] = None
            else:
                setattr(r, key, p * 1)  # a copy in the graph, as replicate's broadcast gives
    return replicas[id(module)]


@pytest.mark.parametrize("layer_norm", [False, True], ids=["mix", "layernorm"])
def test_scalar_mix_replica(layer_norm):
    torch.manual_seed(0)
    mix = ScalarMix(4, do_layer_norm=layer_norm, initial_scalar_parameters=[0.1, -0.3, 0.5, 0.0],
                    backend="reference")
    replica = replica_of(mix)
    assert not replica.scalar_parameters._parameters and not list(replica.parameters())
    xs = [torch.randn(2, 5, 8) for _ in range(4)]
    mask = torch.ones(2, 5, dtype=torch.bool) if layer_norm else None
    want = mix(xs, mask)
    got = replica(xs, mask)
    torch.testing.assert_close(got, want)
    got.sum().backward()  # the gradients reach the original parameters through the copies
    assert mix.gamma.grad is not None and all(p.grad is not None for p in mix.scalar_parameters)


@needs_cpu_kernels
def test_block_sparse_linear_replica():
    torch.manual_seed(0)
    w = torch.randn(64, 96) * torch.kron((torch.rand(2, 3) < 0.6).float(), torch.ones(32, 32))
    layer = BlockSparseLinear.from_dense(w, torch.randn(64), (32, 32), backend="cpu")
    replica = replica_of(layer)
    assert not replica._parameters
    x = torch.randn(3, 96)
    with torch.no_grad():
        torch.testing.assert_close(replica(x), layer(x))


def test_bermo_classifier_replicas_step_after_step():
    """The whole BERMo classifier (transformers' BERT layers, the mix, the head) as replicas made afresh at each
    step, as DataParallel makes them, from a model never called itself: transformers 5 installed its hidden-state
    hooks on each step's replicas, into the hook dictionaries they share with the model, so the hidden states
    grew by L per step (3, 5, 7, ... for two layers) and the mix read the wrong ones."""
    from bermo.models import BermoForSequenceClassification

    torch.manual_seed(0)
    config = tiny_bermo_config()
    model = BermoForSequenceClassification(config).eval()
    ids = torch.randint(1, 50, (2, 7))
    outputs = []
    with torch.no_grad():
        for _ in range(3):
            out = replica_of(model)(input_ids=ids, output_hidden_states=True)
            assert len(out.hidden_states) == config.num_hidden_layers + 1
            outputs.append(out.logits)
        want = model(input_ids=ids).logits
    for got in outputs:
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", ["topK", "threshold", "l0"])
def test_pruned_bermo_replica_trains_the_scores(method):
    """A BERMo classifier prepared for pruning (MaskedLinear layers) computes the same logits as a replica, and a
    training step through a replica reaches the original scores."""
    from bermo.models import BermoForSequenceClassification
    from bermo.pruning import prepare, set_pruning_level

    torch.manual_seed(0)
    config = tiny_bermo_config()
    model = BermoForSequenceClassification(config)
    prepare(model, method=method, block_shape=(16, 16), backend="reference")
    if method == "topK":
        set_pruning_level(model, 0.5)
    ids = torch.randint(1, 50, (2, 7))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(replica_of(model)(input_ids=ids).logits, model(input_ids=ids).logits)
    model.train()
    replica_of(model)(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
    scores = [p for n, p in model.named_parameters() if n.endswith("scores")]
    assert scores and all(p.grad is not None for p in scores)
