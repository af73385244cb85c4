"""Refine one batch of a data engine's table: the callable Ray Data's ``map_batches`` and Spark's ``mapInPandas`` take.

:class:`RefineBatches` loads a saved model once and maps batches given as a dict of numpy arrays
(Ray's ``batch_format="numpy"``), a ``pyarrow.Table`` / ``RecordBatch`` (``"pyarrow"``) or a pandas
DataFrame (``"pandas"``, Spark), returning the same kind with every other column (ids, metadata)
untouched. Rows go through :func:`simskip_core.apply.apply_module`, the forward pass of
:meth:`SimSkip.transform <simskip_core.api.SimSkip.transform>`, so the output is the same bytes::

    ds = ray.data.read_parquet("s3://bucket/embeddings/")
    ds = ds.map_batches(RefineBatches, fn_constructor_kwargs={"model_dir": "my-refiner"},
                        concurrency=4, batch_format="pyarrow")

    # Spark: the model is loaded once per Python worker
    out = df.mapInPandas(RefineBatches("my-refiner").map_in_pandas, schema=df.schema)

pyarrow and pandas are imported only when a batch of their kind arrives; the core does not need them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from simskip_core.apply import apply_module
from simskip_core.errors import NonFiniteRowError

if TYPE_CHECKING:
    from simskip_core.api import SimSkip

__all__ = ["RefineBatches"]

_CACHE_LOCK = threading.Lock()
#: Models loaded in this process, by (folder, modification time of its files): a Spark worker that
#: unpickles a RefineBatches for every task loads the model once.
_LOADED: dict[tuple[str, int], tuple[nn.Module, int]] = {}


def _load(model_dir: Path) -> tuple[nn.Module, int]:
    """The fitted map and input dimension of the model saved in ``model_dir``, loaded once per process."""
    from simskip_core.api import SimSkip

    stamp = max((p.stat().st_mtime_ns for p in model_dir.iterdir()), default=0) if model_dir.is_dir() else 0
    key = (str(model_dir.resolve()), stamp)
    with _CACHE_LOCK:
        if key not in _LOADED:
            model = SimSkip.load(model_dir)
            _LOADED[key] = _fitted(model)
        return _LOADED[key]


def _fitted(model: SimSkip) -> tuple[nn.Module, int]:
    if model.module_ is None or model.dim_ is None:
        raise RuntimeError("this SimSkip model is not fitted; fit it or pass the folder of a saved model.")
    model.module_.eval()
    return model.module_, int(model.dim_)


class RefineBatches:
    """A callable that refines the embedding column of one batch and keeps every other column.

    Args:
        model_dir: the folder of a model saved with :meth:`SimSkip.save <simskip_core.api.SimSkip.save>`
            (or a fitted :class:`~simskip_core.api.SimSkip`, which cannot then be pickled to workers).
        column: the embedding column: a 2-D numpy array, an object array of 1-D arrays, or a list /
            fixed-size-list column of floats (any float dtype; computed in float32).
        out_column: where the refined vectors go (default: replace ``column``); a float32 2-D array in
            a numpy batch, a fixed-size-list of float32 in an Arrow batch, 1-D float32 arrays in pandas.
        id_column: the column that names rows in error messages (default: the row's index).

    A row of the wrong dimension, a missing (null) row and a row that is not finite after the cast to
    float32 raise ``ValueError`` naming the row. Read-only inputs are read in place.
    """

    def __init__(
        self,
        model_dir: str | Path | SimSkip,
        column: str = "embedding",
        out_column: str | None = None,
        id_column: str | None = None,
    ) -> None:
        self.column = column
        self.out_column = out_column or column
        self.id_column = id_column
        if isinstance(model_dir, str | Path):
            self.model_dir: Path | None = Path(model_dir).expanduser()
            self._module, self.dim = _load(self.model_dir)
        else:
            self.model_dir = None
            self._module, self.dim = _fitted(model_dir)

    # ------------------------------------------------------------------ pickling (Spark ships the callable)
    def __getstate__(self) -> dict[str, Any]:
        """Pickle the model's folder, never its weights; a worker loads the model once on first use."""
        if self.model_dir is None:
            raise TypeError(
                "a RefineBatches built from an in-memory SimSkip cannot be sent to workers; save the model "
                "and pass its folder: RefineBatches('my-refiner')."
            )
        state = dict(self.__dict__)
        state["_module"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the settings; the model is loaded (once per process) when the first batch arrives."""
        self.__dict__.update(state)

    @property
    def module(self) -> nn.Module:
        """The fitted map (loaded here when this object was unpickled in a worker)."""
        if self._module is None:
            assert self.model_dir is not None
            self._module, self.dim = _load(self.model_dir)
        return self._module

    # ------------------------------------------------------------------ entry points
    def __call__(self, batch: Any) -> Any:
        """Refine one batch: a dict of numpy arrays, a ``pyarrow.Table`` / ``RecordBatch`` or a pandas DataFrame."""
        if isinstance(batch, dict):
            return self._map_dict(batch)
        kind = type(batch).__module__.split(".")[0]
        if kind == "pyarrow":
            return self.map_arrow(batch)
        if kind == "pandas":
            return self._map_pandas(batch)
        raise TypeError(
            f"RefineBatches maps a dict of numpy arrays, a pyarrow Table / RecordBatch or a pandas DataFrame, "
            f"not {type(batch).__name__}; use batch_format='numpy', 'pyarrow' or 'pandas'."
        )

    def map_in_pandas(self, frames: Iterator[Any]) -> Iterator[Any]:
        """Spark's ``mapInPandas`` function: refine every DataFrame of the iterator, one at a time."""
        for frame in frames:
            yield self._map_pandas(frame)

    def refine(self, x: np.ndarray, ids: Any = None, first_row: int = 0) -> np.ndarray:
        """Refine the (n, d) rows ``x`` into float32 (n, d'); errors name ``ids[i]`` or row ``first_row + i``."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            shape = "x".join(str(s) for s in x.shape)
            raise ValueError(
                f"column {self.column!r} holds {shape} values but the model takes {self.dim}-dimensional rows "
                f"(first row: {_row_name(ids, first_row, 0)}); pass embeddings from the encoder it was fitted on."
            )
        module = self.module
        try:
            return apply_module(module, x, name=f"column {self.column!r}", row_offset=first_row)
        except NonFiniteRowError as error:
            if not error.in_input:
                raise
            raise ValueError(
                f"column {self.column!r} holds NaN or Inf (after the cast to float32) at row "
                f"{_row_name(ids, first_row, error.row - first_row)}; drop or impute that row."
            ) from error

    # ------------------------------------------------------------------ numpy
    def _map_dict(self, batch: dict[str, Any]) -> dict[str, Any]:
        values = self._get(batch, list(batch))
        ids = self._ids_from(batch)
        x = _stack_rows(np.asarray(values) if not isinstance(values, np.ndarray) else values, self, ids, 0)
        return {**batch, self.out_column: self.refine(x, ids)}

    # ------------------------------------------------------------------ Arrow
    def map_arrow(self, batch: Any, first_row: int = 0) -> Any:
        """Refine a ``pyarrow.Table`` or ``RecordBatch``; the result is of the same kind.

        ``first_row`` numbers the batch's first row in error messages (when no ``id_column`` is given).
        """
        import pyarrow as pa

        names = list(batch.schema.names)
        column = self._get(batch, names, lambda: batch.column(self.column))
        ids = self._ids_from(batch)
        x = _arrow_rows(column, self, ids, first_row)
        out = self.refine(x, ids, first_row)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), out.shape[1])
        if self.out_column in names:
            return batch.set_column(names.index(self.out_column), self.out_column, vectors)
        return batch.append_column(self.out_column, vectors)

    # ------------------------------------------------------------------ pandas
    def _map_pandas(self, frame: Any) -> Any:
        import pandas as pd

        series = self._get(frame, list(frame.columns))
        ids = self._ids_from(frame) if self.id_column is not None else _IndexLabels(frame)
        if isinstance(series.dtype, pd.ArrowDtype):  # a pyarrow-backed list column (Ray's pandas batches)
            import pyarrow as pa

            out = self.refine(_arrow_rows(pa.array(series), self, ids, 0), ids)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), out.shape[1])
            column = pd.Series(pd.arrays.ArrowExtensionArray(vectors), index=frame.index)
        else:  # an object column of 1-D arrays (Spark's mapInPandas) or a 2-D extension array
            out = self.refine(_stack_rows(series.to_numpy(), self, ids, 0), ids)
            column = pd.Series(list(out), index=frame.index, dtype=object)
        return frame.assign(**{self.out_column: column})

    # ------------------------------------------------------------------ helpers
    def _get(self, batch: Any, names: list[Any], getter: Any = None) -> Any:
        if self.column not in names:
            raise ValueError(
                f"the batch has no column {self.column!r} (columns: {', '.join(map(str, names))}); "
                "pass column='<embedding column>'."
            )
        if self.id_column is not None and self.id_column not in names:
            raise ValueError(
                f"the batch has no id column {self.id_column!r} (columns: {', '.join(map(str, names))}); "
                "pass id_column=None or the name of the id column."
            )
        return getter() if getter is not None else batch[self.column]

    def _ids_from(self, batch: Any) -> _LazyIds | None:
        """The ids that name rows in error messages, or None to number them."""
        return None if self.id_column is None else _LazyIds(batch, self.id_column)


class _LazyIds:
    """A batch's id column, converted to a Python value only when an error message needs one."""

    def __init__(self, batch: Any, column: str) -> None:
        self._batch, self._column = batch, column

    def __getitem__(self, i: int) -> Any:
        batch = self._batch
        if isinstance(batch, dict):
            return batch[self._column][i]
        if hasattr(batch, "iloc"):  # pandas
            return batch[self._column].iloc[i]
        return batch.column(self._column)[i].as_py()  # Arrow


class _IndexLabels:
    """A DataFrame's index labels, read only when an error message needs one."""

    def __init__(self, frame: Any) -> None:
        self._frame = frame

    def __getitem__(self, i: int) -> Any:
        return self._frame.index[i]


def _row_name(ids: Any, first_row: int, i: int) -> str:
    if ids is None:
        return f"{first_row + i}"
    value = ids[i]
    return f"with id {value.item() if isinstance(value, np.generic) else value!r}"


def _stack_rows(values: np.ndarray, refiner: RefineBatches, ids: Any, first_row: int) -> np.ndarray:
    """A 2-D array as is (read-only included, no copy); an object array of 1-D rows stacked, each checked."""
    if values.dtype != object:
        return values
    d = refiner.dim
    for i, row in enumerate(values):
        size = None if row is None else np.shape(row)
        if size != (d,):
            problem = "is missing (null)" if size is None else f"has shape {size}"
            raise ValueError(
                f"column {refiner.column!r} row {_row_name(ids, first_row, i)} {problem}; every row must hold "
                f"{d} numbers (the dimension the model was fitted on)."
            )
    if not len(values):
        return np.empty((0, d), dtype=np.float32)
    return np.stack(list(values))


def _arrow_rows(column: Any, refiner: RefineBatches, ids: Any, first_row: int) -> np.ndarray:
    """The rows of a list, large-list or fixed-size-list Arrow column (or chunked column) as (n, d)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column.type, pa.ExtensionType):  # e.g. Ray's tensor type: its storage is a list column
        column = column.storage
    d = refiner.dim
    if not (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
    ):
        raise ValueError(
            f"column {refiner.column!r} has Arrow type {column.type}; it must be a list or fixed-size-list of floats."
        )
    if column.null_count:
        bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(
            f"column {refiner.column!r} row {_row_name(ids, first_row, bad)} is missing (null); drop that row."
        )
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        values = column.values.slice(column.offset * width, len(column) * width)
    else:
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != d)
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(
                f"column {refiner.column!r} row {_row_name(ids, first_row, i)} has {lengths[i]} numbers; every "
                f"row must hold {d} (the dimension the model was fitted on)."
            )
        width = d
        values = column.flatten()
    if values.null_count:
        bad = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // max(width, 1)
        raise ValueError(
            f"column {refiner.column!r} row {_row_name(ids, first_row, bad)} holds a null number; drop that row."
        )
    if not pa.types.is_floating(values.type):
        raise ValueError(
            f"column {refiner.column!r} holds {values.type} numbers; store the embeddings as floats."
        )
    return values.to_numpy(zero_copy_only=True).reshape(len(column), width)
