"""The streamed apply never deletes an input, replaces an output only when finished, and names non-finite rows."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from simskip_core import SimSkip
from simskip_core.cli import main
from simskip_core.scale import stream as stream_module
from simskip_core.scale.stream import stream_apply

from scale_helpers import forward, seeded_refiner

N, D = 1500, 8


@pytest.fixture
def data(npy_rows: Callable[[int, int], tuple[np.ndarray, Path]]) -> tuple[np.ndarray, Path]:
    return npy_rows(N, D)


def test_output_equal_to_the_input_is_refused_and_the_input_kept(
    data: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    x, path = data
    before = path.read_bytes()
    for out in (path, tmp_path / "." / "x.npy"):
        with pytest.raises(ValueError, match="would overwrite the input"):
            stream_apply(seeded_refiner(D), path, out, overwrite=True, progress=False)
    link = tmp_path / "link.npy"
    link.symlink_to(path)
    with pytest.raises(ValueError, match="would overwrite the input"):
        stream_apply(seeded_refiner(D), path, link, overwrite=True, resume=False, progress=False)
    with pytest.raises(ValueError, match="would overwrite the input"):
        stream_apply(seeded_refiner(D), link, path, overwrite=True, progress=False)
    hard = tmp_path / "hard.npy"
    os.link(path, hard)
    with pytest.raises(ValueError, match="would overwrite the input"):
        stream_apply(seeded_refiner(D), path, hard, overwrite=True, progress=False)
    assert path.read_bytes() == before and np.array_equal(np.load(path), x)


def test_output_whose_partial_file_is_the_input_is_refused(
    data: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    x, _ = data
    source = tmp_path / "o.npy.partial"  # an input that happens to carry the name of OUT's partial file
    np.save(source.with_suffix(".tmp.npy"), x)
    source.with_suffix(".tmp.npy").rename(source)
    with pytest.raises(ValueError, match=r"o\.npy\.partial is the same file"):
        stream_apply(seeded_refiner(D), source, tmp_path / "o.npy", resume=False, progress=False)
    assert np.array_equal(np.load(source), x)


def test_output_among_or_inside_the_input_shards_is_refused(
    data: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    x, _ = data
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", x[:700])
    np.save(shards / "b.npy", x[700:])
    with pytest.raises(ValueError, match="would overwrite the input"):
        stream_apply(seeded_refiner(D), shards, shards / "b.npy", overwrite=True, progress=False)
    with pytest.raises(ValueError, match="inside the input folder"):
        stream_apply(seeded_refiner(D), shards, shards / "refined.npy", progress=False)
    with pytest.raises(ValueError, match="would overwrite the input"):
        stream_apply(
            seeded_refiner(D), [shards / "a.npy", shards / "b.npy"], shards / "a.npy", overwrite=True
        )
    assert np.array_equal(np.load(shards / "b.npy"), x[700:])
    assert sorted(p.name for p in shards.iterdir()) == ["a.npy", "b.npy"]


def test_overwrite_keeps_the_old_output_until_the_new_one_is_finished(
    data: tuple[np.ndarray, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, path = data
    out = tmp_path / "out.npy"
    stream_apply(seeded_refiner(D, 0), path, out, chunk_rows=200, progress=False)
    old = out.read_bytes()
    real_write = stream_module._write_rows
    calls = {"n": 0}

    def failing(fd: int, offset: int, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk went away")
        real_write(fd, offset, array)

    monkeypatch.setattr(stream_module, "_write_rows", failing)
    with pytest.raises(OSError, match="disk went away"):
        stream_apply(seeded_refiner(D, 1), path, out, chunk_rows=200, overwrite=True, progress=False)
    assert out.read_bytes() == old  # the previous output is still there, whole
    monkeypatch.setattr(stream_module, "_write_rows", real_write)
    with pytest.raises(FileExistsError, match="--overwrite"):
        stream_apply(seeded_refiner(D, 1), path, out, chunk_rows=200, progress=False)
    result = stream_apply(seeded_refiner(D, 1), path, out, chunk_rows=200, overwrite=True, progress=False)
    assert result.complete and result.chunks_skipped == 2  # resumed, not restarted
    assert np.array_equal(np.load(out), forward(seeded_refiner(D, 1), x))


def test_overwrite_replaces_a_finished_output_of_another_model(
    data: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    x, path = data
    out = tmp_path / "out.npy"
    stream_apply(seeded_refiner(D, 0), path, out, chunk_rows=500, progress=False)
    result = stream_apply(seeded_refiner(D, 1), path, out, chunk_rows=500, overwrite=True, progress=False)
    assert result.complete and result.chunks_written == 3
    assert np.array_equal(np.load(out), forward(seeded_refiner(D, 1), x))


@pytest.mark.parametrize(
    ("row", "value", "dtype"), [(1234, np.nan, np.float32), (777, 1e39, np.float64), (0, -np.inf, np.float32)]
)
def test_non_finite_row_stops_the_stream_and_is_named(
    tmp_path: Path, row: int, value: float, dtype: type
) -> None:
    x: np.ndarray = np.random.default_rng(0).normal(size=(N, D)).astype(dtype)
    x[row, 3] = value
    path = tmp_path / "bad.npy"
    np.save(path, x)
    out = tmp_path / "out.npy"
    with pytest.raises(ValueError, match=rf"NaN or Inf \(after the cast to float32\) at row {row} \("):
        stream_apply(seeded_refiner(D), path, out, chunk_rows=500, progress=False)
    assert not out.exists()
    manifest = json.loads((tmp_path / "out.npy.manifest.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is False


def test_refusal_of_another_run_names_the_cli_flag(data: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    _, path = data
    out = tmp_path / "out.npy"
    stream_apply(seeded_refiner(D, 0), path, out, chunk_rows=500, rank=0, world_size=2, progress=False)
    with pytest.raises(ValueError, match=r"resume=False \(--no-resume on the command line\)"):
        stream_apply(seeded_refiner(D, 1), path, out, chunk_rows=500, progress=False)


@pytest.fixture
def saved_model(data: tuple[np.ndarray, Path], tmp_path: Path) -> Path:
    x, _ = data
    folder = tmp_path / "model"
    SimSkip(epochs=1, batch_size=64, progress=False).fit(x).save(folder)
    return folder


def test_cli_stream_onto_its_own_input_keeps_the_input(
    data: tuple[np.ndarray, Path], saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, path = data
    code = main(
        ["refine", str(path), str(path), "--model", str(saved_model), "--stream", "--overwrite", "--quiet"]
    )
    assert code != 0 and "would overwrite the input" in capsys.readouterr().err
    assert np.array_equal(np.load(path), x)


def test_cli_stream_names_the_first_nan_row(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    x[[901, 1400], 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    out = tmp_path / "o.npy"
    model = ["--model", str(saved_model), "--stream", "--chunk-rows", "300", "--quiet"]
    code = main(["refine", str(tmp_path / "nan.npy"), str(out), *model])
    assert code != 0 and "at row 901 (" in capsys.readouterr().err
    assert not out.exists()
