"""RefineBatches: every batch format, bit-identical to SimSkip.transform, other columns kept, bad rows named."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from simskip_core import SimSkip
from simskip_core.scale import RefineBatches
from simskip_core.scale import batches as batches_module

from scale_helpers import fixed_size_list

N, D = 300, 16


@pytest.fixture(scope="module")
def saved(saved_model) -> tuple[Path, np.ndarray, np.ndarray]:
    """A saved model, its input rows (read-only) and ``SimSkip.transform`` of them."""
    return saved_model(N, D, seed=0, read_only=True)


def _ids() -> np.ndarray:
    return np.arange(N) + 1000


def _arrow_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    assert column.type == pa.list_(pa.float32(), column.type.list_size)
    return column.values.to_numpy().reshape(len(column), -1)


@pytest.mark.filterwarnings("error")
def test_numpy_batch_read_only_is_bit_identical_and_not_copied(saved, monkeypatch) -> None:
    path, x, reference = saved
    seen = []
    original = batches_module.apply_module
    monkeypatch.setattr(
        batches_module, "apply_module", lambda m, rows, **kw: seen.append(rows) or original(m, rows, **kw)
    )
    ids = _ids()
    out = RefineBatches(path)({"embedding": x, "id": ids})
    assert out["embedding"].dtype == np.float32
    assert np.array_equal(out["embedding"], reference)
    assert out["id"] is ids
    assert seen[0] is x  # the read-only input went to the forward pass as it is


def test_numpy_object_array_of_rows(saved) -> None:
    path, x, reference = saved
    rows = np.empty(N, dtype=object)
    for i in range(N):
        rows[i] = x[i].astype(np.float64)
    out = RefineBatches(path)({"embedding": rows})
    assert np.array_equal(out["embedding"], reference)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("kind", ["fixed_size_list", "list", "large_list", "list_of_double"])
def test_arrow_table_each_list_type(saved, kind: str) -> None:
    path, x, reference = saved
    column = {
        "fixed_size_list": fixed_size_list(x),
        "list": pa.array(list(x), type=pa.list_(pa.float32())),
        "large_list": pa.array(list(x), type=pa.large_list(pa.float32())),
        "list_of_double": pa.array(list(x.astype(np.float64)), type=pa.list_(pa.float64())),
    }[kind]
    table = pa.table({"id": _ids(), "embedding": column, "meta": [str(i) for i in range(N)]})
    out = RefineBatches(path)(table)
    assert isinstance(out, pa.Table)
    assert out.schema.names == ["id", "embedding", "meta"]
    assert np.array_equal(_arrow_vectors(out.column("embedding")), reference)
    assert out.column("id").equals(table.column("id")) and out.column("meta").equals(table.column("meta"))


def test_arrow_record_batch_gives_a_record_batch_and_reads_in_place(saved, monkeypatch) -> None:
    path, x, reference = saved
    seen = []
    original = batches_module.apply_module
    monkeypatch.setattr(
        batches_module, "apply_module", lambda m, rows, **kw: seen.append(rows) or original(m, rows, **kw)
    )
    batch = pa.record_batch({"id": _ids(), "embedding": fixed_size_list(x)})
    out = RefineBatches(path)(batch)
    assert isinstance(out, pa.RecordBatch)
    assert np.array_equal(_arrow_vectors(out.column(1)), reference)
    assert np.shares_memory(seen[0], batch.column(1).values.to_numpy())


def test_arrow_sliced_batch(saved) -> None:
    path, x, reference = saved
    table = pa.table({"embedding": fixed_size_list(x)}).slice(17, 100)
    out = RefineBatches(path)(table)
    assert np.array_equal(_arrow_vectors(out.column("embedding")), reference[17:117])


def test_pandas_object_column_keeps_index_and_columns(saved) -> None:
    path, x, reference = saved
    frame = pd.DataFrame({"id": _ids(), "embedding": list(x)}, index=np.arange(N) * 2)
    out = RefineBatches(path)(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["id", "embedding"] and out.index.equals(frame.index)
    assert np.array_equal(np.stack(out["embedding"].to_numpy()), reference)
    assert out["id"].equals(frame["id"])
    assert np.array_equal(np.stack(frame["embedding"].to_numpy()), x)  # the input frame is untouched


def test_pandas_arrow_backed_list_column(saved) -> None:
    path, x, reference = saved
    frame = pa.table({"id": _ids(), "embedding": fixed_size_list(x)}).to_pandas(types_mapper=pd.ArrowDtype)
    out = RefineBatches(path)(frame)
    assert isinstance(out["embedding"].dtype, pd.ArrowDtype)
    assert np.array_equal(_arrow_vectors(pa.array(out["embedding"])), reference)


def test_out_column_keeps_the_input_column(saved) -> None:
    path, x, reference = saved
    table = pa.table({"id": _ids(), "embedding": fixed_size_list(x)})
    out = RefineBatches(path, out_column="refined")(table)
    assert out.schema.names == ["id", "embedding", "refined"]
    assert out.column("embedding").equals(table.column("embedding"))
    assert np.array_equal(_arrow_vectors(out.column("refined")), reference)


def test_map_in_pandas_refines_every_frame(saved) -> None:
    path, x, reference = saved
    frames = [
        pd.DataFrame({"id": _ids()[i : i + 100], "embedding": list(x[i : i + 100])}) for i in (0, 100, 200)
    ]
    outs = list(RefineBatches(path).map_in_pandas(iter(frames)))
    assert len(outs) == 3
    assert np.array_equal(np.concatenate([np.stack(o["embedding"].to_numpy()) for o in outs]), reference)


def _bad_numpy(x: np.ndarray) -> dict[str, np.ndarray]:
    bad = x.copy()
    bad[42, 3] = np.nan
    return {"embedding": bad, "id": _ids()}


def _overflow_pandas(x: np.ndarray) -> pd.DataFrame:
    rows = list(x.astype(np.float64))
    rows[42] = rows[42].copy()
    rows[42][0] = 1e39  # finite in float64, Inf in float32
    return pd.DataFrame({"embedding": rows, "id": _ids()})


def _short_list(x: np.ndarray) -> pa.Table:
    rows = list(x)
    rows[42] = rows[42][:-1]
    return pa.table({"embedding": pa.array(rows, type=pa.list_(pa.float32())), "id": _ids()})


def _null_row(x: np.ndarray) -> pa.Table:
    rows: list[np.ndarray | None] = list(x)
    rows[42] = None
    return pa.table({"embedding": pa.array(rows, type=pa.list_(pa.float32())), "id": _ids()})


def _short_object(x: np.ndarray) -> dict[str, np.ndarray]:
    rows = np.empty(N, dtype=object)
    for i in range(N):
        rows[i] = x[i] if i != 42 else x[i][:5]
    return {"embedding": rows, "id": _ids()}


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_bad_numpy, "NaN or Inf"),
        (_overflow_pandas, "NaN or Inf"),
        (_short_list, "has 15 numbers"),
        (_null_row, "missing (null)"),
        (_short_object, "has shape (5,)"),
    ],
    ids=["nan-numpy", "overflow-pandas", "short-list-arrow", "null-arrow", "short-object-numpy"],
)
def test_a_bad_row_is_named_by_its_id(saved, make, problem: str) -> None:
    path, x, _ = saved
    with pytest.raises(ValueError, match="id 1042") as info:
        RefineBatches(path, id_column="id")(make(x))
    assert problem in str(info.value)


def test_a_bad_row_is_named_by_its_index_without_an_id_column(saved) -> None:
    path, x, _ = saved
    with pytest.raises(ValueError, match="at row 42;"):
        RefineBatches(path)(_bad_numpy(x))
    frame = _overflow_pandas(x).set_index(pd.Index([f"doc{i}" for i in range(N)]))
    with pytest.raises(ValueError, match="'doc42'"):
        RefineBatches(path)(frame)


def test_a_wrong_dimension_is_refused(saved) -> None:
    path, x, _ = saved
    with pytest.raises(
        ValueError,
        match=r"holds 300x8 values but the model takes 16-dimensional rows \(first row: with id 1000\)",
    ):
        RefineBatches(path, id_column="id")({"embedding": x[:, :8], "id": _ids()})
    with pytest.raises(ValueError, match="16-dimensional"):
        RefineBatches(path)(pa.table({"embedding": fixed_size_list(np.zeros((3, 4), dtype=np.float32))}))


def test_missing_columns_and_batch_kinds_are_refused(saved) -> None:
    path, x, _ = saved
    with pytest.raises(ValueError, match=r"no column 'vec'.*column='<embedding column>'"):
        RefineBatches(path, column="vec")({"embedding": x})
    with pytest.raises(ValueError, match="no id column 'key'"):
        RefineBatches(path, id_column="key")({"embedding": x})
    with pytest.raises(TypeError, match="batch_format="):
        RefineBatches(path)(x)
    with pytest.raises(ValueError, match="list or fixed-size-list"):
        RefineBatches(path)(pa.table({"embedding": pa.array(np.arange(N, dtype=np.float32))}))


def test_pickles_the_folder_not_the_weights(saved) -> None:
    path, x, reference = saved
    refiner = RefineBatches(path)
    blob = pickle.dumps(refiner)
    assert len(blob) < 1000  # the model's folder and settings, no tensors
    batches_module._LOADED.clear()  # as in a fresh worker process
    clone = pickle.loads(blob)
    assert np.array_equal(clone({"embedding": x})["embedding"], reference)
    assert len(batches_module._LOADED) == 1
    pickle.loads(blob)({"embedding": x})
    assert len(batches_module._LOADED) == 1  # loaded once per process


def test_an_in_memory_model_works_but_is_not_shipped(saved) -> None:
    path, x, reference = saved
    refiner = RefineBatches(SimSkip.load(path))
    assert np.array_equal(refiner({"embedding": x})["embedding"], reference)
    with pytest.raises(TypeError, match="save the model and pass its folder"):
        pickle.dumps(refiner)


def test_importing_the_scale_package_does_not_import_pyarrow_or_pandas() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from simskip_core.scale import RefineBatches, refine_parquet; "
        "print(','.join(m for m in ('pyarrow', 'pandas', 'ray', 'pyspark') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
