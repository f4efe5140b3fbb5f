"""Trainer: learning, determinism, callbacks, schedules, early stopping, divergence, configs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from train_helpers import BATCH, FAST, N_TRAIN, make_bundle, make_model, states_equal

from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError, ModelSpecError
from dwindle.models import create
from dwindle.training import (
    Callback,
    TrainConfig,
    TrainState,
    build_optimizer,
    evaluate,
    finetune,
    input_dtype,
    train,
)


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return make_bundle()


def test_learns_separable_problem(data: DataBundle) -> None:
    model = make_model()
    result = train(model, data, TrainConfig(epochs=8, **FAST))
    assert result.val_accuracy is not None and result.val_accuracy >= 0.9
    assert evaluate(model, data, "test")["accuracy"] >= 0.9
    assert [row["epoch"] for row in result.history] == list(range(1, 9))
    row = result.history[-1]
    assert set(row) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                        "lr", "seconds"}  # fmt: skip
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert not result.stopped_early and result.best_epoch is not None
    assert result.to_dict()["history"][0]["epoch"] == 1


def test_same_seed_same_weights_different_seed_differs(data: DataBundle) -> None:
    def run(seed: int) -> dict:
        model = make_model(dropout=0.2)  # dropout draws from the seeded global RNG too
        train(model, data, TrainConfig(epochs=2, seed=seed, **FAST))
        return model.state_dict()

    first = run(3)
    assert states_equal(first, run(3))
    assert not states_equal(first, run(4))


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.metrics: list[dict] = []

    def on_train_begin(self, state: TrainState) -> None:
        self.events.append(("train_begin", state.epoch, state.step))

    def on_epoch_begin(self, state: TrainState) -> None:
        self.events.append(("epoch_begin", state.epoch, state.step))

    def on_step_end(self, state: TrainState) -> None:
        assert math.isfinite(state.loss) and state.optimizer is not None
        self.events.append(("step_end", state.epoch, state.step))

    def on_epoch_end(self, state: TrainState) -> None:
        self.metrics.append(dict(state.metrics))
        self.events.append(("epoch_end", state.epoch, state.step))

    def on_train_end(self, state: TrainState) -> None:
        self.events.append(("train_end", state.epoch, state.step))


def test_callback_hooks_order_and_counts(data: DataBundle) -> None:
    rec = Recorder()
    train(make_model(), data, TrainConfig(epochs=2, **FAST), callbacks=[rec])
    steps = N_TRAIN // BATCH
    expected = [("train_begin", 0, 0)]
    for epoch in (1, 2):
        base = (epoch - 1) * steps
        expected.append(("epoch_begin", epoch, base))
        expected += [("step_end", epoch, base + i) for i in range(1, steps + 1)]
        expected.append(("epoch_end", epoch, base + steps))
    expected.append(("train_end", 2, 2 * steps))
    assert rec.events == expected
    assert [m["epoch"] for m in rec.metrics] == [1, 2]
    assert all(0 <= m["val_accuracy"] <= 1 for m in rec.metrics)


def test_single_callback_and_bad_callback(data: DataBundle) -> None:
    rec = Recorder()
    train(make_model(), data, TrainConfig(epochs=1, **FAST), callbacks=rec)  # type: ignore[arg-type]
    assert rec.events[0][0] == "train_begin"
    with pytest.raises(ConfigError, match=r"callbacks must be dwindle\.training\.Callback"):
        train(make_model(), data, TrainConfig(epochs=1, **FAST), callbacks=[print])  # type: ignore[list-item]


def test_on_step_end_sees_post_step_weights(data: DataBundle) -> None:
    class ZeroOne(Callback):
        def on_step_end(self, state: TrainState) -> None:
            with torch.no_grad():
                state.model.fc1.weight[0, 0] = 0.0

    cfg = TrainConfig(epochs=2, **FAST)
    model = make_model()
    train(model, data, cfg, callbacks=[ZeroOne()])
    assert model.fc1.weight[0, 0].item() == 0.0
    untouched = make_model()
    train(untouched, data, cfg)
    assert untouched.fc1.weight[0, 0].item() != 0.0  # momentum would have moved it


def test_stop_training_flag_ends_run(data: DataBundle) -> None:
    class StopAt(Callback):
        def on_step_end(self, state: TrainState) -> None:
            state.stop_training = state.step >= 2

    result = train(make_model(), data, TrainConfig(epochs=5, **FAST), callbacks=[StopAt()])
    assert len(result.history) == 1 and result.stopped_early


def test_custom_loss_fn_is_used(data: DataBundle) -> None:
    seen = []

    def zero_loss(model, inputs, targets, outputs):
        seen.append((model, inputs.shape, targets.shape, outputs.shape))
        return outputs.sum() * 0.0  # no gradient signal: weights must not move

    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, TrainConfig(epochs=1, **FAST), loss_fn=zero_loss)
    assert len(seen) == N_TRAIN // BATCH
    assert seen[0] == (model, (BATCH, 1, 4, 4), (BATCH,), (BATCH, 3))
    assert states_equal(before, model.state_dict())


def test_loss_fn_must_return_scalar_tensor(data: DataBundle) -> None:
    with pytest.raises(ConfigError, match="loss_fn must return a scalar tensor"):
        train(make_model(), data, TrainConfig(epochs=1, **FAST), loss_fn=lambda m, x, y, o: o)
    with pytest.raises(ConfigError, match="loss_fn must be callable"):
        train(make_model(), data, TrainConfig(epochs=1, **FAST), loss_fn=3)  # type: ignore[arg-type]


def test_early_stopping_stops_and_restores_best() -> None:
    data = make_bundle(flip_val=True)
    snapshots: dict[int, dict] = {}

    class Keep(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            snapshots[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    model = make_model()
    cfg = TrainConfig(epochs=30, early_stopping=2, **FAST)
    result = train(model, data, cfg, callbacks=[Keep()])
    accs = [row["val_accuracy"] for row in result.history]
    best = accs.index(max(accs)) + 1
    assert result.stopped_early and result.best_epoch == best
    assert len(result.history) == best + 2 < 30
    assert result.restored_best and result.val_accuracy == max(accs)
    assert states_equal(model.state_dict(), snapshots[best])


def test_restore_best_false_keeps_last_weights() -> None:
    model = make_model()
    cfg = TrainConfig(epochs=30, early_stopping=1, restore_best=False, **FAST)
    result = train(model, make_bundle(flip_val=True), cfg)
    assert not result.restored_best
    assert result.val_accuracy == result.history[-1]["val_accuracy"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"epochs": -1}, "TrainConfig.epochs"),
        ({"lr": 0}, "TrainConfig.lr"),
        ({"batch_size": 0}, "TrainConfig.batch_size"),
        ({"optimizer": "rmsprop"}, "TrainConfig.optimizer"),
        ({"schedule": "linear"}, "TrainConfig.schedule"),
        ({"momentum": 1.5}, "TrainConfig.momentum"),
        ({"gamma": 0}, "TrainConfig.gamma"),
        ({"early_stopping": 0}, "TrainConfig.early_stopping"),
        ({"monitor": "acc"}, "TrainConfig.monitor"),
        ({"label_smoothing": 1.0}, "TrainConfig.label_smoothing"),
        ({"grad_clip": 0}, "TrainConfig.grad_clip"),
        ({"milestones": [3, 2]}, "TrainConfig.milestones: Value error, milestones must be"),
        ({"device": "gpu"}, "TrainConfig.device: Value error, not a torch device"),
        ({"lrr": 0.1}, "TrainConfig.lrr: unknown key; did you mean 'lr'?"),
        ({"schedule": "multistep"}, "schedule='multistep' needs milestones"),
        ({"nesterov": True, "momentum": 0}, "nesterov=True needs momentum > 0"),
        ({"schedule": "onecycle", "warmup_epochs": 1}, "set warmup_epochs=0"),
        ({"epochs": 2, "warmup_epochs": 3}, "warmup_epochs (3) exceeds epochs (2)"),
    ],
)
def test_bad_train_config_names_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**values)
    assert field in str(info.value)
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values)
    assert field in str(info.value)


def test_config_round_trips() -> None:
    cfg = TrainConfig(schedule="multistep", milestones=(2, 4), optimizer="adamw", epochs=5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_finetune_defaults_and_overrides(data: DataBundle) -> None:
    result = finetune(make_model(), data, progress=False)
    assert len(result.history) == 1 and result.history[0]["lr"] == pytest.approx(0.01)
    result = finetune(make_model(), data, TrainConfig(epochs=2, **FAST), lr=0.001)
    assert len(result.history) == 2 and result.history[0]["lr"] == pytest.approx(0.001)
    with pytest.raises(ConfigError, match=r"TrainConfig\.lr"):
        finetune(make_model(), data, lr=-1)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        finetune(make_model(), data, epoch=3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_build_and_train(data: DataBundle, optimizer: str) -> None:
    cfg = TrainConfig(epochs=3, optimizer=optimizer, weight_decay=1e-4, **FAST)
    opt = build_optimizer(make_model(), cfg)
    assert type(opt).__name__.lower() == optimizer
    lr = 0.01 if optimizer != "sgd" else 0.05
    result = train(make_model(), data, cfg.model_copy(update={"lr": lr}))
    assert result.val_accuracy is not None and result.val_accuracy > 0.8


def test_fp64_model_trains(data: DataBundle) -> None:
    model = make_model().double()
    assert input_dtype(model) is torch.float64
    result = train(model, data, TrainConfig(epochs=6, **FAST))
    assert result.val_accuracy is not None and result.val_accuracy >= 0.9
    assert all(p.dtype is torch.float64 for p in model.parameters())


def test_float32_opt_out_keeps_inputs_float32(data: DataBundle) -> None:
    class Casting(nn.Module):
        dwindle_accepts_float32 = True

        def __init__(self) -> None:
            super().__init__()
            self.inner = make_model().double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.dtype is torch.float32
            return self.inner(x.double())

    model = Casting()
    assert input_dtype(model) is None
    train(model, data, TrainConfig(epochs=1, **FAST))


def test_evaluate_counts_and_restores_mode(data: DataBundle) -> None:
    model = make_model().train()
    metrics = evaluate(model, data, "test", batch_size=50)
    assert metrics["n"] == 192 and model.training
    assert metrics["errors"] == round((1 - metrics["accuracy"]) * 192)
    assert metrics["loss"] > 0
    model.eval()
    evaluate(model, data)
    assert not model.training


def test_epochs_zero_only_evaluates(data: DataBundle) -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, data, TrainConfig(epochs=0, progress=False))
    assert result.history == [] and result.val_accuracy == evaluate(model, data)["accuracy"]
    assert states_equal(before, model.state_dict())


def test_progress_prints_epoch_summary(data: DataBundle, capsys: pytest.CaptureFixture) -> None:
    train(make_model(), data, TrainConfig(epochs=1, batch_size=BATCH, progress=True))
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "val loss" in err and "lr 0.1" in err


def test_bad_inputs_raise_with_message(data: DataBundle) -> None:
    cfg = TrainConfig(epochs=1, **FAST)
    with pytest.raises(ModelSpecError, match="create the model with num_classes=3"):
        train(create("mlp", num_classes=2, input_shape=(1, 4, 4)), data, cfg)
    with pytest.raises(ModelSpecError, match=r"build the model for input_shape=\(1, 4, 4\)"):
        train(create("lenet300", num_classes=3), data, cfg)
    with pytest.raises(ConfigError, match="data must be a dwindle DataBundle"):
        train(make_model(), [1, 2], cfg)  # type: ignore[arg-type]
    with pytest.raises(ModelSpecError, match="has no trainable parameters"):
        train(nn.Flatten(), data, cfg)
    no_val = make_bundle(n_val=0)
    with pytest.raises(ConfigError, match="empty val split"):
        train(make_model(), no_val, TrainConfig(epochs=1, early_stopping=2, **FAST))
    with pytest.raises(ConfigError, match="split 'val' of dataset 'toy' is empty"):
        evaluate(make_model(), no_val)
    result = train(make_model(), no_val, cfg)
    assert result.val_accuracy is None and math.isnan(result.history[0]["val_loss"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(make_model(), data, TrainConfig(epochs=1, device="cuda", progress=False))


def test_mask_buffers_keep_pruned_weights_zero_through_training(data: DataBundle) -> None:
    model = make_model()
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    mask = (torch.rand_like(first.weight) > 0.7).float()
    first.register_buffer("weight_mask", mask)
    with torch.no_grad():
        first.weight.mul_(mask)
    cfg = TrainConfig(
        epochs=2, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, progress=False
    )
    train(model, data, cfg)
    assert torch.all(first.weight[mask == 0] == 0)
    assert torch.count_nonzero(first.weight[mask == 1]) > 0
