"""dwindle.export: atomic writes, the format registry, checkpoint loading, ONNX round trip."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dwindle._imports import available
from dwindle.errors import (
    CheckpointError,
    ConfigError,
    DwindleError,
    MissingExtraError,
    OutputDirError,
)
from dwindle.export import (
    atomic_write,
    atomic_write_bytes,
    check_onnx,
    default_format,
    ensure_dir,
    export_onnx,
    load_weights,
    onnx_io,
    register_format,
    registered_formats,
    save,
)
from dwindle.export import formats as formats_module
from dwindle.metrics import artifact_bytes


def mlp(hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 6, bias=False)
        self.dec = nn.Linear(6, 6, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.relu(self.enc(x)))


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_write_replaces_and_sets_a_readable_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.stat(target).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_keeps_old_file_and_removes_temp_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half-written")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_unwritable_directory_raises_output_dir_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a directory cannot be created under a regular file, even as root
    with pytest.raises(OutputDirError, match=r"cannot create output directory .*file/sub"):
        atomic_write_bytes(blocker / "sub" / "a.bin", b"data")
    with pytest.raises(OutputDirError, match="choose a directory you can write to"):
        ensure_dir(blocker / "sub")
    with pytest.raises(OutputDirError, match="exists but is not a directory"):
        ensure_dir(blocker)


# --- formats ---------------------------------------------------------------------------------


def test_safetensors_round_trip_gives_same_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, fresh = mlp(), mlp()
    path = save(model, tmp_path / "m.safetensors")
    x = torch.randn(4, 8)
    assert not torch.equal(model(x), fresh(x))
    load_weights(fresh, path)
    assert torch.equal(model(x), fresh(x))


def test_tied_weights_saved_once_and_reloaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, fresh = Tied(), Tied()
    path = save(model, tmp_path / "tied.safetensors")
    assert path.stat().st_size < 6 * 6 * 4 * 2  # one copy of the shared 6x6 weight
    load_weights(fresh, path)
    x = torch.randn(2, 6)
    assert torch.equal(model(x), fresh(x))
    assert fresh.dec.weight is fresh.enc.weight


def test_default_format_follows_model_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp()
    assert default_format(model) == "safetensors"
    model.dwindle_format = "packed-test"
    assert default_format(model) == "packed-test"


def test_registered_format_is_used_for_save_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats_module, "_FORMATS", dict(formats_module._FORMATS))
    register_format("tiny-test", lambda model, path: path.write_bytes(b"12345"))
    model = mlp()
    model.dwindle_format = "tiny-test"
    assert "tiny-test" in registered_formats()
    assert save(model, tmp_path / "m.bin").read_bytes() == b"12345"
    assert artifact_bytes(model) == (5, "tiny-test")


def test_unknown_format_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown export format 'nope'.*safetensors"):
        save(mlp(), tmp_path / "m.bin", "nope")


# --- load_weights errors and checkpoint shapes ----------------------------------------------


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    sd = mlp().state_dict()
    sd["extra.weight"] = torch.zeros(2)
    del sd["2.bias"]
    torch.save(sd, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(mlp(), tmp_path / "ck.pt")
    msg = str(err.value)
    assert "missing keys (in the model, not in the checkpoint): 2.bias" in msg
    assert "unexpected keys (in the checkpoint, not the model): extra.weight" in msg
    assert "hint:" in msg


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    save(mlp(hidden=32), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_weights(mlp(hidden=16), tmp_path / "wide.safetensors")
    msg = str(err.value)
    assert "0.weight: checkpoint (32, 8) vs model (16, 8)" in msg
    assert "2.weight: checkpoint (3, 32) vs model (3, 16)" in msg


def test_dataparallel_prefix_and_nested_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = mlp()
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "a.pt")
    torch.save({"model": model.state_dict(), "note": "x"}, tmp_path / "b.pt")
    x = torch.randn(3, 8)
    for name in ("a.pt", "b.pt"):
        fresh = mlp()
        load_weights(fresh, tmp_path / name)
        assert torch.equal(fresh(x), model(x))


class _Opaque:
    pass


def test_pickled_objects_are_refused_with_conversion_hint(tmp_path: Path) -> None:
    torch.save({"weights": mlp().state_dict(), "thing": _Opaque()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(mlp(), tmp_path / "evil.pt")
    msg = str(err.value)
    assert "refuses to unpickle arbitrary objects" in msg
    assert "_Opaque" in msg
    assert "model.state_dict()" in msg and "safetensors" in msg


def test_bad_checkpoint_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(mlp(), tmp_path / "absent.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        load_weights(mlp(), tmp_path / "tensor.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"contains no tensors \(top-level keys: epoch\)"):
        load_weights(mlp(), tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(mlp(), tmp_path / "junk.pt")


# --- ONNX ------------------------------------------------------------------------------------

needs_ort = pytest.mark.skipif(
    not (available("onnx") and available("onnxruntime")), reason="needs dwindle[onnx]"
)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@needs_ort
def test_onnx_export_round_trip_with_dynamic_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fallback(*args: object) -> None:
        raise AssertionError("the dynamo exporter should have handled this model")

    monkeypatch.setattr(onnx_io, "_export_torchscript", no_fallback)
    torch.manual_seed(0)
    model = ConvNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert model.training  # the user's model is not switched to eval
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    diff = check_onnx(path, model, torch.randn(5, 1, 8, 8))  # batch 5 though exported at 1
    assert diff < 1e-4


@needs_ort
def test_onnx_falls_back_to_torchscript_and_check_catches_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("dynamo cannot trace")

    monkeypatch.setattr(onnx_io, "_export_dynamo", broken)
    model = mlp().eval()
    path = export_onnx(model, torch.randn(1, 8), tmp_path / "m.onnx")
    assert check_onnx(path, model, torch.randn(4, 8)) < 1e-4
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(DwindleError, match="disagrees with torch: max abs difference"):
        check_onnx(path, model, torch.randn(4, 8))


@needs_ort
def test_onnx_both_exporters_failing_names_the_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("Unsupported: aten::weird_op.default has no ONNX symbolic")

    monkeypatch.setattr(onnx_io, "_export_dynamo", broken)
    monkeypatch.setattr(onnx_io, "_export_torchscript", broken)
    with pytest.raises(DwindleError) as err:
        export_onnx(mlp(), torch.randn(1, 8), tmp_path / "m.onnx")
    msg = str(err.value)
    assert "failed with both exporters" in msg
    assert "dynamo exporter" in msg and "torchscript exporter" in msg
    assert "aten::weird_op" in msg
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_without_extra_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(MissingExtraError, match=r"dwindle\[onnx\]"):
        export_onnx(mlp(), torch.randn(1, 8), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"dwindle\[onnx\]"):
        check_onnx(tmp_path / "m.onnx", mlp(), torch.randn(1, 8))


class _Opaque(nn.Module):
    """Computes outside torch (as a wrapped runtime does): tracing sees a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        return torch.tensor(np.asarray(x.tolist()) * 2.0, dtype=torch.float32)


@needs_ort
def test_onnx_export_refuses_a_graph_that_ignores_its_input(tmp_path: Path) -> None:
    with pytest.raises(DwindleError, match=r"takes 0 input\(s\) but the model was called with 1"):
        export_onnx(_Opaque(), torch.randn(2, 8), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@needs_ort
def test_onnx_export_of_an_onnxruntime_int8_model_writes_its_own_graph(tmp_path: Path) -> None:
    import dwindle as dw
    from dwindle.quantization import Int8Static

    q = dw.quantize(mlp().eval(), Int8Static(), calibration=torch.randn(64, 8))
    path = export_onnx(q, torch.randn(2, 8), tmp_path / "q.onnx")
    assert path.read_bytes() == q.onnx_bytes
    assert check_onnx(path, q, torch.randn(5, 8)) == 0.0


def test_load_weights_reads_dwindle_sparse_files_and_explains_the_rest(tmp_path: Path) -> None:
    import dwindle as dw

    model = mlp()
    dw.prune_(model, dw.Prune(method="magnitude", ratio=0.5))
    path = save(model, tmp_path / "m.sparse")
    fresh = mlp()
    load_weights(fresh, path)  # recognised by its magic bytes, loaded by its own loader
    assert torch.equal(fresh[0].weight, model[0].weight * model[0].weight_mask)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError, match="is an ONNX model: it runs in onnxruntime"):
        load_weights(fresh, onnx_file)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(200, 256)) * 3)
    with pytest.raises(CheckpointError, match="never unpickles") as info:
        load_weights(fresh, junk)
    assert "weights_only" not in str(info.value)  # no advice to turn the safety off


def test_a_strip_prefix_that_matches_no_key_is_an_error(tmp_path: Path) -> None:
    path = save(mlp(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"no key of .* starts with strip_prefix 'foo\.'"):
        load_weights(mlp(), path, strip_prefix="foo.")
