"""Refine a Parquet file or a folder of Parquet files, file by file, in bounded memory, resumably.

:func:`refine_parquet` reads each input file in batches (never a whole file: the reader holds at most
one row group), refines its embedding column with :class:`~simskip_core.scale.batches.RefineBatches`
and writes one output file per input file under the destination folder, with the same relative name:

* every other column (ids, metadata) is copied as it is; the refined vectors are a fixed-size-list of
  float32, in place of the embedding column or in ``out_column``;
* each output is written to a hidden ``.NAME.simskip-partial`` file next to it, flushed to disk and
  renamed into place: an output file that exists is always whole;
* each output records in its Parquet metadata (key ``simskip.refine``) the size and modification time
  of its source file, a hash of the model's weights and the columns; a run called again skips the
  files whose record matches, so an interrupted run redoes only unfinished files;
* the destination may not be the source folder or lie inside it, and an existing file that simskip did
  not write is never replaced.

Runs of the same destination must not overlap (they would share the partial files).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from simskip_core.progress import bar_disabled
from simskip_core.scale.batches import RefineBatches
from simskip_core.scale.stream import model_fingerprint

if TYPE_CHECKING:
    from simskip_core.api import SimSkip

__all__ = ["METADATA_KEY", "RefineSummary", "read_record", "refine_parquet"]

logger = logging.getLogger(__name__)

#: Key of the Parquet footer metadata that records what an output file was made from.
METADATA_KEY = b"simskip.refine"
_FORMAT = "simskip-refine-parquet"
_PARTIAL_SUFFIX = ".simskip-partial"


@dataclass
class RefineSummary:
    """What :func:`refine_parquet` did.

    Attributes:
        destination: the output folder.
        written: output files written by this call.
        skipped: output files already finished by an earlier run (their record matched).
        rows_written: rows refined and written by this call.
        seconds: wall time of this call.
        rows_per_second: ``rows_written`` per second of wall time.
    """

    destination: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    rows_written: int = 0
    seconds: float = 0.0
    rows_per_second: float = 0.0


def refine_parquet(
    model_dir_or_model: str | Path | SimSkip,
    source: str | Path,
    destination: str | Path,
    *,
    column: str = "embedding",
    out_column: str | None = None,
    id_column: str | None = None,
    batch_rows: int = 65536,
    overwrite: bool = False,
    resume: bool = True,
    progress: bool = True,
) -> RefineSummary:
    """Refine the embedding column of a Parquet file, or of every ``*.parquet`` file under a folder.

    Args:
        model_dir_or_model: the folder of a saved model, or a fitted :class:`~simskip_core.api.SimSkip`.
        source: a Parquet file, or a folder searched recursively for ``*.parquet`` files (names and
            folders starting with "." or "_", such as Spark's ``_temporary``, are left out).
        destination: the output folder; it gets one file per input file, with the same relative name.
        column: the embedding column (list, large-list or fixed-size-list of floats).
        out_column: where the refined vectors go (default: replace ``column``).
        id_column: the column that names rows in error messages (default: the row number in its file).
        batch_rows: rows read, refined and written at a time (memory: one row group plus a batch).
        overwrite: replace output files that simskip wrote before, whatever they were made from.
        resume: keep output files whose record (source size and modification time, model hash,
            columns) matches; False refines every file again (which needs ``overwrite=True`` where
            outputs exist).
        progress: show a progress bar over rows.

    Raises:
        ValueError: the destination is the source or inside it, an output would replace an input,
            or a row is bad (wrong dimension, null, not finite: the message names the file and the row).
        FileExistsError: an output exists that simskip did not write, or that does not match and
            ``overwrite`` is False.
    """
    import pyarrow.parquet as pq

    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}.")
    started = time.perf_counter()
    refiner = RefineBatches(model_dir_or_model, column=column, out_column=out_column, id_column=id_column)
    model_sha = model_fingerprint(refiner.module)
    out_dim = int(refiner.refine(np.zeros((1, refiner.dim), dtype=np.float32)).shape[1])
    pairs = _plan(Path(source).expanduser(), Path(destination).expanduser())
    summary = RefineSummary(destination=Path(destination).expanduser())
    total = sum(pq.read_metadata(src).num_rows for src, _ in pairs)
    with tqdm(total=total, unit="row", desc="refine", disable=bar_disabled(progress)) as bar:
        for src, dst in pairs:
            record = _record(src, model_sha, refiner)
            if _finished(dst, record, resume=resume, overwrite=overwrite):
                logger.info("%s is already refined into %s; skipped", src, dst)
                summary.skipped.append(dst)
                bar.update(pq.read_metadata(src).num_rows)
                continue
            summary.rows_written += _refine_file(refiner, src, dst, record, out_dim, batch_rows, bar)
            summary.written.append(dst)
            logger.info("refined %s into %s", src, dst)
    summary.seconds = time.perf_counter() - started
    summary.rows_per_second = summary.rows_written / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _inputs(source: Path) -> tuple[Path, list[Path]]:
    """The folder relative names are taken from, and the input files in name order."""
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise FileNotFoundError(f"input {source} does not exist; pass a Parquet file or a folder of them.")
    files = sorted(
        path
        for path in source.rglob("*.parquet")
        if path.is_file() and not any(part.startswith((".", "_")) for part in path.relative_to(source).parts)
    )
    if not files:
        raise FileNotFoundError(
            f"the folder {source} holds no .parquet files; pass a Parquet file or a folder of them."
        )
    return source, files


def _plan(source: Path, destination: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs; refuses a destination that is the source, inside it, or an existing file."""
    base, files = _inputs(source)
    dest = destination.resolve()
    if dest.is_file():
        raise ValueError(f"the destination {destination} is a file; pass a folder for the refined files.")
    if source.is_dir() and (dest == source.resolve() or source.resolve() in dest.parents):
        raise ValueError(
            f"the destination {destination} is the source folder or inside it; choose a folder outside {source}."
        )
    resolved_inputs = {path.resolve() for path in files}
    pairs = []
    for path in files:
        out = dest / path.relative_to(base)
        if out.resolve() in resolved_inputs:
            raise ValueError(
                f"writing {out} would replace the input {path}; choose another destination folder."
            )
        pairs.append((path, out))
    return pairs


def _record(source: Path, model_sha: str, refiner: RefineBatches) -> dict[str, Any]:
    """What an output file is made from: the source's size and modification time, the model, the columns."""
    stat = source.stat()
    return {
        "format": _FORMAT,
        "version": 1,
        "source_bytes": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "model_sha256": model_sha,
        "column": refiner.column,
        "out_column": refiner.out_column,
    }


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record a simskip-written Parquet file carries, or None for a file simskip did not write."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):  # pyarrow raises ArrowInvalid (a ValueError) for a non-Parquet file
        return None
    raw = metadata.get(METADATA_KEY)
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("format") == _FORMAT else None


def _finished(dst: Path, record: dict[str, Any], *, resume: bool, overwrite: bool) -> bool:
    """True when ``dst`` is a finished output of the same source and model (and may be kept)."""
    if not dst.exists():
        return False
    found = read_record(dst)
    if found is None:
        raise FileExistsError(
            f"{dst} exists and was not written by simskip; move it away or choose another destination folder."
        )
    if overwrite:
        return False
    if found != record:
        raise FileExistsError(
            f"{dst} was refined from another version of its source file or with another model or column; "
            "pass overwrite=True to replace it."
        )
    if not resume:
        raise FileExistsError(
            f"{dst} already exists; pass overwrite=True to replace it, or resume=True to keep it."
        )
    return True


def _output_schema(schema: Any, refiner: RefineBatches, out_dim: int, record: dict[str, Any]) -> Any:
    import pyarrow as pa

    if refiner.column not in schema.names:
        raise ValueError(
            f"the file has no column {refiner.column!r} (columns: {', '.join(schema.names)}); pass column=..."
        )
    vectors = pa.field(refiner.out_column, pa.list_(pa.float32(), out_dim))
    if refiner.out_column in schema.names:
        schema = schema.set(schema.get_field_index(refiner.out_column), vectors)
    else:
        schema = schema.append(vectors)
    metadata = dict(schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(record, sort_keys=True).encode()
    return schema.with_metadata(metadata)


def _refine_file(
    refiner: RefineBatches,
    src: Path,
    dst: Path,
    record: dict[str, Any],
    out_dim: int,
    batch_rows: int,
    bar: Any,
) -> int:
    """Refine ``src`` into ``dst`` through a partial file and an atomic rename; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}{_PARTIAL_SUFFIX}")
    rows = 0
    try:
        reader = pq.ParquetFile(src, pre_buffer=False)  # pre-buffering holds a whole row group twice
        schema = _output_schema(reader.schema_arrow, refiner, out_dim, record)
        with pq.ParquetWriter(partial, schema) as writer:
            for batch in reader.iter_batches(batch_size=batch_rows):
                try:
                    refined = refiner.map_arrow(batch, first_row=rows)
                except ValueError as error:
                    raise ValueError(f"{src}: {error}") from error
                writer.write_batch(pa.RecordBatch.from_arrays(refined.columns, schema=schema))
                rows += batch.num_rows
                bar.update(batch.num_rows)
        _fsync(partial)
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return rows


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
