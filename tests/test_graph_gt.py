"""The graph-tool .gt reader: a hand-made file, round trips, corrupt input, and the real Debian files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from simskip_graph import datasets
from simskip_graph.gt_io import GT_MAGIC, GTFormatError, gt_to_data, read_gt, write_gt

from simskip_core.errors import MissingDataError


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def handmade() -> bytes:
    """A 3-vertex undirected path 0-1-2 (plus 2-0) written byte by byte from the format description."""
    out = GT_MAGIC + b"\x01\x00" + _s("hand-made")
    out += b"\x00" + struct.pack("<Q", 3)  # undirected, N = 3 -> neighbours are uint8
    out += struct.pack("<Q", 1) + bytes([1])  # vertex 0 -> 1
    out += struct.pack("<Q", 1) + bytes([2])  # vertex 1 -> 2
    out += struct.pack("<Q", 1) + bytes([0])  # vertex 2 -> 0
    out += struct.pack("<Q", 4)  # property maps
    out += b"\x01" + _s("value") + b"\x02" + struct.pack("<3i", 7, -1, 7)  # vertex int32
    out += b"\x01" + _s("label") + b"\x06" + _s("a") + _s("b") + _s("\u00e9")  # vertex strings
    out += b"\x02" + _s("weight") + b"\x04" + struct.pack("<3d", 0.5, 1.5, 2.5)  # edge doubles
    out += b"\x00" + _s("description") + b"\x06" + _s("toy")  # graph string
    return out


def test_handmade_file_is_read_exactly():
    g = read_gt(handmade())
    assert g.num_vertices == 3 and not g.directed and g.comment == "hand-made"
    assert g.edges.tolist() == [[0, 1], [1, 2], [2, 0]]
    assert g.vertex_properties["value"].tolist() == [7, -1, 7]
    assert g.vertex_properties["label"] == ["a", "b", "\u00e9"]
    assert g.edge_properties["weight"].tolist() == [0.5, 1.5, 2.5]
    assert g.graph_properties["description"] == "toy"


def test_gzip_file_and_pyg_conversion(tmp_path):
    path = tmp_path / "toy.gt.gz"
    path.write_bytes(gzip.compress(handmade()))
    data = gt_to_data(read_gt(path), label="value", name="label")
    assert data.num_nodes == 3
    assert data.y.tolist() == [1, 0, 1]  # classes are the sorted distinct values (-1, 7)
    assert data.class_names == ["-1", "7"]
    assert data.node_names == ["a", "b", "\u00e9"]
    assert data.is_undirected() and data.edge_index.shape[1] == 6
    with pytest.raises(GTFormatError, match="no vertex property 'group'"):
        gt_to_data(read_gt(path), label="group")


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("n", [5, 255, 256, 70000])
def test_round_trip_all_index_widths(tmp_path, n, big_endian):
    rng = np.random.default_rng(n)
    edges = rng.integers(0, n, size=(40, 2))
    edges[0] = [n - 1, 0]
    labels = rng.integers(0, 3, size=n)
    names = [f"v{i}" for i in range(n)]
    path = tmp_path / "g.gt"
    raw = write_gt(
        path,
        n,
        edges,
        directed=True,
        big_endian=big_endian,
        vertex_properties={"value": labels, "label": names, "vec": [[i, -i] for i in range(n)]},
        edge_properties={"w": np.arange(40, dtype=np.float64)},
    )
    width = 1 if n <= 255 else 2 if n <= 65535 else 4
    comment = len("written by simskip_graph")
    adjacency = 8 * n + 40 * width
    assert len(raw) == 8 + 8 + comment + 1 + 8 + adjacency + 8 + sum(
        1 + 8 + len(name) + 1 + size
        for name, size in [
            ("value", 8 * n),
            ("label", sum(8 + len(s) for s in names)),
            ("vec", 8 * n + 16 * n),
            ("w", 8 * 40),
        ]
    )
    g = read_gt(path)
    assert g.directed and g.num_vertices == n
    order = np.argsort(edges[:, 0], kind="stable")
    assert g.edges.tolist() == edges[order].tolist()
    assert g.vertex_properties["value"].tolist() == labels.tolist()
    assert g.vertex_properties["label"] == names
    assert g.vertex_properties["vec"][3].tolist() == [3, -3]
    assert g.edge_properties["w"].tolist() == np.arange(40.0)[order].tolist()


def test_every_truncation_raises_a_clear_error():
    raw = handmade()
    for cut in range(len(raw)):
        with pytest.raises(GTFormatError, match=r"not a graph-tool binary file|truncated"):
            read_gt(raw[:cut])
    with pytest.raises(GTFormatError, match="gzip stream is truncated"):
        read_gt(gzip.compress(raw)[:-12])


def test_corrupt_files_raise_clear_errors():
    raw = bytearray(handmade())
    with pytest.raises(GTFormatError, match="not a graph-tool binary file"):
        read_gt(b"GARBAGE!" + bytes(raw[8:]))
    bad_version = bytearray(raw)
    bad_version[6] = 2
    with pytest.raises(GTFormatError, match=r"unsupported \.gt format version 2"):
        read_gt(bytes(bad_version))
    header = len(GT_MAGIC) + 2 + 8 + len("hand-made") + 1 + 8
    out_of_range = bytearray(raw)
    out_of_range[header + 8] = 9  # vertex 0's neighbour
    with pytest.raises(GTFormatError, match="neighbour index 9 but the graph has only 3 vertices"):
        read_gt(bytes(out_of_range))
    prop = raw.index(b"value") + len("value")
    unknown_type = bytearray(raw)
    unknown_type[prop] = 42
    with pytest.raises(GTFormatError, match="unknown value type 42"):
        read_gt(bytes(unknown_type))
    unknown_key = bytearray(raw)
    unknown_key[prop - len("value") - 9] = 7
    with pytest.raises(GTFormatError, match="key type 7"):
        read_gt(bytes(unknown_key))
    with pytest.raises(GTFormatError, match="trailing bytes"):
        read_gt(bytes(raw) + b"\x00")
    huge = bytearray(raw)
    huge[header - 8 : header] = struct.pack("<Q", 1 << 50)
    with pytest.raises(GTFormatError, match="cannot fit"):
        read_gt(bytes(huge))


def test_missing_file_names_the_fetch_script(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSKIP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(datasets.GT_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_COLLECTION", tmp_path / "nowhere")
    with pytest.raises(MissingDataError, match=r"scripts/fetch-graph-data\.sh"):
        datasets.load_graph("polbooks")
    with pytest.raises(FileNotFoundError):
        read_gt(tmp_path / "absent.gt")
    with pytest.raises(KeyError, match="unknown graph 'cora'"):
        datasets.load_graph("cora")


def test_explicit_folder_and_env_var_are_searched(tmp_path, monkeypatch):
    write_gt(
        tmp_path / "polbooks.gt.gz",
        3,
        np.array([[0, 1], [1, 2]]),
        vertex_properties={"value": ["x", "y", "x"], "label": ["p", "q", "r"]},
    )
    data = datasets.load_graph("polbooks", path=tmp_path)
    assert data.num_nodes == 3 and data.y.tolist() == [0, 1, 0] and data.node_names == ["p", "q", "r"]
    monkeypatch.setenv(datasets.GT_DIR_ENV, str(tmp_path))
    assert datasets.find_gt_file("polbooks.gt.gz") == tmp_path / "polbooks.gt.gz"


# ----------------------------------------------------------------------------- the real Debian files
# These need the collection: `bash scripts/fetch-graph-data.sh` (CI runs it before the tests).


def test_real_polblogs_raw_file():
    g = read_gt(datasets.find_gt_file("polblogs.gt.gz"))
    assert (g.num_vertices, g.num_edges, g.directed) == (1490, 19090, True)
    values = g.vertex_properties["value"]
    assert sorted(np.unique(values).tolist()) == [0.0, 1.0]
    assert np.bincount(values.astype(int)).tolist() == [758, 732]
    assert g.vertex_properties["label"][0] == "100monkeystyping.com"


@pytest.mark.parametrize(
    ("name", "nodes", "edges", "classes"),
    [
        ("polbooks", 105, 441, 3),
        ("football", 115, 613, 12),
        ("polblogs", 1222, 16714, 2),
        ("karate", 34, 78, 4),
    ],
)
def test_real_graphs_load_as_pyg_data(name, nodes, edges, classes):
    data = datasets.load_graph(name)
    assert data.num_nodes == nodes
    assert data.edge_index.shape[1] == 2 * edges  # undirected, both directions, no duplicates/self-loops
    assert data.is_undirected() and not data.has_self_loops()
    assert int(data.y.max()) + 1 == classes and len(data.class_names) == classes
    if name != "karate":
        assert len(data.node_names) == nodes


def test_polblogs_all_nodes_option():
    data = datasets.load_graph("polblogs", largest_component=False)
    assert data.num_nodes == 1490
    assert data.orig_index.tolist() == list(range(1490))
