"""``TrainConfig(compile=True)`` in distillation compiles the frozen teacher's forward too."""

import copy
from typing import Any

import pytest
import torch
from distill_helpers import FAST, _mlp, _one_thread, digits, teacher  # noqa: F401 (fixtures)
from torch import nn

from dwindle.distillation import DistillConfig, distill

KD = DistillConfig(temperature=1.0, alpha=0.5, cache_mb=0)
HINT = "relu1"


def _compile_spy(monkeypatch: pytest.MonkeyPatch, broken: nn.Module | None = None) -> list[Any]:
    """Record what torch.compile is asked to compile; the module ``broken`` gets a forward that
    raises (every other module is compiled for real)."""
    seen: list[Any] = []
    real = torch.compile

    def spy(model: Any, *args: Any, **kw: Any) -> Any:
        seen.append(model)
        if model is broken:

            def call(x: torch.Tensor) -> torch.Tensor:
                raise RuntimeError("backend exploded")

            return call
        return real(model, *args, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    return seen


def test_compiled_distillation_compiles_the_teacher_and_matches_eager(
    digits: Any, teacher: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, compiled = _mlp(digits), _mlp(digits)
    distill(eager, teacher, digits, KD, train={**FAST, "epochs": 1})
    seen = _compile_spy(monkeypatch)
    distill(compiled, teacher, digits, KD, train={**FAST, "epochs": 1, "compile": True})
    assert any(m is teacher for m in seen)  # the teacher's forward went through the compiler
    start = _mlp(digits).state_dict()
    a, b = eager.state_dict(), compiled.state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # it trained
    for k in a:  # the same targets, so the same weights (fusion may reorder float sums)
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_a_teacher_that_fails_to_compile_runs_eagerly_with_a_warning(
    digits: Any, teacher: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, compiled = _mlp(digits), _mlp(digits)
    distill(eager, teacher, digits, KD, train={**FAST, "epochs": 1})
    _compile_spy(monkeypatch, broken=teacher)
    with pytest.warns(UserWarning, match="could not compile the teacher.*backend exploded"):
        distill(compiled, teacher, digits, KD, train={**FAST, "epochs": 1, "compile": True})
    for k, v in eager.state_dict().items():  # training went on with the eager teacher
        torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-4, atol=1e-5)


def test_a_teacher_feeding_hints_is_not_compiled(
    digits: Any, teacher: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _compile_spy(monkeypatch)
    cfg = DistillConfig(hints=[{"student": HINT, "teacher": HINT}], cache_mb=0)
    frozen = copy.deepcopy(teacher)
    student = _mlp(digits, hidden=(64,))
    distill(student, frozen, digits, cfg, train={**FAST, "epochs": 1, "compile": True})
    assert seen and all(m is not frozen for m in seen)  # only the student was compiled


def test_errors_after_the_first_compiled_call_are_raised_not_hidden(
    digits: Any, teacher: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dwindle.distillation import TeacherSet

    calls = []

    def flaky_compile(model: Any, *args: Any, **kw: Any) -> Any:
        def call(x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            if len(calls) > 1:
                raise RuntimeError("a genuine teacher bug on batch 2")
            return model(x)

        return call

    monkeypatch.setattr(torch, "compile", flaky_compile)
    teachers = TeacherSet(teacher)
    teachers.compile()
    x = digits.x_test[:4]
    torch.testing.assert_close(teachers(x), teacher(x).detach())  # compiled and first: fine
    with pytest.raises(RuntimeError, match="genuine teacher bug"):
        teachers(x)  # not taken for a compiler failure, not switched to eager silently
