"""Tests of dwindle.data's IDX reader/writer and the IDX datasets (MNIST, Fashion-MNIST)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import N_TEST, make_idx_dir

import dwindle.data as dd
from dwindle.data import idx as idx_mod
from dwindle.data.paths import locate
from dwindle.errors import ConfigError, DataNotFoundError

# --- IDX format ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = dd.write_idx(tmp_path / f"a-idx3{suffix}", arr)
    back = dd.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, arr)


def test_idx_header_is_mnist_magic(tmp_path):
    dd.write_idx(tmp_path / "l", np.zeros(3, np.uint8))
    dd.write_idx(tmp_path / "i", np.zeros((3, 2, 2), np.uint8))
    assert (tmp_path / "l").read_bytes()[:8] == bytes.fromhex("00000801 00000003")
    assert (tmp_path / "i").read_bytes()[:4] == bytes.fromhex("00000803")


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "plain-name"
    dd.write_idx(tmp_path / "x.gz", np.arange(5, dtype=np.uint8))
    path.write_bytes((tmp_path / "x.gz").read_bytes())
    np.testing.assert_array_equal(dd.read_idx(path), np.arange(5))


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(bytes.fromhex("12345678") + bytes(8))
    with pytest.raises(ConfigError, match=r"bad IDX magic number 0x12345678.*download it again"):
        dd.read_idx(path)


def test_idx_truncated_data(tmp_path):
    path = dd.write_idx(tmp_path / "t", np.zeros((4, 5, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(
        ConfigError, match=r"truncated IDX file.*\(4, 5, 5\) \(100 data bytes\).*93"
    ):
        dd.read_idx(path)


def test_idx_truncated_header_and_tiny_file(tmp_path):
    (tmp_path / "h").write_bytes(bytes.fromhex("00000803 00000004"))
    with pytest.raises(ConfigError, match=r"truncated IDX header \(8 of 16 bytes\)"):
        dd.read_idx(tmp_path / "h")
    (tmp_path / "s").write_bytes(b"\0\0")
    with pytest.raises(ConfigError, match="too short for an IDX header"):
        dd.read_idx(tmp_path / "s")


def test_idx_trailing_bytes(tmp_path):
    path = dd.write_idx(tmp_path / "t", np.zeros(3, np.uint8))
    path.write_bytes(path.read_bytes() + b"xx")
    with pytest.raises(ConfigError, match="trailing bytes"):
        dd.read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = dd.write_idx(tmp_path / "t.gz", np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ConfigError, match="truncated or corrupt gzip file"):
        dd.read_idx(path)


def test_idx_missing_file_and_bad_dtype(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        dd.read_idx(tmp_path / "nope")
    with pytest.raises(ConfigError, match="IDX cannot store dtype int64"):
        dd.write_idx(tmp_path / "x", np.zeros(2, np.int64))


# --- IDX datasets ----------------------------------------------------------------------------


def test_mnist_from_gz_files(tmp_path):
    raw = make_idx_dir(tmp_path, gz=True)
    b = dd.load("mnist", root=tmp_path, val_size=10)
    assert b.name == "mnist" and b.num_classes == 10
    assert b.x_train.shape == (50, 1, 28, 28) and b.x_val.shape == (10, 1, 28, 28)
    assert b.x_test.shape == (20, 1, 28, 28) and b.x_train.dtype == torch.float32
    assert b.y_test.dtype == torch.int64
    expected = (raw["t10k-images-idx3-ubyte"] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(b.x_test[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b.y_test.numpy(), raw["t10k-labels-idx1-ubyte"])


def test_idx_dataset_plain_dotted_files_unnormalised(tmp_path):
    raw = make_idx_dir(tmp_path, gz=False, dotted=True)
    b = dd.load("idx", root=tmp_path, normalize=False)
    assert (b.size("train"), b.size("val"), b.size("test")) == (54, 6, 20)  # 10 % default
    np.testing.assert_allclose(b.x_test[:, 0].numpy(), raw["t10k-images-idx3-ubyte"] / 255.0)
    assert b.num_classes == 10 and b.x_train.min() >= 0.0 and b.x_train.max() <= 1.0


def test_fashion_stats_from_training_split(tmp_path):
    make_idx_dir(tmp_path / "fashion-mnist")  # found as root/<name>
    b = dd.load("fashion-mnist", root=tmp_path, val_size=0)
    assert b.size("val") == 0
    assert abs(float(b.x_train.mean())) < 1e-5 and abs(float(b.x_train.std()) - 1) < 1e-3


def test_val_split_is_seeded_and_disjoint(tmp_path):
    make_idx_dir(tmp_path)
    a = dd.load("mnist", root=tmp_path, val_size=10, seed=1)
    b = dd.load("mnist", root=tmp_path, val_size=10, seed=1)
    c = dd.load("mnist", root=tmp_path, val_size=10, seed=2)
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    rows = {tuple(r.flatten().tolist()) for r in a.x_train}
    assert not any(tuple(r.flatten().tolist()) in rows for r in a.x_val)
    assert torch.equal(a.x_test, c.x_test)  # the official test split never moves


def test_missing_directory_lists_paths_and_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        dd.load("mnist", root=tmp_path / "absent")
    msg = str(info.value)
    assert str(tmp_path / "absent") in msg and "(no such directory)" in msg
    make_idx_dir(tmp_path)
    with pytest.raises(
        DataNotFoundError, match=r"train-images-idx3-ubyte\.gz  \(not a directory\)"
    ):
        dd.load("mnist", root=tmp_path / "train-images-idx3-ubyte.gz")
    assert "train-images-idx3-ubyte[.gz]" in msg and "t10k-labels-idx1-ubyte[.gz]" in msg
    assert "data.root" in msg and "http://yann.lecun.com/exdb/mnist/" in msg


def test_incomplete_directory_names_missing_files(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        dd.load("mnist", root=tmp_path)


def test_default_roots_env_first_and_error_lists_them(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "env" / "kmnist")
    monkeypatch.setenv("DWINDLE_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    assert dd.default_roots("kmnist")[0] == tmp_path / "env" / "kmnist"
    assert dd.load("kmnist", val_size=5).size("test") == N_TEST
    with pytest.raises(DataNotFoundError) as info:
        dd.load("fashion-mnist")
    msg = str(info.value)
    assert str(tmp_path / "env" / "fashion-mnist") in msg
    assert str(tmp_path.parent / "shared" / "data" / "fashion-mnist") in msg  # cwd-relative
    assert "zalandoresearch/fashion-mnist" in msg and "DWINDLE_DATA" in msg


def test_idx_mismatched_counts_and_labels(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    dd.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(N_TEST - 1, np.uint8))
    with pytest.raises(ConfigError, match=f"holds {N_TEST} images but .* holds {N_TEST - 1}"):
        dd.load("mnist", root=tmp_path)
    dd.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(N_TEST, 12, np.uint8))
    with pytest.raises(ConfigError, match=r"label 12 is out of range for num_classes=10"):
        dd.load("mnist", root=tmp_path)


def test_idx_requires_root_and_checks_num_classes(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset 'idx' needs a path: pass root="):
        dd.load("idx")
    make_idx_dir(tmp_path)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2"):
        dd.load("idx", root=tmp_path, num_classes=1)
    assert dd.load("idx", root=tmp_path, num_classes=12).num_classes == 12


def _real_mnist_dir() -> Path | None:
    try:
        return locate("mnist", None, idx_mod._missing, expected=[], source="")
    except DataNotFoundError:
        return None


@pytest.mark.skipif(_real_mnist_dir() is None, reason="shared MNIST data not present")
def test_real_mnist_split_sizes_and_test_label_counts():
    b = dd.load("mnist")
    assert (b.size("train"), b.size("val"), b.size("test")) == (55000, 5000, 10000)
    counts = torch.bincount(b.y_test, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(float(b.x_train.mean())) < 0.01 and abs(float(b.x_train.std()) - 1) < 0.01


def test_gzip_written_idx_is_real_gzip(tmp_path):
    path = dd.write_idx(tmp_path / "a.gz", np.zeros(3, np.uint8))
    assert gzip.decompress(path.read_bytes())[:4] == bytes.fromhex("00000801")
