import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from dwindle import data as dwdata
from dwindle.data.cifar import crop_flip, read_cifar_batch
from dwindle.errors import ConfigError, DataNotFoundError

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _write_batch(path: Path, n: int, seed: int, gz: bool) -> None:
    rng = np.random.default_rng(seed)
    records = np.concatenate(
        [rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1
    ).astype(np.uint8)
    raw = records.tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.fixture()
def cifar_dir(tmp_path: Path) -> Path:
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}.bin", 40, i, gz=i % 2 == 0)
    _write_batch(tmp_path / "test_batch.bin", 30, 9, gz=True)
    return tmp_path


def test_loads_binary_batches_plain_and_gz(cifar_dir: Path) -> None:
    bundle = dwdata.load("cifar10", cifar_dir, val_size=20)
    assert (bundle.size("train"), bundle.size("val"), bundle.size("test")) == (180, 20, 30)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
    raw_x, raw_y = read_cifar_batch(cifar_dir / "test_batch.bin.gz")
    assert torch.equal(bundle.y_test, torch.from_numpy(raw_y))
    # per-channel normalisation with the documented constants
    first = raw_x[0, 0, 0, 0] / 255.0
    assert bundle.x_test[0, 0, 0, 0].item() == pytest.approx((first - 0.485) / 0.229, abs=1e-5)


def test_crop_flip_is_seeded_and_keeps_shape() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    a = crop_flip(x, torch.Generator().manual_seed(0))
    b = crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    # every crop is a shifted (maybe flipped) window: its values come from the image or padding
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_truncated_batch_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "test_batch.bin"
    bad.write_bytes(b"\x01" * 3000)
    with pytest.raises(ConfigError, match="not a whole number of 3073-byte CIFAR-10 records"):
        read_cifar_batch(bad)


def test_missing_directory_lists_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"data_batch_1\.bin"):
        dwdata.load("cifar10", tmp_path / "none")


def test_checkpoint_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    from dwindle.export import load_weights
    from dwindle.models import create

    model = create("resnet20")
    sd = {
        f"module.{k}": v
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "old.th"
    torch.save({"best_prec1": 91.0, "state_dict": sd}, path)
    fresh = create("resnet20")
    load_weights(fresh, path)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "cifar10").is_dir(), reason="no shared CIFAR-10")
@pytest.mark.parametrize(
    ("name", "file", "published"),
    [("resnet20", "resnet20-12fca82f.th", 0.9173), ("resnet56", "resnet56-4bfd9763.th", 0.9339)],
)
def test_published_checkpoints_reproduce_their_accuracy(name: str, file: str, published: float):
    from dwindle.export import load_weights
    from dwindle.metrics import evaluate_accuracy
    from dwindle.models import create

    model = create(name)
    load_weights(model, SHARED / "models" / "cifar10-resnet" / file)
    acc = evaluate_accuracy(model, dwdata.load("cifar10"))["accuracy"]
    assert abs(acc - published) <= 0.0005
