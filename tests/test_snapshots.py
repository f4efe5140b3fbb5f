"""Weight snapshots: stochastic weight averaging of a model's snapshots."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwindle.training import average_snapshots
from dwindle.training.checkpoint import snapshot


def test_average_is_the_elementwise_mean_and_keeps_dtypes() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16)}
    a["steps"], b["steps"] = torch.tensor(3), torch.tensor(7)
    avg = average_snapshots([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert avg["h"].dtype == torch.float16 and avg["h"].item() == 1.5
    assert avg["steps"].item() == 7  # integers come from the last snapshot, not averaged


def test_average_of_model_snapshots_loads_back_and_leaves_the_inputs_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    first = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    second = snapshot(model)
    kept = {k: v.clone() for k, v in first.items()}
    model.load_state_dict(average_snapshots([first, second]))
    w = model[0].weight
    assert torch.allclose(w, first["0.weight"] + 0.5)
    assert all(torch.equal(first[k], kept[k]) for k in first)
    assert model[1].num_batches_tracked.dtype == torch.long


def test_a_single_snapshot_averages_to_itself() -> None:
    s = {"w": torch.randn(5)}
    assert torch.equal(average_snapshots([s])["w"], s["w"])


@pytest.mark.parametrize(
    ("states", "match"),
    [
        ([], "at least one snapshot"),
        ([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}], "different tensors"),
        ([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], "has shape"),
    ],
)
def test_bad_snapshots_are_named(states: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        average_snapshots(states)
