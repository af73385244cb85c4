"""A pure-Python reader (and a small writer) for graph-tool's binary ``.gt`` / ``.gt.gz`` format.

The format (graph-tool's documentation, "The gt file format"):

* header: the 6-byte UTF-8 magic ``"⛾ gt"``, a version byte (``0x01``) and an endianness byte
  (``0x00`` little-endian, ``0x01`` big-endian); then a comment string. A string is its length as
  ``uint64`` followed by that many bytes (not NUL-terminated).
* adjacency: a ``directed`` byte, the vertex count ``N`` as ``uint64``, then for every vertex ``v`` in
  order its out-neighbour list: a ``uint64`` count followed by the neighbour indices, each stored in
  the smallest unsigned type holding ``N`` (``uint8`` when ``N <= 255``, ``uint16`` when
  ``N <= 65535``, ``uint32`` when ``N <= 2**32 - 1``, else ``uint64``). An undirected edge is stored
  once. Edge ``e`` is the ``e``-th neighbour entry in this vertex-major order.
* property maps: their count as ``uint64``, then for each a key-type byte (0 graph, 1 vertex, 2 edge),
  the name (string), a value-type byte and the values (one for a graph property, ``N`` for a vertex
  property, ``E`` for an edge property). Value types: 0 bool (1 byte), 1 int16, 2 int32, 3 int64,
  4 double, 5 long double (16 bytes), 6 string, 7-13 vectors (``uint64`` length + elements) of
  bool/int16/int32/int64/double/long double/string, 14 a Python object (a string holding a pickle).

Python-object properties are never unpickled: they are kept as raw ``bytes``. Long doubles are
converted from the x87 80-bit extended format without relying on the platform's ``long double``.
Every read is bounds-checked, so a truncated or corrupt file raises :class:`GTFormatError` naming the
file, the byte offset and what was being read.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import numpy as np

from simskip_core.errors import SimSkipError


def _byte_order(endian: str) -> Literal["<", ">", "="]:
    """``endian`` ("<", ">" or "=", as the struct format uses it) typed for ``np.dtype.newbyteorder``."""
    if endian not in ("<", ">", "="):
        raise ValueError(f"unknown byte order {endian!r}; expected '<', '>' or '='.")
    return cast(Literal["<", ">", "="], endian)


__all__ = ["GT_MAGIC", "GTFormatError", "GTGraph", "read_gt", "write_gt"]

#: The 6-byte magic string every ``.gt`` file starts with ("⛾ gt" in UTF-8).
GT_MAGIC = "⛾ gt".encode()
_VERSION = 1
_GZIP_MAGIC = b"\x1f\x8b"

#: Scalar value types by type byte: (name, numpy dtype code or None for special handling).
_SCALAR_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("bool", "u1"),
    1: ("int16", "i2"),
    2: ("int32", "i4"),
    3: ("int64", "i8"),
    4: ("double", "f8"),
    5: ("long double", None),
    6: ("string", None),
    14: ("python object", None),
}
#: Vector value types: type byte -> element type byte.
_VECTOR_TYPES: dict[int, int] = {7: 0, 8: 1, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6}
_KEY_TYPES = {0: "graph", 1: "vertex", 2: "edge"}
# Guard against absurd sizes in corrupt headers before allocating anything.
_MAX_ITEMS = 1 << 40


class GTFormatError(SimSkipError, ValueError):
    """A ``.gt`` file is truncated, corrupt or not a graph-tool binary file; the message says where."""


@dataclass
class GTGraph:
    """The content of a ``.gt`` file.

    Attributes:
        num_vertices: number of vertices N.
        edges: int64 array (E, 2) of (source, target) in file order (edge index = row).
        directed: whether the graph is directed (an undirected edge appears once).
        vertex_properties: name -> array of length N (numeric types) or list (strings, vectors, objects).
        edge_properties: name -> array of length E or list, aligned with ``edges``.
        graph_properties: name -> value.
        comment: the file's comment string.
    """

    num_vertices: int
    edges: np.ndarray
    directed: bool
    vertex_properties: dict[str, Any] = field(default_factory=dict)
    edge_properties: dict[str, Any] = field(default_factory=dict)
    graph_properties: dict[str, Any] = field(default_factory=dict)
    comment: str = ""

    @property
    def num_edges(self) -> int:
        """Number of edges E as stored (an undirected edge counts once)."""
        return int(self.edges.shape[0])


class _Reader:
    """A bounds-checked cursor over the bytes of a ``.gt`` file."""

    def __init__(self, buf: bytes, source: str) -> None:
        self.buf = buf
        self.pos = 0
        self.source = source
        self.endian = "<"

    def fail(self, what: str, detail: str = "") -> GTFormatError:
        extra = f": {detail}" if detail else ""
        return GTFormatError(
            f"{self.source}: corrupt or truncated .gt file while reading {what} at byte {self.pos} "
            f"(file has {len(self.buf)} bytes){extra}. Re-fetch it (scripts/fetch-graph-data.sh) or re-save it with graph-tool."
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(what, f"needs {n} more bytes, {len(self.buf) - self.pos} left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u64(self, what: str) -> int:
        return struct.unpack(self.endian + "Q", self.take(8, what))[0]

    def count(self, what: str, item_size: int = 1) -> int:
        n = self.u64(what)
        if n > _MAX_ITEMS or (item_size and self.pos + n * item_size > len(self.buf)):
            self.pos -= 8
            raise self.fail(
                what, f"count {n} does not fit in the remaining {len(self.buf) - self.pos - 8} bytes"
            )
        return n

    def array(self, code: str, n: int, what: str) -> np.ndarray:
        dtype = np.dtype(code).newbyteorder(_byte_order(self.endian))
        raw = self.take(n * dtype.itemsize, what)
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))

    def string(self, what: str) -> bytes:
        return self.take(self.count(what), what)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _long_doubles(raw: bytes, n: int, endian: str) -> np.ndarray:
    """Convert n x87 80-bit extended floats (stored in 16-byte slots) to float64."""
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        slot = raw[16 * i : 16 * i + 16]
        ext = slot[:10] if endian == "<" else slot[6:16][::-1]
        mantissa = int.from_bytes(ext[:8], "little")
        sign_exp = int.from_bytes(ext[8:10], "little")
        sign = -1.0 if sign_exp & 0x8000 else 1.0
        exponent = sign_exp & 0x7FFF
        if exponent == 0 and mantissa == 0:
            out[i] = 0.0 * sign
        elif exponent == 0x7FFF:
            out[i] = sign * np.inf if (mantissa << 1) & ((1 << 64) - 1) == 0 else np.nan
        else:
            out[i] = sign * float(mantissa) * 2.0 ** (exponent - 16383 - 63)
    return out


def _read_values(r: _Reader, type_byte: int, n: int, what: str) -> Any:
    """Read ``n`` values of ``type_byte``: a numpy array for numeric scalars, else a list."""
    if type_byte in _SCALAR_TYPES:
        _name, code = _SCALAR_TYPES[type_byte]
        if code is not None:
            values = r.array(code, n, what)
            return values.astype(bool) if type_byte == 0 else values
        if type_byte == 5:
            return _long_doubles(r.take(16 * n, what), n, r.endian)
        if type_byte == 6:
            return [_decode(r.string(what)) for _ in range(n)]
        return [r.string(what) for _ in range(n)]  # python objects: raw pickled bytes, never loaded
    if type_byte in _VECTOR_TYPES:
        element = _VECTOR_TYPES[type_byte]
        size = 1 if element in (0,) else 0
        out = []
        for _ in range(n):
            length = r.count(what, size)
            out.append(_read_values(r, element, length, what))
        return out
    raise r.fail(what, f"unknown value type {type_byte} (known: 0-14)")


def _open_bytes(path: str | Path | BinaryIO | bytes) -> tuple[bytes, str]:
    if isinstance(path, bytes | bytearray):
        raw, source = bytes(path), "<bytes>"
    elif isinstance(path, str | Path):
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"no .gt file at {p}")
        raw, source = p.read_bytes(), str(p)
    else:
        raw, source = path.read(), getattr(path, "name", "<stream>")
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise GTFormatError(
                f"{source}: the gzip stream is truncated or corrupt ({error}). "
                "Re-fetch the file (scripts/fetch-graph-data.sh)."
            ) from error
    return raw, str(source)


def read_gt(path: str | Path | BinaryIO | bytes) -> GTGraph:
    """Read a graph-tool binary graph from a ``.gt`` or gzip-compressed ``.gt.gz`` file, stream or bytes.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        GTFormatError: the content is not a valid ``.gt`` file (bad magic, unsupported version,
            truncated data, an out-of-range neighbour index, an unknown property type).
    """
    raw, source = _open_bytes(path)
    r = _Reader(raw, source)
    magic = r.take(len(GT_MAGIC), "the magic string") if len(raw) >= len(GT_MAGIC) else raw
    if magic != GT_MAGIC:
        raise GTFormatError(
            f"{source}: not a graph-tool binary file (starts with {magic[:8]!r}, expected {GT_MAGIC!r}); "
            "pass a .gt or .gt.gz file written by graph-tool."
        )
    version = r.u8("the format version")
    if version != _VERSION:
        raise GTFormatError(
            f"{source}: unsupported .gt format version {version}; this reader knows version {_VERSION}."
        )
    big_endian = r.u8("the endianness flag")
    if big_endian not in (0, 1):
        raise r.fail("the endianness flag", f"value {big_endian} is neither 0 nor 1")
    r.endian = ">" if big_endian else "<"
    comment = _decode(r.string("the comment"))
    directed = bool(r.u8("the directed flag"))
    n = r.u64("the vertex count")
    if n > _MAX_ITEMS or n > len(raw):  # every vertex needs 8 bytes for its neighbour count
        raise r.fail("the vertex count", f"{n} vertices cannot fit in the file")
    width = 1 if n <= 0xFF else 2 if n <= 0xFFFF else 4 if n <= 0xFFFFFFFF else 8
    code = {1: "u1", 2: "u2", 4: "u4", 8: "u8"}[width]
    sources, targets = [], []
    for v in range(n):
        k = r.count(f"the neighbour count of vertex {v}", width)
        nbrs = r.array(code, k, f"the neighbours of vertex {v}")
        if k and int(nbrs.max()) >= n:
            raise GTFormatError(
                f"{source}: vertex {v} has neighbour index {int(nbrs.max())} but the graph has only {n} vertices; the file is corrupt."
            )
        sources.append(np.full(k, v, dtype=np.int64))
        targets.append(nbrs.astype(np.int64))
    edges = (
        np.stack([np.concatenate(sources), np.concatenate(targets)], axis=1)
        if n
        else np.zeros((0, 2), dtype=np.int64)
    )
    e = edges.shape[0]
    graph = GTGraph(num_vertices=int(n), edges=edges, directed=directed, comment=comment)
    n_props = r.count("the property-map count", 0)
    for i in range(n_props):
        key = r.u8(f"the key type of property map {i}")
        if key not in _KEY_TYPES:
            raise r.fail(f"property map {i}", f"key type {key} is not 0 (graph), 1 (vertex) or 2 (edge)")
        name = _decode(r.string(f"the name of property map {i}"))
        type_byte = r.u8(f"the value type of property {name!r}")
        what = f"the values of {_KEY_TYPES[key]} property {name!r}"
        if key == 0:
            value = _read_values(r, type_byte, 1, what)
            graph.graph_properties[name] = value[0]
        elif key == 1:
            graph.vertex_properties[name] = _read_values(r, type_byte, n, what)
        else:
            graph.edge_properties[name] = _read_values(r, type_byte, e, what)
    if r.pos != len(raw):
        raise r.fail("the end of the file", f"{len(raw) - r.pos} unexpected trailing bytes")
    return graph


# ---------------------------------------------------------------------------------------------- writer


def _infer_type(values: Any) -> int:
    if isinstance(values, np.ndarray):
        if values.dtype == bool:
            return 0
        if np.issubdtype(values.dtype, np.integer):
            return 3
        if np.issubdtype(values.dtype, np.floating):
            return 4
    items = list(values)
    if all(isinstance(v, str) for v in items):
        return 6
    if all(isinstance(v, bool | np.bool_) for v in items):
        return 0
    if all(isinstance(v, int | np.integer) for v in items):
        return 3
    if all(isinstance(v, float | int | np.floating | np.integer) for v in items):
        return 4
    if all(isinstance(v, list | tuple | np.ndarray) for v in items):
        flat = [x for v in items for x in v]
        if all(isinstance(x, str) for x in flat) and flat:
            return 13
        if all(isinstance(x, int | np.integer) for x in flat):
            return 10
        return 11
    raise TypeError("property values must be bools, ints, floats, strings or lists of those.")


def _write_values(out: io.BytesIO, type_byte: int, values: Any, endian: str) -> None:
    if type_byte in (0, 1, 2, 3, 4):
        code = {0: "u1", 1: "i2", 2: "i4", 3: "i8", 4: "f8"}[type_byte]
        out.write(np.asarray(values).astype(np.dtype(code).newbyteorder(_byte_order(endian))).tobytes())
    elif type_byte == 6:
        for v in values:
            raw = str(v).encode("utf-8")
            out.write(struct.pack(endian + "Q", len(raw)) + raw)
    elif type_byte in _VECTOR_TYPES:
        for v in values:
            out.write(struct.pack(endian + "Q", len(v)))
            _write_values(out, _VECTOR_TYPES[type_byte], list(v), endian)
    else:
        raise ValueError(f"writing value type {type_byte} is not supported.")


def write_gt(
    path: str | Path | None,
    num_vertices: int,
    edges: np.ndarray,
    *,
    directed: bool = False,
    vertex_properties: Mapping[str, Any] | None = None,
    edge_properties: Mapping[str, Any] | None = None,
    graph_properties: Mapping[str, Any] | None = None,
    big_endian: bool = False,
    comment: str = "written by simskip_graph",
) -> bytes:
    """Write a graph in graph-tool's binary format (gzip-compressed when ``path`` ends in ``.gz``).

    Supports bool, int64, double and string values and vectors of int64/double/string; enough to
    make test files and to export a graph for graph-tool. Returns the uncompressed bytes.
    ``edges`` is (E, 2) of (source, target); for an undirected graph give each edge once.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if edges.size and (edges.min() < 0 or edges.max() >= num_vertices):
        raise ValueError(f"edges hold vertex indices outside [0, {num_vertices}).")
    endian = ">" if big_endian else "<"
    out = io.BytesIO()
    out.write(GT_MAGIC + bytes([_VERSION, int(big_endian)]))
    raw_comment = comment.encode("utf-8")
    out.write(struct.pack(endian + "Q", len(raw_comment)) + raw_comment)
    out.write(bytes([int(directed)]) + struct.pack(endian + "Q", num_vertices))
    width = (
        1 if num_vertices <= 0xFF else 2 if num_vertices <= 0xFFFF else 4 if num_vertices <= 0xFFFFFFFF else 8
    )
    code = np.dtype({1: "u1", 2: "u2", 4: "u4", 8: "u8"}[width]).newbyteorder(_byte_order(endian))
    order = np.argsort(edges[:, 0], kind="stable")
    counts = np.bincount(edges[:, 0], minlength=num_vertices)
    targets = edges[order, 1]
    start = 0
    for v in range(num_vertices):
        k = int(counts[v])
        out.write(struct.pack(endian + "Q", k) + targets[start : start + k].astype(code).tobytes())
        start += k
    props: list[tuple[int, str, Any]] = [(0, k, [v]) for k, v in (graph_properties or {}).items()]
    props += [(1, k, v) for k, v in (vertex_properties or {}).items()]
    props += [
        (2, k, np.asarray(v)[order] if isinstance(v, np.ndarray) else [v[i] for i in order])
        for k, v in (edge_properties or {}).items()
    ]
    out.write(struct.pack(endian + "Q", len(props)))
    for key, name, values in props:
        expected = {0: 1, 1: num_vertices, 2: edges.shape[0]}[key]
        if len(values) != expected:
            raise ValueError(
                f"{_KEY_TYPES[key]} property {name!r} has {len(values)} values, expected {expected}."
            )
        type_byte = _infer_type(values)
        raw_name = name.encode("utf-8")
        out.write(bytes([key]) + struct.pack(endian + "Q", len(raw_name)) + raw_name + bytes([type_byte]))
        _write_values(out, type_byte, values, endian)
    data = out.getvalue()
    if path is not None:
        p = Path(path)
        p.write_bytes(gzip.compress(data, mtime=0) if p.suffix == ".gz" else data)
    return data


# ------------------------------------------------------------------------------------------ to PyG Data


def _label_codes(values: Any, name: str, source: str) -> tuple[np.ndarray, list[str]]:
    """Map a vertex property to class ids 0..C-1 (sorted distinct values) and the class names."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise GTFormatError(f"{source}: label property {name!r} holds NaN or Inf values.")
        distinct, codes = np.unique(values, return_inverse=True)
        names = [str(int(c)) if float(c).is_integer() else str(c) for c in distinct]
        return codes.astype(np.int64), names
    if all(isinstance(v, str) for v in values):
        classes = sorted(set(values))
        lookup = {c: i for i, c in enumerate(classes)}
        return np.array([lookup[v] for v in values], dtype=np.int64), classes
    raise GTFormatError(
        f"{source}: vertex property {name!r} is not a scalar (numbers or strings) and cannot be a label."
    )


def gt_to_data(
    graph: GTGraph,
    *,
    label: str | None = "value",
    name: str | None = "label",
    undirected: bool = True,
    source: str = "<gt>",
) -> Any:
    """Convert a :class:`GTGraph` to a PyG ``Data``.

    Args:
        graph: the parsed file.
        label: vertex property holding the classes (``None``: no labels). The distinct values, sorted,
            become classes ``0..C-1``; ``data.class_names`` keeps them. A missing property raises.
        name: vertex property with node names/titles, kept as ``data.node_names`` when present.
        undirected: add reverse edges and coalesce duplicates (PyG's convention for undirected
            message passing); False keeps the stored (source, target) edges as they are.
        source: file name used in error messages.

    Returns:
        ``Data(edge_index, num_nodes, y?, node_names?, class_names?, directed)``. Self-loops are kept.
    """
    import torch
    from torch_geometric.utils import coalesce, to_undirected

    n = graph.num_vertices
    edge_index = torch.as_tensor(graph.edges.T.copy(), dtype=torch.long).reshape(2, -1)
    edge_index = to_undirected(edge_index, num_nodes=n) if undirected else coalesce(edge_index, num_nodes=n)
    from torch_geometric.data import Data

    data = Data(edge_index=edge_index, num_nodes=n)
    data.directed = bool(graph.directed) and not undirected
    if label is not None:
        if label not in graph.vertex_properties:
            raise GTFormatError(
                f"{source}: no vertex property {label!r} to use as labels; "
                f"available vertex properties: {sorted(graph.vertex_properties)}."
            )
        codes, class_names = _label_codes(graph.vertex_properties[label], label, source)
        data.y = torch.as_tensor(codes, dtype=torch.long)
        data.class_names = class_names
    if name is not None and name in graph.vertex_properties:
        values = graph.vertex_properties[name]
        if not isinstance(values, np.ndarray) and all(isinstance(v, str) for v in values):
            data.node_names = list(values)
    return data
