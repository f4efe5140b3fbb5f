"""Head pruning (Michel et al. 2019), layer dropping and embedding distillation on a tiny BERT."""

from __future__ import annotations

import copy

import pytest
import torch
from nlp_helpers import PAIRS, tiny_bert_dir

from dwindle.errors import ConfigError
from dwindle.metrics import count_params
from dwindle.nlp import (
    EmbeddingDistill,
    count_heads,
    distill_embeddings_,
    drop_layers_,
    head_gates,
    head_importance,
    heads_to_prune,
    layer_importance,
    load_encoder,
    make_student,
    most_important_layers,
    prune_heads_,
)
from dwindle.nlp.text_data import StsPair

BATCHES = [[StsPair(*p) for p in PAIRS[:4]], [StsPair(*p) for p in PAIRS[4:]]]
SENTENCES = [p[0] for p in PAIRS] + [p[1] for p in PAIRS]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("heads"), layers=3, heads=4)


@pytest.fixture
def model(folder):
    return load_encoder(folder)


def test_physical_head_removal_equals_zeroing_the_heads_gates(model):
    ids = model.tokenize(SENTENCES)
    plan = {0: [1, 3], 2: [0]}
    with torch.no_grad(), head_gates(model) as gates:
        for layer, heads in plan.items():
            gates[layer][heads] = 0.0
        gated = model(ids)
    before = count_params(model)
    prune_heads_(model, plan)
    with torch.no_grad():
        pruned = model(ids)
    assert count_heads(model) == [2, 4, 3]
    assert torch.allclose(gated, pruned, atol=1e-5)
    # each head of 8 dims: q/k/v rows (+bias) and output columns
    assert before - count_params(model) == 3 * (3 * (8 * 32 + 8) + 8 * 32)
    attn = model.backbone.encoder.layer[0].attention
    assert attn.self.query.out_features == 16 and attn.output.dense.in_features == 16


def test_importance_is_a_gradient_magnitude_per_head_and_normalised(model):
    scores = head_importance(model, BATCHES)
    assert [len(s) for s in scores] == [4, 4, 4]
    assert all(torch.all(s >= 0) for s in scores)
    assert all(torch.isclose(s.norm(), torch.tensor(1.0)) for s in scores)
    raw = head_importance(model, BATCHES, normalize_layers=False)
    assert not all(torch.isclose(s.norm(), torch.tensor(1.0)) for s in raw)
    assert all(not p.grad_fn for p in model.parameters())  # model left untouched


def test_heads_to_prune_takes_the_least_important_and_keeps_one_per_layer():
    scores = [torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([0.05, 0.06, 0.07, 0.5])]
    assert heads_to_prune(scores, 3) == {1: [0, 1, 2]}
    assert heads_to_prune(scores, 4) == {0: [0], 1: [0, 1, 2]}
    # the least important layer keeps its last head; the next lowest score elsewhere goes
    assert heads_to_prune([torch.tensor([0.01, 0.02]), torch.tensor([0.6, 0.5])], 2) == {
        0: [0],
        1: [1],
    }
    assert heads_to_prune(scores, 6) == {0: [0, 2, 3], 1: [0, 1, 2]}


@pytest.mark.parametrize("count", [7, 12, 100])
def test_a_target_larger_than_the_prunable_heads_is_refused(count):
    scores = [torch.rand(4), torch.rand(4)]
    with pytest.raises(ConfigError, match=f"cannot prune {count} heads: the model has 8 heads"):
        heads_to_prune(scores, count)


def test_prune_heads_rejects_bad_indices(model):
    with pytest.raises(ConfigError, match=r"layer 0 has heads 0\.\.3; cannot prune head"):
        prune_heads_(model, {0: [4]})
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        prune_heads_(model, {5: [0]})
    with pytest.raises(ConfigError, match="would leave it without attention"):
        prune_heads_(model, {1: [0, 1, 2, 3]})


def test_drop_layers_and_importance(model):
    ids = model.tokenize(SENTENCES[:3])
    scores = layer_importance(model, BATCHES)
    assert len(scores) == 3
    keep = most_important_layers(scores, 2)
    ref = copy.deepcopy(model)
    drop_layers_(model, keep)
    assert len(model.backbone.encoder.layer) == 2
    assert model.backbone.config.num_hidden_layers == 2
    # same blocks run in the same order: equal to skipping the dropped block by hand
    layers = ref.backbone.encoder.layer
    ref.backbone.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    with torch.no_grad():
        assert torch.allclose(model(ids), ref(ids), atol=1e-6)
    with pytest.raises(ConfigError, match=r"subset of 0\.\.1"):
        drop_layers_(model, [0, 2])
    with pytest.raises(ConfigError, match="cannot keep 4 layer"):
        most_important_layers(scores, 4)


def test_distilled_student_gets_closer_to_its_teacher(model):
    student = make_student(model, 1)
    assert len(student.backbone.encoder.layer) == 1 and len(model.backbone.encoder.layer) == 3
    ids = model.tokenize(SENTENCES)
    torch.manual_seed(0)
    with torch.no_grad():  # a random tiny BERT's blocks barely matter: push the student away
        for p in student.backbone.encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
        before = torch.nn.functional.mse_loss(student(ids), model(ids)).item()
    cfg = EmbeddingDistill(epochs=20, batch_size=8, lr=1e-3, warmup=0.0)
    history = distill_embeddings_(student, model, SENTENCES, cfg)
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(student(ids), model(ids)).item()
    assert history["steps"] == 40 and after < 0.5 * before
    assert not student.training


def test_distill_config_and_transfer_set_errors(model):
    with pytest.raises(ConfigError, match="loss"):
        EmbeddingDistill(loss="kl")
    with pytest.raises(ConfigError, match=">= 2 sentences"):
        distill_embeddings_(make_student(model, 1), model, ["one"])
