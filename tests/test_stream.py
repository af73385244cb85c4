"""Streaming apply: exact agreement with in-memory apply, shards, resumption after an error or a kill, sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from simskip_core import SimSkip
from simskip_core import stream as stream_module
from simskip_core.scale.stream import NpySource, model_fingerprint, stream_apply

from scale_helpers import forward, seeded_refiner

N, D = 2003, 16


@pytest.fixture
def data(npy_rows: Callable[[int, int], tuple[np.ndarray, Path]]) -> tuple[np.ndarray, Path]:
    return npy_rows(N, D)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name) and p != out)


def test_stream_equals_in_memory_transform_exactly(data: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    x, path = data
    model = SimSkip(epochs=1, batch_size=128, progress=False).fit(x)
    expected = model.transform(x)
    for chunk_rows in (N, 500, 64):  # one chunk; a remainder of 3 rows; many chunks
        out = tmp_path / f"out-{chunk_rows}.npy"
        result = stream_apply(model, path, out, chunk_rows=chunk_rows, progress=False)
        assert result.complete and result.path == out and result.shape == (N, D)
        assert result.rows_written == N and result.chunks_written == -(-N // chunk_rows)
        got = np.load(out)
        assert got.dtype == np.float32 and np.array_equal(got, expected), chunk_rows
        assert _leftovers(out) == [f"out-{chunk_rows}.npy.manifest.json"]
        manifest = json.loads((tmp_path / f"out-{chunk_rows}.npy.manifest.json").read_text(encoding="utf-8"))
        assert manifest["complete"] is True and manifest["done"] == list(range(result.chunks_written))


def test_folder_of_shards_and_float64_input(data: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    x, _ = data
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (lo, hi) in enumerate([(0, 700), (700, 701), (701, 1500), (1500, N)]):
        np.save(shards / f"part-{i:03d}.npy", x[lo:hi].astype(np.float64))
    source = NpySource(shards)
    assert source.shape == (N, D) and len(source.shards) == 4
    assert np.array_equal(source.read(650, 1550), x[650:1550])
    source.close()
    refiner = seeded_refiner(D)
    stream_apply(refiner, shards, tmp_path / "out.npy", chunk_rows=300, progress=False)
    assert np.array_equal(np.load(tmp_path / "out.npy"), forward(refiner, x))


def test_interrupted_run_resumes_to_the_same_bytes(
    data: tuple[np.ndarray, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _x, path = data
    refiner = seeded_refiner(D)
    clean = tmp_path / "clean.npy"
    stream_apply(refiner, path, clean, chunk_rows=200, progress=False)

    out = tmp_path / "out.npy"
    real_write = stream_module._write_rows
    calls = {"n": 0}

    def failing(fd: int, offset: int, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError("disk went away")
        real_write(fd, offset, array)

    monkeypatch.setattr(stream_module, "_write_rows", failing)
    with pytest.raises(OSError, match="disk went away"):
        stream_apply(refiner, path, out, chunk_rows=200, progress=False)
    assert not out.exists()  # never declared complete
    manifest = json.loads((tmp_path / "out.npy.manifest.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is False
    assert json.loads((tmp_path / "out.npy.manifest.r0.json").read_text(encoding="utf-8"))["done"] == [
        0,
        1,
        2,
        3,
    ]

    monkeypatch.setattr(stream_module, "_write_rows", real_write)
    result = stream_apply(refiner, path, out, chunk_rows=200, progress=False)
    assert result.complete and result.chunks_skipped == 4 and result.chunks_written == 7
    assert out.read_bytes() == clean.read_bytes()
    again = stream_apply(refiner, path, out, chunk_rows=200, progress=False)  # finished: nothing to do
    assert again.complete and again.chunks_written == 0


def test_killed_process_resumes_to_the_same_bytes(data: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    x, path = data
    refiner = seeded_refiner(D)
    weights = tmp_path / "refiner.pt.safetensors"
    from safetensors.torch import save_file

    save_file(refiner.state_dict(), str(weights))
    out = tmp_path / "out.npy"
    script = f"""
import os, signal, time, torch
from safetensors.torch import load_file
from simskip_core import stream
from simskip_core.refiner import SkipRefiner
torch.set_num_threads(1)
refiner = SkipRefiner({D}); refiner.load_state_dict(load_file({str(weights)!r})); refiner.eval()
stream._Recorder.interval = 0.01  # fdatasync + record often, so some chunks are recorded before the kill
real, calls = stream._write_rows, [0]
def write(fd, offset, array):
    calls[0] += 1
    time.sleep(0.1)
    if calls[0] == 4:
        real(fd, offset, array[: len(array) // 2])  # half a chunk on disk, then a hard kill
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd, offset, array)
stream._write_rows = write
stream.stream_apply(refiner, {str(path)!r}, {str(out)!r}, chunk_rows=150, progress=False)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not out.exists() and (tmp_path / "out.npy.partial").exists()
    done = json.loads((tmp_path / "out.npy.manifest.r0.json").read_text(encoding="utf-8"))["done"]
    assert done and set(done) <= {0, 1, 2}  # only chunks written (and synced) before the kill
    result = stream_apply(refiner, path, out, chunk_rows=150, progress=False)
    assert result.complete and result.chunks_skipped == len(done)
    assert np.array_equal(np.load(out), forward(refiner, x))


def test_sharded_ranks_write_disjoint_rows_of_one_output(
    data: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    x, path = data
    refiner = seeded_refiner(D)
    out = tmp_path / "out.npy"
    # Independent jobs (no process group), in any order: the last one to finish finalises the output.
    first = stream_apply(refiner, path, out, chunk_rows=300, rank=2, world_size=3, sync=False, progress=False)
    assert not first.complete and not out.exists() and first.rows_written == 300 + 203  # chunks 5, 6 of 0-6
    second = stream_apply(refiner, path, out, chunk_rows=300, rank=0, world_size=3, progress=False)
    assert not second.complete and second.rows_written == 900  # chunks 0-2
    last = stream_apply(refiner, path, out, chunk_rows=300, rank=1, world_size=3, progress=False)
    assert last.complete and last.rows_written == 600  # chunks 3-4
    assert np.array_equal(np.load(out), forward(refiner, x))
    assert _leftovers(out) == ["out.npy.manifest.json"]


def test_changed_model_is_refused_and_resume_false_starts_afresh(
    data: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    x, path = data
    out = tmp_path / "out.npy"
    # Half done: rank 0 of 2.
    stream_apply(seeded_refiner(D, 0), path, out, chunk_rows=500, rank=0, world_size=2, progress=False)
    with pytest.raises(ValueError, match="resume=False"):
        stream_apply(seeded_refiner(D, 1), path, out, chunk_rows=500, progress=False)
    with pytest.raises(ValueError, match="resume=False"):
        stream_apply(seeded_refiner(D, 0), path, out, chunk_rows=400, progress=False)  # another chunk size
    result = stream_apply(seeded_refiner(D, 1), path, out, chunk_rows=500, resume=False, progress=False)
    assert result.complete and result.chunks_skipped == 0
    assert np.array_equal(np.load(out), forward(seeded_refiner(D, 1), x))
    assert model_fingerprint(seeded_refiner(D, 0)) != model_fingerprint(seeded_refiner(D, 1))
    assert model_fingerprint(seeded_refiner(D, 0)) == model_fingerprint(seeded_refiner(D, 0))


def test_existing_output_needs_overwrite(data: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    x, path = data
    out = tmp_path / "out.npy"
    np.save(out, np.zeros(3, dtype=np.float32))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        stream_apply(torch.nn.Identity(), path, out, progress=False)
    result = stream_apply(torch.nn.Identity(), path, out, overwrite=True, progress=False)
    assert result.complete and np.array_equal(np.load(out), x)


def test_bf16_autocast_runs_and_stays_close(data: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    x, path = data
    refiner = seeded_refiner(D)
    stream_apply(
        refiner, path, tmp_path / "out.npy", chunk_rows=1000, bf16=True, device="cpu", progress=False
    )
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, forward(refiner, x), atol=0.1, rtol=0.05)


def test_clear_errors(data: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    x, path = data
    with pytest.raises(ValueError, match="dimension 16 but the model expects 8"):
        stream_apply(
            SimSkip(epochs=1, batch_size=32, progress=False).fit(x[:200, :8]), path, tmp_path / "o.npy"
        )
    with pytest.raises(RuntimeError, match="not fitted"):
        stream_apply(SimSkip(), path, tmp_path / "o.npy")
    with pytest.raises(ValueError, match=r"\.npy"):
        stream_apply(torch.nn.Identity(), path, tmp_path / "o.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stream_apply(torch.nn.Identity(), tmp_path / "missing.npy", tmp_path / "o.npy")
    np.save(tmp_path / "fortran.npy", np.asfortranarray(x))
    with pytest.raises(ValueError, match="Fortran"):
        NpySource(tmp_path / "fortran.npy")
    shards = tmp_path / "mixed"
    shards.mkdir()
    np.save(shards / "a.npy", x[:10])
    np.save(shards / "b.npy", x[:10, :4])
    with pytest.raises(ValueError, match="columns"):
        NpySource(shards)
    with pytest.raises(ValueError, match="resume=False"):
        stream_apply(torch.nn.Identity(), path, tmp_path / "o.npy", rank=0, world_size=2, resume=False)
    with pytest.raises(ValueError, match="chunk_rows"):
        stream_apply(torch.nn.Identity(), path, tmp_path / "o.npy", chunk_rows=0)


def test_cpu_blocks_inside_a_chunk_do_not_change_the_output(
    data: tuple[np.ndarray, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, path = data
    refiner = seeded_refiner(D)
    monkeypatch.setattr(
        stream_module, "CPU_BLOCK_ROWS", 300
    )  # chunks of 1000 rows: blocks 300, 300, 300, 100
    stream_apply(refiner, path, tmp_path / "out.npy", chunk_rows=1000, device="cpu", progress=False)
    assert np.array_equal(np.load(tmp_path / "out.npy"), forward(refiner, x))
