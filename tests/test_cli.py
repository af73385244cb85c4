"""The simskip command: refine a .npy file, apply a saved model, errors, version, plugins."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from simskip_core import SimSkip, __version__
from simskip_core.cli import main


def test_refine_fit_save_and_apply(blobs, tmp_path, capsys) -> None:
    x, _ = blobs
    np.save(tmp_path / "in.npy", x)
    code = main(
        [
            "refine",
            str(tmp_path / "in.npy"),
            str(tmp_path / "out.npy"),
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--save-model",
            str(tmp_path / "model"),
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["shape"] == [600, 16]
    out = np.load(tmp_path / "out.npy")
    assert np.array_equal(out, SimSkip.load(tmp_path / "model").transform(x))
    assert (
        main(
            [
                "refine",
                str(tmp_path / "in.npy"),
                str(tmp_path / "again.npy"),
                "--model",
                str(tmp_path / "model"),
            ]
        )
        == 0
    )
    assert np.array_equal(np.load(tmp_path / "again.npy"), out)


def test_refine_errors(tmp_path, capsys) -> None:
    np.save(tmp_path / "ints.npy", np.zeros((10, 3), dtype=np.int32))
    assert main(["refine", str(tmp_path / "ints.npy"), str(tmp_path / "o.npy"), "--quiet"]) == 2
    assert "floating point" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "missing.npy"), str(tmp_path / "o.npy")]) == 2
    assert (
        capsys.readouterr().err == f"simskip: error: input file {tmp_path / 'missing.npy'} does not exist.\n"
    )
    (tmp_path / "o.npy").write_bytes(b"")
    assert main(["refine", str(tmp_path / "ints.npy"), str(tmp_path / "o.npy")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_console_script_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simskip_core.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"simskip {__version__}"
    helptext = subprocess.run(
        [sys.executable, "-m", "simskip_core.cli", "refine", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--save-model" in helptext and "--mode" in helptext


def test_plugins_command_lists_builtin_plugins(capsys) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("text", "graph", "kg", "vision"):
        assert name in out


def test_refine_stream_writes_the_same_rows_as_transform(blobs, tmp_path, capsys) -> None:
    x, _ = blobs
    np.save(tmp_path / "in.npy", x)
    base = ["refine", str(tmp_path / "in.npy"), "--epochs", "1", "--batch-size", "64", "--quiet"]
    assert main([*base[:2], str(tmp_path / "fit.npy"), *base[2:], "--save-model", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    streamed = tmp_path / "streamed.npy"
    args = ["refine", str(tmp_path / "in.npy"), str(streamed), "--model", str(tmp_path / "m")]
    assert main([*args, "--stream", "--chunk-rows", "100", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"] and summary["shape"] == [600, 16]
    expected = SimSkip.load(tmp_path / "m").transform(x)
    assert np.array_equal(np.load(streamed), expected)
    assert np.array_equal(np.load(tmp_path / "fit.npy"), expected)


def test_refine_applies_a_model_to_a_parquet_folder(tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simskip_core.api import SimSkip

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    model = SimSkip(epochs=2, batch_size=64, progress=False).fit(x)
    model.save(tmp_path / "m")
    (tmp_path / "in").mkdir()
    for i, part in enumerate((x[:120], x[120:])):
        table = pa.table({"id": np.arange(len(part)) + 1000 * i, "embedding": list(part)})
        pq.write_table(table, tmp_path / "in" / f"part-{i}.parquet")
    code = main(
        ["refine", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tmp_path / "m"), "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    got = pq.read_table(tmp_path / "out" / "part-1.parquet")
    assert got.column("id").to_pylist() == list(range(1000, 1180))
    refined = np.stack(got.column("embedding").to_numpy(zero_copy_only=False))
    assert np.array_equal(refined, model.transform(x[120:]))


def test_parquet_input_needs_a_saved_model(tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"embedding": [np.zeros(4, np.float32)]}), tmp_path / "x.parquet")
    assert main(["refine", str(tmp_path / "x.parquet"), str(tmp_path / "o.parquet"), "--epochs", "2"]) == 2
    assert "--model" in capsys.readouterr().err


def test_training_without_out_prints_the_epoch_timings(tmp_path, capsys) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32))
    code = main(
        ["refine", str(tmp_path / "x.npy"), "--save-model", str(tmp_path / "m"), "--epochs", "2", "--quiet"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and len(summary["epoch_seconds"]) == 2
