"""Streaming apply: refine a ``.npy`` (or a folder of ``.npy`` shards) larger than memory into one output ``.npy``.

Rows are read chunk by chunk with positional reads (no memory map, so the page cache never counts
towards this process's memory), pushed through the fitted map, and written at their offset in the
output; memory is bounded by a few chunks, not by the number of rows. Reading the next chunk and
writing the previous one overlap with the computation of the current one.

Resumable and crash-safe:

* the output is built in ``OUT.partial`` next to ``OUT``; ``OUT.manifest.json`` describes the run
  (input files, a hash of the model's weights, chunk size, output shape) and ``OUT.manifest.r<rank>.json``
  lists the chunks each rank has finished, each recorded only after its bytes are written (and, with
  ``sync=True``, on disk);
* an interrupted run called again with the same arguments redoes only unfinished chunks;
* every chunk is checked after the cast to float32: a NaN or Inf row (in the input or the output) stops
  the run with a ``ValueError`` naming its global row, and the output is never declared complete;
* an existing ``OUT`` is replaced (``overwrite=True``) only by that final rename, and an ``OUT`` that is
  an input file (also through a link) is refused;
* when every chunk is written, the manifest is rewritten with ``"complete": true`` and only then
  ``OUT.partial`` is renamed to ``OUT``: an ``OUT`` that exists is always whole.

Sharded across ranks (``torchrun`` or independent jobs given ``rank`` / ``world_size``), each rank
writes a disjoint, contiguous range of chunks of the same output file.

Command line: ``simskip refine IN OUT --model DIR --stream`` or, sharded,
``torchrun --nproc_per_node=N -m simskip_core refine IN OUT --model DIR --stream``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from simskip_core.apply import CPU_BLOCK_ROWS, apply_module
from simskip_core.progress import bar_disabled
from simskip_core.scale.distributed import dist_info, resolve_device

__all__ = ["NpySource", "StreamResult", "model_fingerprint", "stream_apply", "stream_apply_from_args"]

MANIFEST_FORMAT = "simskip-stream"
MANIFEST_VERSION = 1
_WAIT_SECONDS = 60.0


@dataclass
class StreamResult:
    """What :func:`stream_apply` did.

    Attributes:
        path: the finished output, or the ``.partial`` file while other ranks are still writing.
        shape: (n, d') of the output.
        complete: True when the output is finalised (every chunk of every rank written).
        chunks_written: chunks this call computed and wrote.
        chunks_skipped: chunks of this rank already finished by an earlier, interrupted run.
        seconds: wall time of this call.
        rows_written: rows this call computed and wrote.
        rows_per_second: ``rows_written`` per second of wall time.
    """

    path: Path
    shape: tuple[int, int]
    complete: bool
    chunks_written: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0
    rows_written: int = 0
    rows_per_second: float = 0.0


@dataclass(frozen=True)
class _Shard:
    path: Path
    offset: int  # bytes of the .npy header
    rows: int
    start: int  # first global row


class NpySource:
    """Rows of one ``.npy`` file or of a folder (or list) of ``.npy`` shards stacked in name order.

    Every shard must hold a C-ordered 2-D floating-point array with the same number of columns.
    Rows are read with positional reads into a fresh buffer; nothing is memory-mapped.

    Args:
        source: a ``.npy`` path, a folder of ``.npy`` files, or a sequence of ``.npy`` paths.
    """

    def __init__(self, source: str | Path | Sequence[str | Path]) -> None:
        paths = self._paths(source)
        shards: list[_Shard] = []
        dim: int | None = None
        dtype: np.dtype[Any] | None = None
        start = 0
        for path in paths:
            try:
                header = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as error:
                raise ValueError(
                    f"{path} is not a readable .npy file ({error}); save arrays with np.save."
                ) from error
            if header.ndim != 2 or not np.issubdtype(header.dtype, np.floating):
                raise ValueError(
                    f"{path} holds a {header.dtype} array of shape {header.shape}; every shard must be an (n, d) "
                    "float array."
                )
            if header.shape[0] and not header.flags.c_contiguous:
                raise ValueError(
                    f"{path} is stored in Fortran order; re-save it with np.save(path, np.ascontiguousarray(x))."
                )
            if dim is not None and header.shape[1] != dim:
                raise ValueError(
                    f"shard {path} has {header.shape[1]} columns but the shards before it have {dim}; all shards "
                    "must come from the same encoder."
                )
            if dtype is not None and header.dtype != dtype:
                raise ValueError(
                    f"shard {path} has dtype {header.dtype} but the shards before it have {dtype}; re-save them alike."
                )
            dim, dtype = int(header.shape[1]), header.dtype
            shards.append(_Shard(Path(path), int(header.offset), int(header.shape[0]), start))
            del header
            start += shards[-1].rows
        assert dim is not None and dtype is not None
        if start == 0:
            raise ValueError(f"{source} holds no rows; pass embeddings with at least one row.")
        self.shards = shards
        self.label = str(source) if isinstance(source, (str, Path)) else f"{len(shards)} .npy shards"
        self.n = start
        self.d = dim
        self.dtype = np.dtype(dtype)
        self._row_bytes = self.d * self.dtype.itemsize
        self._files: dict[Path, Any] = {}

    @staticmethod
    def _paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
        if isinstance(source, str | Path):
            path = Path(source).expanduser()
            if path.is_dir():
                paths = sorted(p for p in path.glob("*.npy") if not p.name.startswith("."))
                if not paths:
                    raise FileNotFoundError(
                        f"the folder {path} holds no .npy shards; pass a .npy file or a folder of them."
                    )
                return paths
            if not path.is_file():
                raise FileNotFoundError(
                    f"input {path} does not exist; pass a .npy file or a folder of .npy shards."
                )
            return [path]
        paths = [Path(p).expanduser() for p in source]
        if not paths:
            raise ValueError("the list of input shards is empty; pass at least one .npy file.")
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"input shard {path} does not exist.")
        return paths

    @property
    def shape(self) -> tuple[int, int]:
        """(n, d) of the stacked input."""
        return (self.n, self.d)

    def fingerprint(self) -> list[dict[str, Any]]:
        """Path, size and modification time of every shard (a changed input invalidates a partial output)."""
        out = []
        for shard in self.shards:
            stat = shard.path.stat()
            out.append(
                {"path": str(shard.path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            )
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new C-ordered float32 array (stop - start, d)."""
        out = np.empty((stop - start, self.d), dtype=self.dtype)
        view = out.reshape(-1).view(np.uint8).data
        pos = 0
        for shard in self.shards:
            lo, hi = max(start, shard.start), min(stop, shard.start + shard.rows)
            if lo >= hi:
                continue
            nbytes = (hi - lo) * self._row_bytes
            _read_exact(
                self._file(shard.path),
                shard.offset + (lo - shard.start) * self._row_bytes,
                view[pos : pos + nbytes],
            )
            pos += nbytes
        if self.dtype == np.float32:
            return out
        with np.errstate(over="ignore"):  # values beyond float32's range become Inf, which apply_module names
            return out.astype(np.float32)

    def _file(self, path: Path) -> Any:
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        return handle

    def close(self) -> None:
        """Close the shard files."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def _read_exact(handle: Any, offset: int, view: memoryview) -> None:
    handle.seek(offset)
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise OSError(f"{handle.name} ended early (truncated .npy file?); re-create it.")
        done += got


def _write_rows(fd: int, offset: int, array: np.ndarray) -> None:
    """Write ``array``'s bytes at ``offset`` of the open file ``fd``."""
    view = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def model_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's class, configuration and weights (a different model invalidates a partial output)."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    config = getattr(module, "config", None)
    if callable(config):
        with contextlib.suppress(TypeError, ValueError):
            digest.update(json.dumps(config(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _resolve_module(model: Any) -> tuple[nn.Module, int | None]:
    if isinstance(model, nn.Module):
        return model, None
    module = getattr(model, "module_", None)
    if hasattr(model, "module_") and module is None:
        raise RuntimeError("this SimSkip model is not fitted yet; call fit(X) first or SimSkip.load(path).")
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be a fitted SimSkip or a torch nn.Module, got {type(model).__name__}.")
    return module, getattr(model, "dim_", None)


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    """(rank, world_size, coordinated) where coordinated means a process group provides barriers."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None and world_size is None and initialised:
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), True
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    coordinated = initialised and torch.distributed.get_world_size() == world_size
    return rank, world_size, coordinated


def _barrier(coordinated: bool) -> None:
    if coordinated:
        torch.distributed.barrier()


class _Files:
    """Paths of one streamed output."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        self.manifest = out.with_name(out.name + ".manifest.json")

    def progress(self, rank: int) -> Path:
        return self.out.with_name(f"{self.out.name}.manifest.r{rank}.json")

    def all_progress(self) -> list[Path]:
        return sorted(self.out.parent.glob(f"{self.out.name}.manifest.r*.json"))

    def ours(self) -> list[Path]:
        """Every path this output's run writes: the output, its partial file and manifests."""
        return [self.out, self.partial, self.manifest, *self.all_progress()]

    def clean(self) -> None:
        """Remove the partial output and manifests of an earlier run; the output itself is only ever replaced
        by the final rename of a finished partial file."""
        for path in [self.partial, self.manifest, *self.all_progress()]:
            path.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file, through symlinks and hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _refuse_overlap(files: _Files, source: NpySource, folder: Path | None) -> None:
    """Refuse an output whose files would replace or delete an input shard, or land among the shards."""
    for shard in source.shards:
        for path in files.ours():
            if _same_file(path, shard.path):
                raise ValueError(
                    f"the output {files.out} would overwrite the input {shard.path} ({path.name} is the same file); "
                    "write the output to another path."
                )
    if folder is not None and os.path.realpath(files.out.parent) == os.path.realpath(folder):
        raise ValueError(
            f"the output {files.out} is inside the input folder {folder}, where it would be read as a shard by "
            "the next run; write the output to another folder."
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_exclusive(path: Path, make: Any) -> bool:
    """Create ``path`` by ``make(tmp_path)`` then a hard link, so it appears whole and only once; False if it existed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        make(Path(tmp))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not a valid simskip stream manifest ({error}); delete it or pass resume=False "
            "(--no-resume on the command line)."
        ) from error
    return data if isinstance(data, dict) else None


def _done_chunks(files: _Files, key: str) -> set[int]:
    done: set[int] = set()
    for path in files.all_progress():
        data = _read_json(path)
        if data is not None and data.get("key") == key:
            done.update(int(i) for i in data.get("done", []))
    return done


def _discard_finished_manifest(files: _Files, key: str) -> None:
    """Remove the manifest of an earlier run that finished (its output already moved into place).

    It describes that output, not work to resume; a run with other settings starts its own manifest.
    """
    existing = _read_json(files.manifest)
    finished = existing is not None and existing.get("complete") and not files.partial.exists()
    if finished and existing is not None and existing.get("key") != key:
        files.manifest.unlink(missing_ok=True)


def _chunk_ranges(n: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_rows, n)) for start in range(0, n, chunk_rows)]


def _rank_chunks(n_chunks: int, rank: int, world_size: int) -> list[int]:
    base, extra = divmod(n_chunks, world_size)
    lo = rank * base + min(rank, extra)
    return list(range(lo, lo + base + (1 if rank < extra else 0)))


def _out_dim(module: nn.Module, d: int, device: torch.device) -> int:
    with torch.inference_mode():
        probe = module(torch.zeros((2, d), dtype=torch.float32, device=device))
    if probe.ndim != 2 or probe.shape[0] != 2:
        raise ValueError(
            f"the model maps (2, {d}) rows to shape {tuple(probe.shape)}; it must map (m, d) to (m, d')."
        )
    return int(probe.shape[1])


def _wait_for(path: Path, what: str) -> None:
    deadline = time.monotonic() + _WAIT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"waited {_WAIT_SECONDS:.0f} s for another rank to create {path} ({what}); is it still running?"
            )
        time.sleep(0.05)


def _finalise(files: _Files, manifest: dict[str, Any], n_chunks: int) -> bool:
    """Declare the output complete, then move it into place; False if another rank finalised it first."""
    final = {**manifest, "complete": True, "done": list(range(n_chunks)), "finished_at": time.time()}
    _write_json(files.manifest, final)
    try:
        os.replace(files.partial, files.out)
    except FileNotFoundError:
        if not files.out.exists():
            raise
        return False
    for path in files.all_progress():
        path.unlink(missing_ok=True)
    return True


def stream_apply(
    model: Any,
    source: str | Path | Sequence[str | Path],
    out_path: str | Path,
    *,
    chunk_rows: int = 65536,
    resume: bool = True,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | torch.device | None = None,
    bf16: bool = False,
    sync: bool = True,
    progress: bool = True,
) -> StreamResult:
    """Apply a fitted map to every row of a large ``.npy`` input, writing one float32 ``.npy`` output.

    Memory stays bounded by about four chunks (``chunk_rows`` x d floats each), whatever the number of rows.

    Args:
        model: a fitted :class:`~simskip_core.api.SimSkip` (its ``module_`` is applied) or any
            ``nn.Module`` mapping (m, d) float32 rows to (m, d') rows independently.
        source: a ``.npy`` file, a folder of ``.npy`` shards (stacked in file-name order) or a list of them.
        out_path: the output ``.npy``; it only appears when complete.
        chunk_rows: rows per chunk (the unit of work, memory and resumption).
        resume: continue an interrupted run with the same input, model and chunk size (False: start afresh).
        overwrite: replace ``out_path`` if it already exists; the old file is only ever replaced by the
            final rename of the finished output, so an interrupted run leaves it as it was. An output that
            is (through symlinks or hard links) an input shard, or that would land in the input folder, is
            refused whatever ``overwrite`` says.
        rank, world_size: this process's share of a sharded apply; default: the initialised
            torch.distributed process group, else 0 of 1. Ranks write disjoint row ranges of one output;
            without a process group they may run as independent jobs (any order, any time), and the last
            to finish finalises the output.
        device: "cpu", "cuda", ... (default: this rank's GPU when CUDA is available, else the CPU).
        bf16: bfloat16 autocast for the forward pass (meant for GPUs; the output stays float32).
        sync: record a chunk as done only after its bytes are flushed to disk (fdatasync, every couple of
            seconds in a background thread), so even a machine crash cannot leave a chunk recorded but
            unwritten; False records chunks as soon as they are written (a killed process still cannot).
        progress: show a tqdm progress bar.

    Returns:
        a :class:`StreamResult`; ``complete`` is False only on a rank of an uncoordinated sharded run that
        finished its own rows before the others.
    """
    tic = time.perf_counter()
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}.")
    module, dim = _resolve_module(model)
    rank, world_size, coordinated = _resolve_rank(rank, world_size)
    dev = resolve_device(device, dist_info())
    files = _Files(Path(out_path).expanduser())
    if files.out.suffix != ".npy":
        raise ValueError(f"out_path must end in .npy, got {files.out}; the output is a standard .npy array.")
    if world_size > 1 and not coordinated and (overwrite or not resume):
        raise ValueError(
            "overwrite=True or resume=False with several ranks needs a torch.distributed process group (torchrun) "
            "to coordinate the clean-up; delete the output and its .partial/.manifest files first, then run with "
            "resume=True (without --no-resume and --overwrite)."
        )
    source_reader = NpySource(source)
    try:
        folder = Path(source).expanduser() if isinstance(source, (str, Path)) else None
        _refuse_overlap(files, source_reader, folder if folder is not None and folder.is_dir() else None)
        files.out.parent.mkdir(parents=True, exist_ok=True)
        if rank == 0 and not resume:
            files.clean()
        _barrier(coordinated)
        n, d = source_reader.shape
        if dim is not None and d != dim:
            raise ValueError(
                f"the input has dimension {d} but the model expects {dim}; embed with the encoder the model was fitted on."
            )
        was_training = module.training
        work = module if dev == _first_device(module) else _copy_to(module, dev)
        work.eval()
        try:
            d_out = _out_dim(work, d, dev)
            chunks = _chunk_ranges(n, chunk_rows)
            manifest = {
                "format": MANIFEST_FORMAT,
                "version": MANIFEST_VERSION,
                "input": source_reader.fingerprint(),
                "input_dtype": str(source_reader.dtype),
                "model": model_fingerprint(module),
                "chunk_rows": chunk_rows,
                "n_chunks": len(chunks),
                "shape": [n, d_out],
                "dtype": "float32",
                "bf16": bool(bf16),
                "complete": False,
            }
            key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
            manifest["key"] = key
            result = _run(
                work,
                source_reader,
                files,
                manifest,
                chunks,
                rank,
                world_size,
                coordinated,
                dev,
                bf16,
                sync,
                progress,
                overwrite,
            )
        finally:
            module.train(was_training)
    finally:
        source_reader.close()
    result.seconds = time.perf_counter() - tic
    result.rows_per_second = result.rows_written / result.seconds if result.seconds > 0 else 0.0
    return result


def _first_device(module: nn.Module) -> torch.device:
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _copy_to(module: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(module).to(device)


def _run(
    module: nn.Module,
    source: NpySource,
    files: _Files,
    manifest: dict[str, Any],
    chunks: list[tuple[int, int]],
    rank: int,
    world_size: int,
    coordinated: bool,
    device: torch.device,
    bf16: bool,
    sync: bool,
    progress: bool,
    overwrite: bool,
) -> StreamResult:
    n, d_out = manifest["shape"]
    key = manifest["key"]
    shape = (int(n), int(d_out))

    if rank == 0 and (coordinated or world_size == 1):
        _discard_finished_manifest(files, key)
    _barrier(coordinated)
    existing = _read_json(files.manifest)
    if files.out.exists():
        if existing is not None and existing.get("key") == key and existing.get("complete"):
            return StreamResult(
                files.out, shape, True, chunks_skipped=len(_rank_chunks(len(chunks), rank, world_size))
            )
        if not overwrite:
            raise FileExistsError(
                f"{files.out} exists; pass overwrite=True (--overwrite) to replace it or choose another output path."
            )
    if existing is not None and existing.get("key") != key:
        raise ValueError(
            f"{files.partial} belongs to a run with another input, model, chunk size or precision "
            f"(see {files.manifest}); pass resume=False (--no-resume on the command line) to start afresh or "
            "use another output path."
        )
    if existing is None:
        _create_exclusive(files.manifest, lambda tmp: tmp.write_text(json.dumps(manifest), encoding="utf-8"))
        existing = _read_json(files.manifest)
        if existing is None or existing.get("key") != key:
            raise ValueError(
                f"another run with different settings claimed {files.manifest}; use another output path."
            )
    if existing.get("complete") and files.partial.exists():
        # Declared complete but not yet renamed (interrupted between the two steps): finish the rename.
        _finalise(files, manifest, len(chunks))
        return StreamResult(
            files.out, shape, True, chunks_skipped=len(_rank_chunks(len(chunks), rank, world_size))
        )

    def make_partial(tmp: Path) -> None:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)  # sparse until written
        del mm

    if coordinated:
        if rank == 0 and not files.partial.exists():
            _create_exclusive(files.partial, make_partial)
        _barrier(coordinated)
    elif not files.partial.exists():
        _create_exclusive(files.partial, make_partial)  # independent ranks race; exactly one file wins
    _wait_for(files.partial, "the partial output")
    header = np.load(files.partial, mmap_mode="r")
    if header.shape != shape or header.dtype != np.float32:
        raise ValueError(
            f"{files.partial} has shape {header.shape} ({header.dtype}), expected {shape}; pass resume=False "
            "(--no-resume on the command line)."
        )
    offset = int(header.offset)
    del header

    mine = _rank_chunks(len(chunks), rank, world_size)
    done = _done_chunks(files, key)
    todo = [i for i in mine if i not in done]
    written: set[int] = set()
    row_bytes = int(d_out) * 4
    fd = os.open(files.partial, os.O_WRONLY)
    recorder = _Recorder(files.progress(rank), key, sorted(done & set(mine)), fd, sync)
    bar = tqdm(
        total=sum(chunks[i][1] - chunks[i][0] for i in mine),
        initial=sum(chunks[i][1] - chunks[i][0] for i in mine if i in done),
        desc="simskip apply" if world_size == 1 else f"simskip apply (rank {rank}/{world_size})",
        unit="row",
        unit_scale=True,
        disable=bar_disabled(progress),
    )

    def write(i: int, out: np.ndarray) -> None:
        _write_rows(fd, offset + chunks[i][0] * row_bytes, out)
        written.add(i)
        recorder.written(i)

    try:
        with (
            ThreadPoolExecutor(1, "simskip-read") as reader,
            ThreadPoolExecutor(1, "simskip-write") as writer,
        ):
            pending: Future[None] | None = None
            try:
                for i, rows in _prefetch(reader, source, chunks, todo):
                    block = CPU_BLOCK_ROWS if device.type == "cpu" else None
                    out = apply_module(
                        module,
                        rows,
                        device=device,
                        autocast=bf16,
                        block_rows=block,
                        name=source.label,
                        row_offset=chunks[i][0],
                    )
                    del rows
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(write, i, out)
                    bar.update(out.shape[0])
                    del out
            finally:
                if pending is not None:
                    pending.result()
    finally:
        bar.close()
        try:
            recorder.close()
        finally:
            os.close(fd)

    _barrier(coordinated)
    complete = False
    if coordinated:
        if rank == 0:
            _finalise(files, manifest, len(chunks))
        _barrier(coordinated)
        complete = True
    elif _done_chunks(files, key) >= set(range(len(chunks))):
        _finalise(files, manifest, len(chunks))
        complete = True
    elif files.out.exists():
        complete = True
    return StreamResult(
        files.out if complete else files.partial,
        shape,
        complete,
        chunks_written=len(written),
        chunks_skipped=len(mine) - len(todo),
        rows_written=sum(chunks[i][1] - chunks[i][0] for i in written),
    )


class _Recorder:
    """Records finished chunks in this rank's progress file, only once their bytes are on disk.

    With ``sync``, a background thread calls fdatasync every ``interval`` seconds and then records every
    chunk whose write had completed before the call: the forward pass never waits for the disk, and a
    recorded chunk is always durable. Without ``sync``, chunks are recorded as soon as they are written
    (safe against a killed process, not against a machine crash).
    """

    interval = 2.0

    def __init__(self, path: Path, key: str, done: list[int], fd: int, sync: bool) -> None:
        self.path, self.key, self.done, self.fd, self.sync = path, key, done, fd, sync
        self.pending: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        if sync:
            self.thread = threading.Thread(target=self._loop, name="simskip-sync", daemon=True)
            self.thread.start()

    def written(self, chunk: int) -> None:
        """Chunk ``chunk``'s bytes have been handed to the operating system."""
        if self.error is not None:
            raise self.error
        if not self.sync:
            self.done.append(chunk)
            self._save()
            return
        with self.lock:
            self.pending.append(chunk)

    def _flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if not batch:
            return
        if hasattr(os, "fdatasync"):
            os.fdatasync(self.fd)
        else:  # pragma: no cover - macOS / Windows
            os.fsync(self.fd)
        self.done.extend(batch)
        self._save()

    def _save(self) -> None:
        _write_json(self.path, {"key": self.key, "done": sorted(self.done)})

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._flush()
            except BaseException as error:  # reported by written() / close()
                self.error = error
                return

    def close(self) -> None:
        """Stop the background thread and record what is written (after a final sync)."""
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
        if self.error is not None:
            raise self.error
        self._flush()


def _prefetch(
    reader: ThreadPoolExecutor, source: NpySource, chunks: list[tuple[int, int]], todo: list[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (chunk id, rows) while the next chunk is already being read."""
    if not todo:
        return
    future = reader.submit(source.read, *chunks[todo[0]])
    for position, i in enumerate(todo):
        rows = future.result()
        if position + 1 < len(todo):
            future = reader.submit(source.read, *chunks[todo[position + 1]])
        yield i, rows


def stream_apply_from_args(model: Any, args: Any) -> dict[str, Any]:
    """Run :func:`stream_apply` with the options of ``simskip refine --stream`` (input, output, chunk_rows,
    no_resume, overwrite, device, bf16, quiet); return a JSON-ready summary."""
    result = stream_apply(
        model,
        args.input,
        args.output,
        chunk_rows=args.chunk_rows,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        device=args.device,
        bf16=args.bf16,
        progress=not args.quiet,
    )
    return {"output": str(result.path), "shape": list(result.shape), "complete": result.complete}
