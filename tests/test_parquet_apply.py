"""refine_parquet: one output per input, bit-identical, ids kept, streamed, resumable, atomic, refuses to clobber."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simskip_core import SimSkip
from simskip_core.scale import batches as batches_module
from simskip_core.scale import refine_parquet
from simskip_core.scale.parquet import METADATA_KEY, read_record

from scale_helpers import fixed_size_list

N, D = 500, 16


@pytest.fixture(scope="module")
def saved(saved_model) -> tuple[Path, np.ndarray, np.ndarray]:
    """A saved model, input rows and ``SimSkip.transform`` of them."""
    return saved_model(N, D, seed=1)


def _table(x: np.ndarray, first_id: int, list_type: pa.DataType | None = None) -> pa.Table:
    vectors = fixed_size_list(x) if list_type is None else pa.array(list(x), type=list_type)
    ids = [f"doc-{first_id + i}" for i in range(len(x))]
    return pa.table({"id": ids, "embedding": vectors, "year": np.arange(len(x), dtype=np.int16)})


@pytest.fixture
def dataset(tmp_path: Path, saved) -> Path:
    """A folder with two files (one in a subfolder, one with list<double> vectors), 64-row row groups."""
    _, x, _ = saved
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    pq.write_table(_table(x[:200], 0), root / "a.parquet", row_group_size=64)
    pq.write_table(
        _table(x[200:], 200, pa.list_(pa.float64())), root / "sub" / "b.parquet", row_group_size=64
    )
    return root


def _vectors(path: Path, column: str = "embedding") -> np.ndarray:
    table = pq.read_table(path)
    assert table.schema.field(column).type == pa.list_(pa.float32(), D)
    return table.column(column).combine_chunks().values.to_numpy().reshape(table.num_rows, D)


def test_a_folder_gives_one_file_per_input_equal_to_transform(saved, dataset: Path, tmp_path: Path) -> None:
    model, _, reference = saved
    summary = refine_parquet(model, dataset, tmp_path / "out", batch_rows=50, progress=False)
    a, b = tmp_path / "out" / "a.parquet", tmp_path / "out" / "sub" / "b.parquet"
    assert summary.written == [a, b] and summary.skipped == [] and summary.rows_written == N
    assert np.array_equal(_vectors(a), reference[:200]) and np.array_equal(_vectors(b), reference[200:])
    for src, dst in ((dataset / "a.parquet", a), (dataset / "sub" / "b.parquet", b)):
        before, after = pq.read_table(src), pq.read_table(dst)
        assert after.schema.names == before.schema.names
        assert after.column("id").equals(before.column("id")) and after.column("year").equals(
            before.column("year")
        )
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.parquet", "b.parquet", "sub"]


def test_a_single_file_and_an_out_column(saved, dataset: Path, tmp_path: Path) -> None:
    model, _, reference = saved
    refine_parquet(
        SimSkip.load(model), dataset / "a.parquet", tmp_path / "out", out_column="refined", progress=False
    )
    out = pq.read_table(tmp_path / "out" / "a.parquet")
    assert out.schema.names == ["id", "embedding", "year", "refined"]
    assert out.column("embedding").equals(pq.read_table(dataset / "a.parquet").column("embedding"))
    assert np.array_equal(_vectors(tmp_path / "out" / "a.parquet", "refined"), reference[:200])


def test_reads_batch_by_batch_never_a_whole_file(saved, dataset: Path, tmp_path: Path, monkeypatch) -> None:
    model, _, _ = saved

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read a whole file")

    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    sizes: list[int] = []
    original = batches_module.RefineBatches.map_arrow
    monkeypatch.setattr(
        batches_module.RefineBatches,
        "map_arrow",
        lambda self, batch, first_row=0: sizes.append(batch.num_rows) or original(self, batch, first_row),
    )
    refine_parquet(model, dataset, tmp_path / "out", batch_rows=40, progress=False)
    assert max(sizes) <= 40 and sum(sizes) == N


def test_a_second_run_skips_finished_files(saved, dataset: Path, tmp_path: Path) -> None:
    model, _, _ = saved
    refine_parquet(model, dataset, tmp_path / "out", progress=False)
    stamp = (tmp_path / "out" / "a.parquet").stat().st_mtime_ns
    again = refine_parquet(model, dataset, tmp_path / "out", progress=False)
    assert again.written == [] and len(again.skipped) == 2 and again.rows_written == 0
    assert (tmp_path / "out" / "a.parquet").stat().st_mtime_ns == stamp
    record = read_record(tmp_path / "out" / "a.parquet")
    assert record is not None and record["source_bytes"] == (dataset / "a.parquet").stat().st_size


def test_an_interrupted_run_resumes_file_by_file_and_leaves_no_partial(
    saved, dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    model, _, reference = saved
    original = batches_module.RefineBatches.map_arrow

    def interrupt_in_b(self, batch, first_row=0):
        if batch.column("id")[0].as_py() == "doc-264":  # the second batch of sub/b.parquet
            raise KeyboardInterrupt
        return original(self, batch, first_row)

    monkeypatch.setattr(batches_module.RefineBatches, "map_arrow", interrupt_in_b)
    with pytest.raises(KeyboardInterrupt):
        refine_parquet(model, dataset, tmp_path / "out", batch_rows=64, progress=False)
    monkeypatch.setattr(batches_module.RefineBatches, "map_arrow", original)
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.parquet*")) == [
        "a.parquet"
    ]
    stale = tmp_path / "out" / "sub" / ".b.parquet.simskip-partial"  # as a kill -9 would leave it
    stale.write_bytes(b"half")
    resumed = refine_parquet(model, dataset, tmp_path / "out", progress=False)
    assert resumed.skipped == [tmp_path / "out" / "a.parquet"]
    assert resumed.written == [tmp_path / "out" / "sub" / "b.parquet"]
    assert not stale.exists()
    assert np.array_equal(_vectors(tmp_path / "out" / "sub" / "b.parquet"), reference[200:])


def test_a_failure_inside_a_file_removes_its_partial_and_names_file_and_row(saved, tmp_path: Path) -> None:
    model, x, _ = saved
    bad = x[:200].copy()
    bad[150, 2] = np.inf
    (tmp_path / "in").mkdir()
    pq.write_table(_table(bad, 0), tmp_path / "in" / "a.parquet", row_group_size=64)
    with pytest.raises(ValueError, match=r"a\.parquet: .*at row 150;"):
        refine_parquet(model, tmp_path / "in", tmp_path / "out", batch_rows=64, progress=False)
    with pytest.raises(ValueError, match="'doc-150'"):
        refine_parquet(model, tmp_path / "in", tmp_path / "out", id_column="id", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_changed_source_or_model_is_refused_until_overwrite(saved, dataset: Path, tmp_path: Path) -> None:
    model, x, _ = saved
    refine_parquet(model, dataset, tmp_path / "out", progress=False)
    stat = (dataset / "a.parquet").stat()
    os.utime(dataset / "a.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(FileExistsError, match=r"another version of its source file.*overwrite=True"):
        refine_parquet(model, dataset, tmp_path / "out", progress=False)
    other = SimSkip(epochs=1, batch_size=64, seed=5, progress=False).fit(x)
    with pytest.raises(FileExistsError, match="another model"):
        refine_parquet(other, dataset, tmp_path / "out", progress=False)
    summary = refine_parquet(model, dataset, tmp_path / "out", overwrite=True, progress=False)
    assert len(summary.written) == 2
    with pytest.raises(FileExistsError, match="resume=True to keep it"):
        refine_parquet(model, dataset, tmp_path / "out", resume=False, progress=False)


def test_a_file_simskip_did_not_write_is_never_replaced(saved, dataset: Path, tmp_path: Path) -> None:
    model, _, _ = saved
    (tmp_path / "out").mkdir()
    foreign = tmp_path / "out" / "a.parquet"
    foreign.write_bytes(b"someone else's file")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not written by simskip"):
            refine_parquet(model, dataset, tmp_path / "out", overwrite=overwrite, progress=False)
    assert foreign.read_bytes() == b"someone else's file"
    pq.write_table(pa.table({"x": [1]}), foreign)  # a Parquet file without simskip's record
    with pytest.raises(FileExistsError, match="not written by simskip"):
        refine_parquet(model, dataset, tmp_path / "out", overwrite=True, progress=False)
    assert METADATA_KEY not in (pq.read_schema(foreign).metadata or {})


def test_the_destination_may_not_be_the_source_or_inside_it(saved, dataset: Path) -> None:
    model, _, _ = saved
    for destination in (dataset, dataset / "sub", dataset / "new" / "out"):
        with pytest.raises(ValueError, match="is the source folder or inside it"):
            refine_parquet(model, dataset, destination, progress=False)
    with pytest.raises(ValueError, match="would replace the input"):
        refine_parquet(model, dataset / "a.parquet", dataset, progress=False)
    with pytest.raises(ValueError, match="is a file"):
        refine_parquet(model, dataset, dataset / "a.parquet", progress=False)


def test_hidden_and_underscore_files_are_left_out(saved, dataset: Path, tmp_path: Path) -> None:
    model, _, _ = saved
    (dataset / "_SUCCESS").write_bytes(b"")
    (dataset / "_temporary").mkdir()
    (dataset / "_temporary" / "c.parquet").write_bytes(b"half a file")
    (dataset / ".d.parquet").write_bytes(b"hidden")
    summary = refine_parquet(model, dataset, tmp_path / "out", progress=False)
    assert [p.name for p in summary.written] == ["a.parquet", "b.parquet"]


def test_an_empty_file_gives_an_empty_output_with_the_schema(saved, tmp_path: Path) -> None:
    model, x, _ = saved
    (tmp_path / "in").mkdir()
    pq.write_table(_table(x[:0], 0), tmp_path / "in" / "empty.parquet")
    refine_parquet(model, tmp_path / "in", tmp_path / "out", progress=False)
    out = pq.read_table(tmp_path / "out" / "empty.parquet")
    assert out.num_rows == 0 and out.schema.field("embedding").type == pa.list_(pa.float32(), D)


def test_missing_inputs_and_columns_are_refused(saved, tmp_path: Path) -> None:
    model, x, _ = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        refine_parquet(model, tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no \.parquet files"):
        refine_parquet(model, tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "in").mkdir()
    pq.write_table(_table(x[:10], 0), tmp_path / "in" / "a.parquet")
    with pytest.raises(ValueError, match="no column 'vec'"):
        refine_parquet(model, tmp_path / "in", tmp_path / "out", column="vec", progress=False)
    assert list((tmp_path / "out").iterdir()) == []
