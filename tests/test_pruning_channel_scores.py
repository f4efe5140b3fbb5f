"""Channel importance for filter pruning: filter norms, Taylor, and group magnitudes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomize_bn
from torch import nn

from dwindle import data as dwdata
from dwindle.errors import ConfigError
from dwindle.models import create
from dwindle.pruning import (
    FilterPruning,
    channel_scores,
    group_scores,
    prune_filters_,
    trace_channels,
)

RGB = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_l2_and_l1_rank_by_filter_norm() -> None:
    conv = nn.Conv2d(1, 3, 1, bias=False)
    conv.weight.data = torch.tensor([3.0, -4.0, 1.0]).view(3, 1, 1, 1) * torch.ones(3, 1, 1, 1)
    model = nn.Sequential(conv)
    l1 = channel_scores(model, [conv], FilterPruning(criterion="l1"))[conv]
    assert torch.allclose(l1, torch.tensor([3.0, 4.0, 1.0], dtype=torch.float64))


def _conv_bn_conv() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 32 * 32, 5),
    )
    return randomize_bn(model)


def test_group_scope_sums_every_weight_the_channel_takes_along() -> None:
    model = _conv_bn_conv()
    conv1, bn, conv2 = model[0], model[1], model[3]
    graph = trace_channels(model, RGB, ["0"])
    group = graph.get_pruning_group(
        conv1, graph.get_pruner_of_module(conv1).prune_out_channels, list(range(6))
    )
    got = group_scores(graph, group, 6, 1)
    want = (
        conv1.weight.abs().flatten(1).sum(1)
        + bn.weight.abs()
        + conv2.weight.abs().transpose(0, 1).flatten(1).sum(1)
    ).double()
    assert torch.allclose(got, want.detach())
    # A linear after a flatten holds 32*32 inputs per channel of conv2: all map to their channel.
    group2 = graph.get_pruning_group(
        conv2, graph.get_pruner_of_module(conv2).prune_out_channels, list(range(4))
    )
    lin = model[5].weight.abs().view(5, 4, -1).sum((0, 2))
    want2 = conv2.weight.abs().flatten(1).sum(1) + lin
    assert torch.allclose(group_scores(graph, group2, 4, 1), want2.detach().double())


def test_group_scope_ranks_like_torch_pruning_and_prunes_the_weakest() -> None:
    import torch_pruning as tp

    model = _conv_bn_conv()
    model[3].weight.data[:, 2] *= 50  # channel 2: small filter, strong consumer weights
    model[0].weight.data[2] *= 0.2
    graph = trace_channels(model, RGB, ["0"])
    conv1 = model[0]
    group = graph.get_pruning_group(
        conv1, graph.get_pruner_of_module(conv1).prune_out_channels, list(range(6))
    )
    ours = group_scores(graph, group, 6, 1)
    peer = tp.importance.MagnitudeImportance(p=1)(group)  # group mean, normalised by the mean
    assert torch.equal(torch.argsort(ours), torch.argsort(peer.double()))
    by_filter = copy.deepcopy(model)
    prune_filters_(by_filter, FilterPruning(ratio=0.5, targets=("0",)), example_input=RGB)
    by_group = copy.deepcopy(model)
    prune_filters_(
        by_group, FilterPruning(ratio=0.5, scope="group", targets=("0",)), example_input=RGB
    )
    kept_filter = {tuple(w.flatten().tolist()) for w in by_filter[0].weight}
    kept_group = {tuple(w.flatten().tolist()) for w in by_group[0].weight}
    channel2 = tuple(model[0].weight[2].flatten().tolist())
    assert channel2 not in kept_filter and channel2 in kept_group
    with pytest.raises(ConfigError, match="scope='group'"):
        prune_filters_(
            copy.deepcopy(model),
            FilterPruning(criterion="taylor", scope="group"),
            example_input=RGB,
        )


def test_taylor_importance_uses_gradients() -> None:
    data = dwdata.load("synthetic", n_samples=200, shape=[1, 8, 8], num_classes=3)
    torch.manual_seed(0)
    model = create("cnn4bn", num_classes=3, input_shape=(1, 8, 8), widths=(4, 4, 4, 4)).eval()
    model.features.bn1.weight.data[0] = 0  # channel 0 cut off: zero gradient, large norm
    model.features.conv1.weight.data[0] *= 100
    cfg = FilterPruning(criterion="taylor", taylor_batches=1, batch_size=32)
    conv = model.features.conv1
    scores = channel_scores(model, [conv], cfg, data)[conv]
    x, y = next(data.batches("train", 32, shuffle=True))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    want = (conv.weight * conv.weight.grad).flatten(1).sum(1).detach().double() ** 2
    assert torch.allclose(scores, want, rtol=1e-6, atol=1e-12)
    assert scores[0] == 0 and scores.argmin() == 0
    assert channel_scores(model, [conv], FilterPruning(criterion="l1"))[conv].argmax() == 0
