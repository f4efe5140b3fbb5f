"""Trainer: lr schedules, divergence handling, checkpoints, gradient clipping, torch.compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from train_helpers import FAST, make_bundle, make_model, states_equal

from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError, TrainingDivergedError
from dwindle.training import Callback, LRMultiplier, TrainConfig, TrainState, train


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return make_bundle()


def lrs(schedule: str, epochs: int = 6, spe: int = 1, **kw) -> list[float]:
    cfg = TrainConfig(schedule=schedule, epochs=epochs, **kw)
    mult = LRMultiplier(cfg, spe)
    return [round(mult(step), 6) for step in range(epochs * spe)]


def test_schedule_multipliers() -> None:
    assert lrs("constant") == [1.0] * 6
    assert lrs("step", step_size=2, gamma=0.5) == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lrs("multistep", milestones=(1, 3), gamma=0.1) == [1, 0.1, 0.1, 0.01, 0.01, 0.01]
    assert lrs("exponential", epochs=3, gamma=0.5) == [1, 0.5, 0.25]
    cos = lrs("cosine", epochs=10)
    assert cos[0] == 1.0 and cos[-1] < 0.05 and cos == sorted(cos, reverse=True)
    assert lrs("constant", epochs=4, spe=2, warmup_epochs=1) == [0.5, 1, 1, 1, 1, 1, 1, 1]
    one = lrs("onecycle", epochs=10, spe=10)
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0, abs=1e-3)
    assert one.index(max(one)) == 30 and one[-1] < 1e-4


def test_schedule_drives_optimizer_lr(data: DataBundle) -> None:
    cfg = TrainConfig(epochs=4, schedule="step", step_size=1, gamma=0.5, **FAST)
    result = train(make_model(), data, cfg)
    assert [row["lr"] for row in result.history] == pytest.approx([0.05, 0.025, 0.0125, 0.00625])


def nan_at(step: int):
    calls = [0]

    def loss_fn(model, inputs, targets, outputs):
        calls[0] += 1
        loss = F.cross_entropy(outputs, targets)
        return loss * float("nan") if calls[0] == step else loss

    return loss_fn


def test_non_finite_loss_restores_last_good_and_saves(data: DataBundle, tmp_path: Path) -> None:
    snapshots: dict[int, dict] = {}

    class Keep(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            snapshots[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    model, ckpt = make_model(), tmp_path / "sub" / "last_good.safetensors"
    with pytest.raises(TrainingDivergedError) as info:
        train(model, data, TrainConfig(epochs=3, **FAST), callbacks=[Keep()],
              loss_fn=nan_at(8), checkpoint_path=ckpt)  # fmt: skip
    message = str(info.value)
    assert "loss became nan at epoch 2, batch 2 (optimizer step 8)" in message
    assert "lower the learning rate" in message and "grad_clip" in message
    assert "end of epoch 1" in message and str(ckpt) in message
    assert states_equal(model.state_dict(), snapshots[1])
    assert states_equal(load_file(ckpt), snapshots[1])


def test_divergence_on_first_step_restores_initial_weights(data: DataBundle) -> None:
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match="initial weights"):
        train(model, data, TrainConfig(epochs=1, **FAST), loss_fn=nan_at(1))
    assert states_equal(model.state_dict(), initial)


def test_huge_lr_diverges_cleanly(data: DataBundle) -> None:
    with pytest.raises(TrainingDivergedError, match="training diverged"):
        train(make_model(), data, TrainConfig(epochs=5, **{**FAST, "lr": 1e18}))


def test_checkpoint_holds_final_weights(data: DataBundle, tmp_path: Path) -> None:
    model, ckpt = make_model(), tmp_path / "w.safetensors"
    train(model, data, TrainConfig(epochs=2, **FAST), checkpoint_path=ckpt)
    assert states_equal(load_file(ckpt), model.state_dict())


def test_grad_clip_bounds_gradient_norm(data: DataBundle) -> None:
    norms = []

    class Norm(Callback):
        def on_step_end(self, state: TrainState) -> None:
            grads = [p.grad.norm() for p in state.model.parameters()]
            norms.append(torch.stack(grads).norm().item())

    train(make_model(), data, TrainConfig(epochs=1, grad_clip=0.01, **FAST), callbacks=[Norm()])
    assert max(norms) <= 0.01 + 1e-6


def test_compiled_forward_trains_like_eager(data: DataBundle) -> None:
    """``compile=True`` trains the same parameters through torch.compile: the weights end where
    eager training puts them (fusion may reorder float sums, hence the tolerance)."""
    eager, compiled = make_model(), make_model()
    cfg = TrainConfig(epochs=1, **FAST)
    plain = train(eager, data, cfg)
    result = train(compiled, data, cfg.model_copy(update={"compile": True}))
    assert result.epochs_run == 1
    # every batch's predictions are counted, the first compiled one's too
    assert result.history[0]["train_accuracy"] == plain.history[0]["train_accuracy"]
    a, b = eager.state_dict(), compiled.state_dict()
    assert a.keys() == b.keys()
    moved = max((a[k] - make_model().state_dict()[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # training changed the weights, so the comparison below means something
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_compile_failure_names_the_fix_and_restores_weights(
    data: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_compile(model: torch.nn.Module) -> object:
        def call(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("backend exploded")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"backend exploded.*compile=False"):
        train(model, data, TrainConfig(epochs=1, compile=True, **FAST))
    assert states_equal(model.state_dict(), before)
