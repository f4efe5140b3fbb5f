"""Tests of dwindle.data: digits/synthetic/npz/mnist1d datasets, the registry and load()."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dwindle.data as dd
from dwindle.data import mnist1d as m1d
from dwindle.data.registry import _REGISTRY
from dwindle.errors import ConfigError, DataNotFoundError, MissingExtraError

# --- digits, synthetic -----------------------------------------------------------------------


def test_digits_split_and_determinism():
    a = dd.load("digits", seed=3)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert (a.size("train"), a.size("val"), a.size("test")) == (1078, 360, 359)
    b, c = dd.load("digits", seed=3), dd.load("digits", seed=4)
    for split in dd.SPLITS:
        assert torch.equal(a.split(split)[0], b.split(split)[0])
    assert not torch.equal(a.x_test, c.x_test) and not torch.equal(a.x_val, c.x_val)
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3
    raw = dd.load("digits", normalize=False, val_size=0.5)
    assert raw.size("val") == 719 and float(raw.x_train.max()) == 1.0


def test_builtin_dataset_rejects_root(tmp_path):
    with pytest.raises(ConfigError, match=r"'digits' is built in and takes no root"):
        dd.load("digits", root=tmp_path)


def test_synthetic_shapes_classes_and_learnable():
    b = dd.load("synthetic", n_samples=500, num_classes=4, shape=[3, 5], seed=1)
    assert b.input_shape == (3, 5) and b.num_classes == 4
    assert (b.size("train"), b.size("val"), b.size("test")) == (360, 40, 100)
    assert set(b.y_train.tolist()) == {0, 1, 2, 3}
    # Nearest class mean from the training split classifies the test split well.
    flat = b.x_train.flatten(1)
    means = torch.stack([flat[b.y_train == k].mean(0) for k in range(4)])
    pred = torch.cdist(b.x_test.flatten(1), means).argmin(1)
    assert (pred == b.y_test).float().mean() > 0.9
    again = dd.load("synthetic", n_samples=500, num_classes=4, shape=[3, 5], seed=1)
    assert torch.equal(b.x_train, again.x_train)
    assert not torch.equal(b.x_train, dd.load("synthetic", n_samples=500, num_classes=4,
                                              shape=[3, 5], seed=2).x_train)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_samples": 2}, "n_samples must be an integer >= 5"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"shape": "1x8"}, r"shape must be a list of ints like \[1, 8, 8\]"),
        ({"shape": [1, 0]}, "shape entries must be an integer >= 1"),
        ({"noise": -1}, "noise must be a number >= 0"),
    ],
)
def test_synthetic_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        dd.load("synthetic", **options)


# --- npz -------------------------------------------------------------------------------------


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _arrays(n_train=30, n_test=10, dtype=np.float32):
    gen = np.random.default_rng(0)
    return {
        "x_train": gen.random((n_train, 2, 3)).astype(dtype),
        "y_train": np.arange(n_train) % 3,
        "x_test": gen.random((n_test, 2, 3)).astype(dtype),
        "y_test": np.arange(n_test) % 3,
    }


def test_npz_round_trip(tmp_path):
    arrays = _arrays()
    b = dd.load("npz", root=_npz(tmp_path / "d.npz", **arrays), normalize=False, val_size=0)
    assert b.name == "npz" and b.num_classes == 3
    np.testing.assert_array_equal(b.x_train.numpy(), arrays["x_train"])
    np.testing.assert_array_equal(b.y_test.numpy(), arrays["y_test"])
    own_val = dict(arrays, x_val=arrays["x_test"][:4], y_val=arrays["y_test"][:4])
    b = dd.load("npz", root=_npz(tmp_path / "v.npz", **own_val), num_classes=5)
    assert b.size("val") == 4 and b.num_classes == 5
    assert abs(float(b.x_train.mean())) < 1e-5
    u8 = {**arrays, "x_train": np.full((30, 2, 3), 255, np.uint8)}
    u8["x_test"] = np.zeros((10, 2, 3), np.uint8)
    b = dd.load("npz", root=_npz(tmp_path / "u.npz", **u8), normalize=False)
    assert float(b.x_train.max()) == 1.0 and b.size("val") == 3


def test_npz_missing_keys(tmp_path):
    arrays = _arrays()
    del arrays["y_test"]
    path = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(
        ConfigError, match=r"missing key\(s\) y_test; the file has x_test, x_train, y_train"
    ):
        dd.load("npz", root=path)
    path = _npz(tmp_path / "v.npz", **_arrays(), x_val=np.zeros((2, 2, 3)))
    with pytest.raises(ConfigError, match=r"missing key\(s\) y_val"):
        dd.load("npz", root=path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_train": np.arange(30) * 0.5}, "labels must be integers, got dtype float64"),
        ({"y_test": -np.ones(10, int)}, "labels must be >= 0, found -1"),
        ({"y_test": np.arange(10)}, r"label 9 is out of range for num_classes=3"),
        ({"y_train": np.arange(29) % 3}, "x_train has 30 samples but y_train has 29"),
        ({"x_test": np.zeros((10, 3, 2))}, "sample shapes differ between splits"),
        ({"x_test": np.zeros(10)}, r"x_test must be a numeric array shaped \(N, ...\)"),
    ],
)
def test_npz_bad_arrays(tmp_path, change, message):
    path = _npz(tmp_path / "d.npz", **{**_arrays(), **change})
    with pytest.raises(ConfigError, match=message):
        dd.load("npz", root=path, num_classes=3)


def test_npz_bad_files(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"does not exist; pass root='<file>.npz'"):
        dd.load("npz", root=tmp_path / "nope.npz")
    with pytest.raises(ConfigError, match=r"is a directory; pass the path of the \.npz file"):
        dd.load("npz", root=tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"not a \.npz archive \(no zip header\)"):
        dd.load("npz", root=tmp_path / "junk.npz")
    (tmp_path / "cut.npz").write_bytes(_npz(tmp_path / "ok.npz", **_arrays()).read_bytes()[:200])
    with pytest.raises(ConfigError, match=r"not a readable \.npz archive"):
        dd.load("npz", root=tmp_path / "cut.npz")
    objects = np.array([{"a": 1}] * 30, dtype=object)
    path = _npz(tmp_path / "o.npz", **{**_arrays(), "x_train": objects})
    with pytest.raises(ConfigError, match="store plain numeric arrays"):
        dd.load("npz", root=path)
    own_val = _npz(tmp_path / "v.npz", **_arrays(), x_val=np.zeros((2, 2, 3)), y_val=np.zeros(2))
    with pytest.raises(ConfigError, match="has its own x_val/y_val, so val_size=5 cannot apply"):
        dd.load("npz", root=own_val, val_size=5)


# --- load(): limit, val_size, names, options -------------------------------------------------


def test_limit_is_a_seeded_subset_of_train():
    full = dd.load("synthetic", seed=5)
    small = dd.load("synthetic", seed=5, limit=100)
    assert small.size("train") == 100
    assert torch.equal(small.x_val, full.x_val) and torch.equal(small.x_test, full.x_test)
    rows = {tuple(r.flatten().tolist()) for r in full.x_train}
    assert all(tuple(r.flatten().tolist()) in rows for r in small.x_train)
    assert torch.equal(small.x_train, dd.load("synthetic", seed=5, limit=100).x_train)
    assert dd.load("synthetic", limit=10**6).size("train") == full.size("train")


def test_val_size_count_and_fraction():
    assert dd.load("synthetic", val_size=100).size("val") == 100
    assert dd.load("synthetic", val_size=0.25).size("val") == 400  # of the 1600 training pool


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_size": 1600}, r"val_size=1600 leaves no training samples: .* has 1600"),
        ({"val_size": 1.5}, r"fraction and must lie in \[0, 1\)"),
        ({"val_size": -3}, "val_size must be >= 0"),
        ({"val_size": "10"}, "val_size must be an int"),
        ({"val_size": True}, "val_size must be an int"),
        ({"limit": 0}, "limit must be an integer >= 1, got 0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"normalize": "yes"}, "normalize must be True or False"),
    ],
)
def test_load_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        dd.load("synthetic", **kwargs)


def test_unknown_dataset_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown dataset 'mnsit'; did you mean 'mnist'\?"):
        dd.load("mnsit")
    with pytest.raises(ConfigError, match=r"known datasets: cifar10, digits, fashion-mnist, idx"):
        dd.load("imagenet")
    assert dd.dataset_spec("Fashion_MNIST").name == "fashion-mnist"


def test_unknown_option_named():
    with pytest.raises(
        ConfigError,
        match=r"'synthetic' has no option 'n_sample'; did you mean 'n_samples'\?; its options "
        r"are: n_samples, num_classes, shape, noise",
    ):
        dd.load("synthetic", n_sample=10)
    with pytest.raises(
        ConfigError, match=r"'digits' has no option 'foo'; its options are: \(none\)"
    ):
        dd.load("digits", foo=1)


def test_available_datasets_and_specs():
    names = dd.available_datasets()
    expected = {"mnist", "fashion-mnist", "kmnist", "idx", "digits", "mnist1d", "synthetic", "npz"}
    assert expected <= set(names) and names == sorted(names)
    spec = dd.dataset_spec("synthetic")
    assert spec.options["n_samples"] == 2000 and spec.root == "none" and spec.summary


def test_register_custom_dataset(monkeypatch):
    dd.available_datasets()  # register the built-ins before copying the registry
    monkeypatch.setattr("dwindle.data.registry._REGISTRY", dict(_REGISTRY))

    @dd.register_dataset("Tiny_Set", root="none")
    def _tiny(root, *, seed, val_size, normalize, size=4):
        """A tiny test dataset."""
        x = torch.full((size, 2), float(seed))
        y = torch.zeros(size, dtype=torch.int64)
        return dd.DataBundle("tiny-set", x, y, x[:1], y[:1], x[:1], y[:1], 1)

    b = dd.load("tiny-set", seed=2, size=6)
    assert b.size("train") == 6 and float(b.x_train[0, 0]) == 2.0
    assert dd.dataset_spec("tiny-set").summary == "A tiny test dataset."


def test_register_dataset_validates_loader():
    with pytest.raises(ConfigError, match="must take keyword-only parameters seed, val_size"):
        dd.register_dataset("bad")(lambda root, seed, val_size, normalize: None)
    with pytest.raises(ConfigError, match="options size need default values"):

        @dd.register_dataset("bad")
        def _bad(root, *, seed, val_size, normalize, size): ...

    with pytest.raises(ConfigError, match="register_dataset root='maybe'"):
        dd.register_dataset("bad", root="maybe")
    assert "bad" not in dd.available_datasets()


def test_bundle_batches_and_calib_deterministic():
    b = dd.load("synthetic", seed=0)
    first = [y.tolist() for _, y in b.batches("train", 64, shuffle=True, seed=3)]
    again = [y.tolist() for _, y in b.batches("train", 64, shuffle=True, seed=3)]
    other = [y.tolist() for _, y in b.batches("train", 64, shuffle=True, seed=4)]
    assert first == again and first != other
    assert sum(len(y) for y in first) == b.size("train")
    assert torch.equal(b.calib(32, seed=1), dd.load("synthetic", seed=0).calib(32, seed=1))
    assert b.calib(32).shape == (32, 1, 8, 8)


# --- mnist1d ---------------------------------------------------------------------------------


def test_mnist1d_generates_caches_and_keeps_global_rng(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.setenv("DWINDLE_CACHE", str(tmp_path))
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    b = dd.load("mnist1d", seed=1)
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    assert b.input_shape == (1, 40) and b.num_classes == 10
    assert (b.size("train"), b.size("val"), b.size("test")) == (3600, 400, 1000)
    cache = m1d.mnist1d_cache_path()
    assert cache.parent == tmp_path and cache.is_file()
    assert not list(tmp_path.glob("*.tmp"))  # temp file replaced, not left behind

    def fail(seed):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(m1d, "_generate", fail)
    again = dd.load("mnist1d", seed=1)
    assert torch.equal(again.x_train, b.x_train) and torch.equal(again.y_test, b.y_test)


def _fake_arrays(seed):
    x = np.arange(50 * 40, dtype=np.float32).reshape(50, 1, 40) + seed
    return {"x_train": x[:40], "y_train": np.arange(40) % 10, "x_test": x[40:],
            "y_test": np.arange(10)}  # fmt: skip


def test_mnist1d_damaged_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("DWINDLE_CACHE", str(tmp_path))
    monkeypatch.setattr(m1d, "_generate", _fake_arrays)
    m1d.mnist1d_cache_path(7).write_bytes(b"garbage")
    b = dd.load("mnist1d", generation_seed=7, normalize=False, val_size=0)
    assert float(b.x_train[0, 0, 0]) == 7.0
    assert m1d._read_cache(m1d.mnist1d_cache_path(7)) is not None


def test_mnist1d_unwritable_cache_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("DWINDLE_CACHE", str(blocker / "sub"))
    monkeypatch.setattr(m1d, "_generate", _fake_arrays)
    with pytest.warns(RuntimeWarning, match="could not cache mnist1d.*DWINDLE_CACHE"):
        assert dd.load("mnist1d", val_size=5).size("train") == 35


def test_mnist1d_bad_option_and_missing_extra(monkeypatch):
    with pytest.raises(ConfigError, match=r"generation_seed must be an integer in \[0, 2\*\*32\)"):
        dd.load("mnist1d", generation_seed=-1)

    def not_installed(name):
        raise m1d.PackageNotFoundError(name)

    monkeypatch.setattr(m1d, "version", not_installed)
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    with pytest.raises(MissingExtraError, match=r"pip install .*'dwindle\[mnist1d\]'"):
        dd.load("mnist1d")
